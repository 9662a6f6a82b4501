// The DNS proxy's query/answer handling without the kernel: a fake kernel map gives the original
// destination, a local UDP server plays the upstream (answering what each case scripts), and the
// learn hook records what would be allowed. Bad input never crashes the proxy, never learns an
// address the pod was not told, and never forwards a refused or unreadable query.
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { Buffer } from "node:buffer";
// @ts-types="../../agent/proxy/_dns_packet.d.ts"
import * as dnsPacket from "dns-packet";
import { DnsProxy } from "../../agent/proxy/dns_proxy.ts";
import { makeResponse, parseAnswer, parseQuery, RCODE } from "../../agent/proxy/dns_message.ts";
import { DnsCache } from "../../agent/proxy/dns_cache.ts";
import { FqdnIdentities, fqdnKeyRegex } from "../../agent/identity/fqdn.ts";
import { Logger } from "../../agent/log.ts";
import { Metrics } from "../../agent/metrics.ts";

type Answer = { type: string; name: string; data: string; ttl?: number };
// deno-lint-ignore no-explicit-any
const dp = dnsPacket as any;
const query = (name: string, id = 7) =>
  new Uint8Array(
    dp.encode({ type: "query", id, flags: dp.RECURSION_DESIRED, questions: [{ type: "A", name }] }),
  );
const response = (name: string, answers: Answer[], o: { id?: number; rcode?: number } = {}) =>
  new Uint8Array(dp.encode({
    type: "response",
    id: o.id ?? 7,
    flags: o.rcode ?? 0,
    questions: [{ type: "A", name }],
    answers: answers.map((a) => ({ ttl: 30, ...a })),
  }));
const decoded = (b: Uint8Array) => dp.decode(Buffer.from(b));

/** An upstream that answers each query with what `script` returns (nothing: silence). */
async function upstream(script: (q: Uint8Array) => Uint8Array[]) {
  const sock = dgram.createSocket("udp4");
  let received = 0;
  sock.on("message", (m, from) => {
    received++;
    for (const r of script(new Uint8Array(m))) sock.send(r, from.port, from.address);
  });
  await new Promise<void>((r) => sock.bind(0, "127.0.0.1", () => r()));
  return {
    port: sock.address().port,
    get received() {
      return received;
    },
    close: () => new Promise<void>((r) => sock.close(() => r())),
  };
}

function proxy(o: { allow?: (n: string) => boolean; learnError?: string } = {}) {
  const learned: { names: string[]; ips: string[] }[] = [];
  const p = new DnsProxy({
    judge: (_o, name) => ({ allowed: (o.allow ?? (() => true))(name), cookie: 1 }),
    maps: undefined,
    learn: (_ep, names, ips) => {
      learned.push({ names, ips: ips.map((i) => i.ip) });
      return Promise.resolve(o.learnError);
    },
    log: new Logger({ level: "error" }),
    metrics: new Metrics(),
    upstreamTimeoutMs: 150,
  });
  return { p, learned };
}

const orig = (port: number) => ({
  ip: "127.0.0.1",
  port,
  epId: 1,
  dir: 2,
  srcIdentity: 1000,
  dstIdentity: 2,
  cookie: 1,
});
const client = { ip: "10.0.0.2", port: 5353 };

