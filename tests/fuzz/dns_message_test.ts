// Mutated DNS queries and answers against the DNS proxy's in-place reader (dns_message.ts on
// _dns_wire.ts), with the previous whole-message decoder on npm `dns-packet` as the reference
// (tests/proxy/_dns_reference.ts). Seeds are answers as servers write them (names compressed): A,
// AAAA, CNAME chains, records off the chain, NXDOMAIN, TC, an OPT and an SOA in the other
// sections; mutations flip bits, write interesting values, truncate, extend, cut and splice.
// Properties: neither reader throws anything but DnsMessageError; a query both accept has the same
// id, name and type; an answer the reader takes has the reference's rcode and TC bit, a chain
// that is a prefix of the reference's and only addresses the reference also found on it (never
// an address the pod's question did not lead to); every answer to another id or question is
// refused; and the reader never takes a message whose records do not fit in it.
import assert from "node:assert/strict";
import {
  DnsMessageError,
  type DnsQuery,
  parseAnswer,
  parseQuery,
} from "../../agent/proxy/dns_message.ts";
import { checkMessage } from "../../agent/proxy/_dns_wire.ts";
import {
  answerWire,
  parseAnswerReference,
  parseQueryReference,
  type WireRecord,
} from "../proxy/_dns_reference.ts";
import { encodeQuery } from "../../scripts/bench/_dns_load.ts";
import { mutateBytes } from "./_mutate_bytes.ts";
import { Findings, fuzzSeed, hex, iterations, Rand } from "./_rand.ts";

const A = 1, NS = 2, CNAME = 5, SOA = 6, AAAA = 28, OPT = 41;
const a = (name: string, ip: string, ttl = 60): WireRecord => ({ name, type: A, data: ip, ttl });
const cname = (name: string, to: string): WireRecord => ({ name, type: CNAME, data: to });

const SOA_DATA = (() => {
  const m = answerWire({ id: 0, qname: "ns.example.com", answers: [] });
  return new Uint8Array([...m.subarray(12, m.length - 4), 0, ...new Uint8Array(20)]);
})();

/** [query name, answer] seeds; the query is encodeQuery(id, name) (type A). */
function seeds(id: number): [string, Uint8Array][] {
  const q = "api.example.com";
  return [
    [q, answerWire({ id, qname: q, answers: [a(q, "203.0.113.10")] })],
    [q, answerWire({ id, qname: "API.Example.COM", answers: [a("api.EXAMPLE.com", "192.0.2.1")] })],
    [q, answerWire({ id, qname: q, answers: [a(q, "192.0.2.1", 5), a(q, "192.0.2.2", 300)] })],
    [q, answerWire({ id, qname: q, answers: [{ name: q, type: AAAA, data: "2001:db8::1" }] })],
    [
      "www.example.com",
      answerWire({
        id,
        qname: "www.example.com",
        answers: [
          cname("www.example.com", "edge.example.net"),
          a("unrelated.example.org", "198.51.100.99"),
          cname("edge.example.net", "pop1.example.net"),
          a("pop1.example.net", "198.51.100.7"),
          { name: "pop1.example.net", type: AAAA, data: "2001:db8:0:0:1::7" },
        ],
      }),
    ],
    [q, answerWire({ id, qname: q, flags: 0x8183, answers: [], authority: [soa()] })],
    [q, answerWire({ id, qname: q, flags: 0x8380, answers: [a(q, "192.0.2.3")] })],
    [
      q,
      answerWire({
        id,
        qname: q,
        answers: [a(q, "192.0.2.4")],
        authority: [{ name: "example.com", type: NS, data: "ns.example.com" }],
        additional: [a("ns.example.com", "192.0.2.53"), opt()],
      }),
    ],
    [
      "loop.example.com",
      answerWire({
        id,
        qname: "loop.example.com",
        answers: [
          cname("loop.example.com", "b.example.com"),
          cname("b.example.com", "loop.example.com"),
        ],
      }),
    ],
  ];
}

function soa(): WireRecord {
  return { name: "example.com", type: SOA, data: SOA_DATA };
}

/** An EDNS OPT record (root owner, class = payload size): raw, since answerWire writes class IN. */
function opt(): WireRecord {
  return { name: "", type: OPT, data: new Uint8Array([0, 10, 0, 2, 0xab, 0xcd]) };
}

type Outcome<T> = { ok: T } | { err: unknown };
function attempt<T>(f: () => T): Outcome<T> {
  try {
    return { ok: f() };
  } catch (err) {
    return { err };
  }
}

