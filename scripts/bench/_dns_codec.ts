// `deno task bench dns --codec`: what reading a query and its answer costs the DNS proxy per
// query, the in-place reader (agent/proxy/dns_message.ts) against the previous whole-message
// decode by npm `dns-packet` (tests/proxy/_dns_reference.ts), in one process: µs per query
// (parseQuery + parseAnswer, warmed up) and bytes allocated per query (V8 heap used before and
// after N queries with a young generation large enough that no GC runs in between; checked).
// Run by dns_bench.ts in a process of its own with `--v8-flags=--expose-gc,--min-semi-space-size=64`
// `--max-semi-space-size=64`; prints one JSON line. Messages: the bench's query and dnsmasq's
// answer (one A record, the owner a pointer to the question), and a CNAME chain with A and AAAA.

import { parseAnswer, parseQuery } from "../../agent/proxy/dns_message.ts";
import {
  answerWire,
  parseAnswerReference,
  parseQueryReference,
} from "../../tests/proxy/_dns_reference.ts";
import { encodeQuery } from "./_dns_load.ts";

type Codec = { q: typeof parseQuery; a: typeof parseAnswer };
const CODECS: Record<string, Codec> = {
  wire: { q: parseQuery, a: parseAnswer },
  "dns-packet": { q: parseQueryReference, a: parseAnswerReference },
};

const SHAPES: Record<string, [Uint8Array, Uint8Array]> = {
  "A (dnsmasq)": [
    encodeQuery(0x1234, "api.example.com"),
    answerWire({
      id: 0x1234,
      qname: "api.example.com",
      answers: [{ name: "api.example.com", type: 1, data: "203.0.113.10" }],
    }),
  ],
  "CNAME chain, A + AAAA": [
    encodeQuery(0x1234, "www.example.com"),
    answerWire({
      id: 0x1234,
      qname: "www.example.com",
      answers: [
        { name: "www.example.com", type: 5, data: "edge.example.net" },
        { name: "edge.example.net", type: 1, data: "198.51.100.7" },
        { name: "edge.example.net", type: 28, data: "2001:db8::7" },
      ],
    }),
  ],
};

const gc = (globalThis as unknown as { gc?: () => void }).gc;
let sink = 0;

function once(c: Codec, query: Uint8Array, answer: Uint8Array): void {
  const q = c.q(query);
  sink += c.a(q, answer)!.ips.length;
}

function measure(c: Codec, query: Uint8Array, answer: Uint8Array) {
  for (let i = 0; i < 50_000; i++) once(c, query, answer);
  const n = 200_000, t0 = performance.now();
  for (let i = 0; i < n; i++) once(c, query, answer);
  const us = (performance.now() - t0) * 1000 / n;
  const m = 5_000;
  gc?.();
  const h0 = Deno.memoryUsage().heapUsed;
  for (let i = 0; i < m; i++) once(c, query, answer);
  const h1 = Deno.memoryUsage().heapUsed;
  // A scavenge in between would make the heap shrink or grow by less than it allocated.
  gc?.();
  const h2 = Deno.memoryUsage().heapUsed;
  return { us, bytes: (h1 - h0) / m, gcFree: h1 > h0 && h2 < h1 };
}

if (import.meta.main) {
  const out: Record<string, Record<string, { us: number; bytes: number; gcFree: boolean }>> = {};
  for (const [shape, [query, answer]] of Object.entries(SHAPES)) {
    out[shape] = {};
    for (const [name, c] of Object.entries(CODECS)) out[shape][name] = measure(c, query, answer);
  }
  if (sink < 0) console.error(sink);
  console.log(JSON.stringify(out));
}
