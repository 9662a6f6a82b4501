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

/**
 * An upstream that answers each query with what `script` returns (nothing: silence). The proxy
 * gives each query an id of its own, so a scripted id 7 becomes the query's id and 8 another one.
 */
async function upstream(script: (q: Uint8Array) => Uint8Array[]) {
  const sock = dgram.createSocket("udp4");
  let received = 0;
  sock.on("message", (m, from) => {
    received++;
    for (const r of script(new Uint8Array(m))) {
      if (r.length >= 12 && r[0] === 0 && (r[1] === 7 || r[1] === 8)) {
        const id = ((m[0]! << 8) | m[1]!) ^ (r[1] === 8 ? 1 : 0);
        r[0] = id >> 8;
        r[1] = id & 0xff;
      }
      sock.send(r, from.port, from.address);
    }
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

/** Reads one 2-byte length-prefixed message (null: the connection closed). */
async function readFrame(c: Deno.Conn, buf: { b: Uint8Array }): Promise<Uint8Array | null> {
  for (;;) {
    if (buf.b.length >= 2) {
      const len = (buf.b[0]! << 8) | buf.b[1]!;
      if (buf.b.length >= 2 + len) {
        const m = buf.b.slice(2, 2 + len);
        buf.b = buf.b.slice(2 + len);
        return m;
      }
    }
    const chunk = new Uint8Array(4096);
    const n = await c.read(chunk).catch(() => null);
    if (n === null) return null;
    const next = new Uint8Array(buf.b.length + n);
    next.set(buf.b);
    next.set(chunk.subarray(0, n), buf.b.length);
    buf.b = next;
  }
}

const framed = (m: Uint8Array) => {
  const out = new Uint8Array(m.length + 2);
  out[0] = m.length >> 8;
  out[1] = m.length & 0xff;
  out.set(m, 2);
  return out;
};

Deno.test("DnsProxy over TCP: several pipelined queries per connection, bad lengths close", async () => {
  // The upstream: a TCP DNS server that waits for two queries and answers them in reverse order.
  const up = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const upPort = (up.addr as Deno.NetAddr).port;
  const served = (async () => {
    for await (const c of up) {
      const buf = { b: new Uint8Array() };
      const qs = [await readFrame(c, buf), await readFrame(c, buf)];
      for (const q of qs.reverse()) {
        if (!q) continue;
        const d = decoded(q);
        const name = d.questions[0].name;
        const r = response(name, [{ type: "A", name, data: "192.0.2.44" }], { id: d.id });
        await c.write(framed(r));
      }
      c.close();
    }
  })().catch(() => {});
  const learned: string[] = [];
  const p = new DnsProxy({
    judge: (_o, name, proto) => ({
      allowed: proto === 6 && name.endsWith(".example.com."),
      cookie: 1,
    }),
    // A fake of the kernel's proxy maps: every connection was redirected from the upstream.
    maps: { original: () => orig(upPort), writeNat: () => {}, deleteNat: () => {} },
    learn: (_ep, _names, ips) => {
      learned.push(...ips.map((i) => i.ip));
      return Promise.resolve(undefined);
    },
    log: new Logger({ level: "error" }),
    metrics: new Metrics(),
    upstreamTimeoutMs: 2000,
  });
  try {
    const port = await p.start("127.0.0.1", 0);
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    const all = [query("a.example.com", 1), query("other.net", 2), query("b.example.com", 3)];
    await c.write(new Uint8Array(all.flatMap((m) => [...framed(m)])));
    const buf = { b: new Uint8Array() };
    const got = new Map<number, { rcode: string; ips: string[] }>();
    for (let i = 0; i < 3; i++) {
      const m = await readFrame(c, buf);
      assert.ok(m, `answer ${i + 1} of 3`);
      const d = decoded(m);
      got.set(d.id, { rcode: d.rcode, ips: d.answers.map((a: { data: string }) => a.data) });
    }
    assert.deepEqual(got.get(2), { rcode: "REFUSED", ips: [] });
    assert.deepEqual(got.get(1), { rcode: "NOERROR", ips: ["192.0.2.44"] });
    assert.deepEqual(got.get(3), { rcode: "NOERROR", ips: ["192.0.2.44"] });
    assert.deepEqual(learned, ["192.0.2.44", "192.0.2.44"]);
    c.close();

    const bad = await Deno.connect({ hostname: "127.0.0.1", port });
    await bad.write(new Uint8Array([0, 5, 1, 2, 3, 4, 5]));
    assert.equal(await readFrame(bad, { b: new Uint8Array() }), null, "closed on a bad length");
    bad.close();
  } finally {
    p.close();
    up.close();
    await served;
  }
});

Deno.test("DnsCache keeps an expired record while a live connection of its endpoint uses it", () => {
  const c = new DnsCache({ minTtl: 0, maxIpsPerName: 10 });
  c.learn(1, ["a.example.com."], [{ ip: "192.0.2.1", ttl: 5 }, { ip: "192.0.2.2", ttl: 5 }], 0);
  c.learn(2, ["a.example.com."], [{ ip: "192.0.2.1", ttl: 5 }], 0);
  let asked = 0;
  const fresh: boolean[] = [];
  let live = new Set(["1/192.0.2.1"]);
  const inUse = (f: boolean) => {
    asked++;
    fresh.push(f);
    return (ep: number, ip: string) => live.has(`${ep}/${ip}`);
  };
  assert.deepEqual([...c.expire(4_000, inUse)], []);
  assert.equal(asked, 0, "conntrack is asked only when something expired");
  // Endpoint 1 still talks to 192.0.2.1: only its record stays; endpoint 2's goes.
  assert.deepEqual([...c.expire(6_000, inUse)].sort(), ["192.0.2.1", "192.0.2.2"]);
  assert.equal(asked, 1, "one conntrack walk per expiry pass");
  assert.deepEqual(c.list().map((e) => `${e.endpoint} ${e.ip}`), ["1 192.0.2.1"]);
  assert.deepEqual([...c.namesOf("192.0.2.1")], ["a.example.com."]);
  // The connection ended: the record goes at the next pass.
  live = new Set();
  assert.deepEqual([...c.expire(7_000, inUse)], ["192.0.2.1"]);
  assert.equal(c.size, 0);
  // A newly expired record asks for a fresh walk; one only kept before may reuse a recent one.
  assert.deepEqual(fresh, [true, false]);
});

Deno.test("DnsCache.refresh() extends known records and leaves anything new to learn()", () => {
  const c = new DnsCache({ minTtl: 0, maxIpsPerName: 10 });
  c.learn(1, ["a.example.com."], [{ ip: "192.0.2.1", ttl: 5 }], 0);
  assert.equal(c.refresh(1, ["a.example.com."], [{ ip: "192.0.2.1", ttl: 5 }], 4_000), true);
  assert.deepEqual([...c.expire(6_000)], [], "extended to 9 s");
  for (
    const [ep, name, ip] of [
      [2, "a.example.com.", "192.0.2.1"],
      [1, "b.example.com.", "192.0.2.1"],
      [1, "a.example.com.", "192.0.2.2"],
    ] as const
  ) {
    assert.equal(c.refresh(ep, [name], [{ ip, ttl: 60 }], 4_000), false, `${ep} ${name} ${ip}`);
  }
  assert.deepEqual([...c.expire(9_000)], ["192.0.2.1"], "a failed refresh changed nothing");
});