Deno.test("parseAnswer() on the wire agrees with the dns-packet reference on mutated answers", () => {
  const seed = fuzzSeed(0xd115);
  const r = new Rand(seed);
  const findings = new Findings();
  const all = seeds(0x1234);
  const others = all.map(([, m]) => m);
  let taken = 0, learned = 0;
  for (let i = 0; i < iterations(20_000); i++) {
    const [qname, base] = r.pick(all);
    const q = parseQuery(encodeQuery(0x1234, qname));
    const [msg, how] = i < all.length ? [base, "seed"] : mutateBytes(r, base, others);
    const fast = attempt(() => parseAnswer(q, msg));
    const ref = attempt(() => parseAnswerReference(q, msg));
    const where = `${how}: ${hex(msg, 96)}`;
    if ("err" in fast) {
      findings.add(`parseAnswer() threw ${fast.err} on ${where}`);
      continue;
    }
    if ("err" in ref) throw ref.err;
    const got = fast.ok, want = ref.ok;
    if (!got) continue;
    taken++;
    if (got.ips.length > 0) learned++;
    if (!checkMessage(msg)) findings.add(`took a malformed message: ${where}`);
    if (!want) {
      // Taken here, refused by the reference: only when the reference's decoder choked on a
      // record's data that the wire reader skips (it checks structure, not every type's data).
      if (got.ips.length > 0 && !chokesOnOtherData(msg)) {
        findings.add(`took an answer the reference refused: ${JSON.stringify(got)} on ${where}`);
      }
      continue;
    }
    if (got.rcode !== want.rcode || got.truncated !== want.truncated) {
      findings.add(`rcode/TC ${got.rcode}/${got.truncated} vs ${want.rcode}/${want.truncated}`);
    }
    if (got.names.some((n, k) => want.names[k] !== n)) {
      findings.add(`chain ${got.names} is not a prefix of ${want.names} on ${where}`);
    }
    const known = new Set(want.ips.map((x) => `${x.ip}/${x.ttl}`));
    const extra = got.ips.filter((x) => !known.has(`${x.ip}/${x.ttl}`));
    if (extra.length > 0) {
      findings.add(`learned ${JSON.stringify(extra)} not on the chain: ${where}`);
    }
  }
  findings.assertNone("parseAnswer()", seed);
  assert.ok(taken > 200 && learned > 100, `too few answers taken (${taken}, ${learned}) to judge`);
});

/**
 * Whether dns-packet fails on this message only in the data of a record other than A/AAAA/CNAME
 * (the wire reader checks those records' structure, not their contents): the same message with
 * every such record's data zeroed decodes with the reference.
 */
function chokesOnOtherData(msg: Uint8Array): boolean {
  const w = checkMessage(msg);
  if (!w) return false;
  const m = msg.slice();
  const u16 = (o: number) => (m[o]! << 8) | m[o + 1]!;
  const records = u16(6) + u16(8) + u16(10);
  let off = 12;
  for (let i = 0; i < w.qdcount; i++) off = skipName(m, off) + 4;
  for (let i = 0; i < records; i++) {
    const end = skipName(m, off), type = u16(end), len = u16(end + 8);
    if (type !== A && type !== AAAA && type !== CNAME) {
      m[end] = 0;
      m[end + 1] = 99; // SPF-like TXT: dns-packet reads it as opaque strings
      m.fill(0, end + 10, end + 10 + len);
    }
    off = end + 10 + len;
  }
  try {
    return parseAnswerReference(parseQueryReference(queryOf(msg)), m) !== undefined;
  } catch {
    return false;
  }
}

function skipName(m: Uint8Array, off: number): number {
  for (;;) {
    const len = m[off]!;
    if (len === 0) return off + 1;
    if (len >= 0xc0) return off + 2;
    off += 1 + len;
  }
}

/** The query a message answers: its header (as a query) and its question. */
function queryOf(msg: Uint8Array): Uint8Array {
  const end = skipName(msg, 12) + 4;
  const q = msg.slice(0, end);
  q[2] = 0x01;
  q[3] = 0;
  q.fill(0, 6, 12);
  return q;
}