Deno.test("DnsProxy.answer() handles good and bad input", async (t) => {
  const a = (name: string, ip: string): Answer => ({ type: "A", name, data: ip });
  const cases: {
    name: string;
    msg: Uint8Array;
    allow?: (n: string) => boolean;
    learnError?: string;
    script: (q: Uint8Array) => Uint8Array[];
    rcode: number | undefined;
    learned: { names: string[]; ips: string[] }[];
    forwarded: boolean;
  }[] = [
    {
      name: "an allowed name: the answer unchanged, its address learned first",
      msg: query("API.example.com"),
      script: () => [response("api.example.com", [a("api.example.com", "192.0.2.10")])],
      rcode: 0,
      learned: [{ names: ["api.example.com."], ips: ["192.0.2.10"] }],
      forwarded: true,
    },
    {
      name: "a refused name: REFUSED, never forwarded",
      msg: query("other.net"),
      allow: (n) => n.endsWith(".example.com."),
      script: () => [response("other.net", [a("other.net", "192.0.2.66")])],
      rcode: RCODE.REFUSED,
      learned: [],
      forwarded: false,
    },
    {
      name: "garbage: FORMERR, never forwarded",
      msg: new Uint8Array([0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1]),
      script: () => [],
      rcode: RCODE.FORMERR,
      learned: [],
      forwarded: false,
    },
    {
      name: "too short for a header: no answer at all",
      msg: new Uint8Array([1, 2, 3]),
      script: () => [],
      rcode: undefined,
      learned: [],
      forwarded: false,
    },
    {
      name: "a label with a dot in it cannot pass for two labels",
      msg: (() => {
        const m = query("xapi.example.com");
        m[12] = 16; // one label "api.example.com" (plus the next length byte as text)
        return m;
      })(),
      script: () => [],
      rcode: RCODE.FORMERR,
      learned: [],
      forwarded: false,
    },
    {
      name: "NXDOMAIN passes through, nothing learned",
      msg: query("nope.example.com"),
      script: () => [response("nope.example.com", [], { rcode: RCODE.NXDOMAIN })],
      rcode: RCODE.NXDOMAIN,
      learned: [],
      forwarded: true,
    },
    {
      name: "a CNAME chain: every name learned, addresses off the chain ignored",
      msg: query("www.example.com"),
      script: () => [
        response("www.example.com", [
          { type: "CNAME", name: "www.example.com", data: "edge.example.net" },
          { type: "CNAME", name: "edge.example.net", data: "pop1.example.net" },
          a("pop1.example.net", "198.51.100.7"),
          a("unrelated.example.org", "203.0.113.99"),
        ]),
      ],
      rcode: 0,
      learned: [{
        names: ["www.example.com.", "edge.example.net.", "pop1.example.net."],
        ips: ["198.51.100.7"],
      }],
      forwarded: true,
    },
    {
      name: "answers for another id or question are ignored: SERVFAIL after the timeout",
      msg: query("api.example.com"),
      script: () => [
        response("api.example.com", [a("api.example.com", "192.0.2.1")], { id: 8 }),
        response("evil.example.com", [a("evil.example.com", "192.0.2.2")]),
        new Uint8Array([0xde, 0xad]),
      ],
      rcode: RCODE.SERVFAIL,
      learned: [],
      forwarded: true,
    },
    {
      name: "an upstream that never answers: SERVFAIL after the timeout",
      msg: query("slow.example.com"),
      script: () => [],
      rcode: RCODE.SERVFAIL,
      learned: [],
      forwarded: true,
    },
    {
      name: "addresses that cannot be written: SERVFAIL, not the answer",
      msg: query("api.example.com"),
      learnError: "map full",
      script: () => [response("api.example.com", [a("api.example.com", "192.0.2.10")])],
      rcode: RCODE.SERVFAIL,
      learned: [{ names: ["api.example.com."], ips: ["192.0.2.10"] }],
      forwarded: true,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const up = await upstream(c.script);
      const { p, learned } = proxy({
        ...(c.allow ? { allow: c.allow } : {}),
        ...(c.learnError ? { learnError: c.learnError } : {}),
      });
      try {
        const out = await p.answer(c.msg, orig(up.port), client);
        assert.equal(out === undefined ? undefined : decoded(out).flags & 0xf, c.rcode);
        assert.deepEqual(learned, c.learned);
        assert.equal(up.received > 0, c.forwarded);
      } finally {
        p.close();
        await up.close();
      }
    });
  }
});

Deno.test("parseAnswer() refuses a compression pointer loop and makeResponse() echoes the id", () => {
  const q = parseQuery(query("api.example.com"));
  const loop = response("api.example.com", [
    { type: "A", name: "api.example.com", data: "192.0.2.1" },
  ]);
  loop[12] = 0xc0; // the question name points at itself
  loop[13] = 12;
  assert.equal(parseAnswer(q, loop), undefined);
  const r = decoded(makeResponse(query("x.example.com", 4242), RCODE.REFUSED));
  assert.equal(r.id, 4242);
  assert.equal(r.rcode, "REFUSED");
  assert.equal(r.questions[0].name, "x.example.com");
});

Deno.test("DnsCache keeps the min TTL, evicts the oldest per name, expires", () => {
  const c = new DnsCache({ minTtl: 10, maxIpsPerName: 2 });
  c.learn(1, ["a.example.com."], [{ ip: "192.0.2.1", ttl: 0 }], 0);
  c.learn(1, ["a.example.com."], [{ ip: "192.0.2.2", ttl: 100 }], 1000);
  const changed = c.learn(1, ["a.example.com."], [{ ip: "192.0.2.3", ttl: 100 }], 2000);
  assert.deepEqual([...changed].sort(), ["192.0.2.1", "192.0.2.3"]);
  assert.deepEqual(c.list().map((e) => e.ip), ["192.0.2.2", "192.0.2.3"]);
  assert.deepEqual([...c.expire(50_000)], []);
  assert.deepEqual([...c.expire(200_000)].sort(), ["192.0.2.2", "192.0.2.3"]);
  c.learn(2, ["b.example.com."], [{ ip: "192.0.2.9", ttl: 0 }], 0);
  assert.deepEqual([...c.expire(9_999)], []);
  assert.deepEqual([...c.expire(10_000)], ["192.0.2.9"]);
});

Deno.test("FqdnIdentities label learned addresses with the selectors that match", async (t) => {
  const table: [string, string, boolean][] = [
    ["api.example.com.", "api.example.com.", true],
    ["api.example.com.", "x.api.example.com.", false],
    ["*.example.com.", "a.example.com.", true],
    ["*.example.com.", "example.com.", false],
    ["*.example.com.", "a.b.example.com.", false],
    ["**.example.com.", "a.b.example.com.", true],
    ["part*ial.com.", "partial.com.", true],
    ["*", "anything.at.all.", true],
  ];
  for (const [key, name, ok] of table) {
    await t.step(`${key} ${ok ? "matches" : "does not match"} ${name}`, () => {
      assert.equal(fqdnKeyRegex(key).test(name), ok);
    });
  }
  const ids = new FqdnIdentities();
  ids.setKeys(["api.example.com.", "*.example.com."]);
  const known = new Map([
    ["192.0.2.1", new Set(["api.example.com."])],
    ["192.0.2.2", new Set(["other.net."])],
  ]);
  const plan = ids.plan(known, known.keys());
  assert.equal(plan.upserts.length, 1);
  assert.deepEqual(plan.upserts[0]!.labels, [
    "fqdn:*.example.com.",
    "fqdn:api.example.com.",
    "cidr:192.0.2.1/32",
    "reserved:world",
  ]);
});