Deno.test("parseQuery() on the wire agrees with the dns-packet reference on mutated queries", () => {
  const seed = fuzzSeed(0xd116);
  const r = new Rand(seed);
  const findings = new Findings();
  const base = [
    encodeQuery(7, "api.example.com"),
    encodeQuery(0xbeef, "A-b_c.Example.NET"),
    // dig's shape: an OPT record in the additional section.
    (() => {
      const m = answerWire({ id: 9, qname: "x.example.com", flags: 0x0120, answers: [] });
      const withOpt = answerWire({
        id: 9,
        qname: "x.example.com",
        flags: 0x0120,
        answers: [],
        additional: [opt()],
      });
      return m.length < withOpt.length ? withOpt : m;
    })(),
  ];
  let accepted = 0;
  for (let i = 0; i < iterations(20_000); i++) {
    const seedMsg = r.pick(base);
    const [msg, how] = i < base.length ? [seedMsg, "seed"] : mutateBytes(r, seedMsg, base);
    const fast = attempt(() => parseQuery(msg));
    const ref = attempt(() => parseQueryReference(msg));
    const where = `${how}: ${hex(msg, 96)}`;
    if ("err" in fast && !(fast.err instanceof DnsMessageError)) {
      findings.add(`parseQuery() threw ${fast.err} on ${where}`);
    }
    if (!("ok" in fast)) continue;
    accepted++;
    if (!checkMessage(msg)) findings.add(`accepted a malformed query: ${where}`);
    if (!/^(\.|([-a-z0-9_]+\.)+)$/.test(fast.ok.name)) {
      findings.add(`name "${fast.ok.name}": ${where}`);
    }
    if (!("ok" in ref)) continue; // refused by dns-packet on a record's data the reader skips
    const got: Partial<DnsQuery> = { ...fast.ok }, want: Partial<DnsQuery> = { ...ref.ok };
    for (const o of [got, want]) delete o.raw, delete o.typeCode;
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      findings.add(`${JSON.stringify(got)} vs ${JSON.stringify(want)} on ${where}`);
    }
  }
  findings.assertNone("parseQuery()", seed);
  assert.ok(accepted > 100, `too few queries accepted (${accepted}) to judge`);
});

Deno.test("parseAnswer() refuses answers to another id, name, type or class, and bad records", async (t) => {
  const q = parseQuery(encodeQuery(0x1234, "api.example.com"));
  const ok = answerWire({
    id: 0x1234,
    qname: "api.example.com",
    answers: [a("api.example.com", "192.0.2.1")],
  });
  assert.deepEqual(parseAnswer(q, ok)?.ips, [{ ip: "192.0.2.1", ttl: 60 }]);
  const cases: [string, (m: Uint8Array) => Uint8Array][] = [
    // ok: header (12), question name at 12 (17 bytes), type 29, class 31, then the answer record
    // (owner pointer, type, class, TTL, length, 4 bytes of address) in the last 16 bytes.
    ["another id", (m) => (m[1] = 0x35, m)],
    ["a query, not a response", (m) => (m[2] = 0x01, m)],
    ["another name", (m) => (m[13] = 0x62, m)], // "bpi.example.com"
    ["another type", (m) => (m[30] = 28, m)],
    ["another class", (m) => (m[32] = 3, m)],
    ["two questions", (m) => (m[5] = 2, m)],
    ["an A record with 5 bytes of data", (m) => {
      const out = new Uint8Array([...m, 9]);
      out[out.length - 6] = 5;
      return out;
    }],
    ["an A record cut short", (m) => m.subarray(0, m.length - 1)],
    ["a forward pointer", (m) => (m[m.length - 15] = 0x40, m)],
    ["a pointer to itself", (m) => (m[m.length - 15] = m.length - 16, m)],
    // One label "api.example.com" (dots in it) where the query has three labels.
    ["a label with a dot for two labels", (m) => (m[12] = 15, m[16] = 0x2e, m[24] = 0x2e, m)],
  ];
  for (const [name, mutate] of cases) {
    await t.step(name, () => {
      const m = mutate(ok.slice());
      assert.equal(parseAnswer(q, m), undefined, hex(m));
    });
  }
  await t.step("an A record of another class than IN is not learned", () => {
    const m = ok.slice();
    m[m.length - 11] = 3; // class CH
    assert.deepEqual(parseAnswer(q, m)?.ips, []);
  });
  await t.step("a CNAME target with a label that is not a DNS label ends the chain", () => {
    const m = answerWire({
      id: 0x1234,
      qname: "api.example.com",
      answers: [cname("api.example.com", "x y.example.net"), a("x y.example.net", "192.0.2.9")],
    });
    assert.deepEqual(parseAnswer(q, m), {
      rcode: 0,
      truncated: false,
      names: ["api.example.com."],
      ips: [],
    });
  });
});
