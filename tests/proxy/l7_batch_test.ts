// The HTTP Worker's packed records (agent/proxy/l7_batch.ts) against the per-record path they
// replace: the same records back, the same metrics (requests by verdict, the latency histogram),
// and in the monitor the same flows, counts and overwrites, with flow objects made only when read
// unless someone follows flows. The DNS proxy's batches (Monitor.ingestDnsBatch) likewise.
import assert from "node:assert/strict";
import { compilePolicies, PolicyEngine } from "../../policy-wasm/mod.ts";
import { Monitor } from "../../agent/monitor/monitor.ts";
import { Metrics } from "../../agent/metrics.ts";
import { Logger } from "../../agent/log.ts";
import type { EndpointRecord } from "../../agent/endpoint/spec.ts";
import type { RequestRecord } from "../../agent/proxy/http_records.ts";
import type { L7Record } from "../../agent/proxy/proxy.ts";
import {
  L7_LATENCY_BUCKETS,
  L7Batch,
  L7BatchWriter,
  type L7Source,
} from "../../agent/proxy/l7_batch.ts";

const source = (port: number, cookie: number): L7Source => ({
  o: { ip: "10.0.0.2", port: 8080, epId: 2, srcIdentity: 1001, dstIdentity: 1002 },
  client: { ip: "10.0.0.1", port },
  direction: "ingress",
  cookie,
  rule: 0,
  l7Batch: 0,
  l7Ctx: 0,
  l7Cookie: 0,
});

/** Requests of every kind the Worker records: allowed, denied, a bad head, an upstream failure. */
function requests(n: number, seed: number): { src: number; rec: RequestRecord }[] {
  let x = seed;
  const rnd = () => (x = (x * 1103515245 + 12345) % 2147483648) / 2147483648;
  const out: { src: number; rec: RequestRecord }[] = [];
  for (let i = 0; i < n; i++) {
    const kind = Math.floor(rnd() * 4);
    const latencyMs = rnd() < 0.05 ? 7000 * rnd() : 30 * rnd();
    const base = { host: `h${i % 3}`, protocol: "HTTP/1.1" as const, latencyMs };
    out.push({
      src: Math.floor(rnd() * 3),
      rec: kind === 0
        ? { ...base, method: "GET", url: "/public", code: 200, allowed: true }
        : kind === 1
        ? {
          ...base,
          method: "GET",
          url: `/p${i}`,
          code: 403,
          allowed: false,
          error: "Access denied",
        }
        : kind === 2
        ? { ...base, method: "", url: "", host: "", code: 400, allowed: false, error: "Bad head" }
        : { ...base, method: "PUT", url: "/x", code: 503, allowed: true, error: "Upstream down" },
    });
  }
  return out;
}

/** What the Worker's connection made of a request before batches (one L7Record each). */
function expected(s: L7Source, rec: RequestRecord): L7Record {
  return {
    ...rec,
    client: s.client,
    server: { ip: s.o.ip, port: s.o.port },
    epId: s.o.epId,
    direction: s.direction,
    srcIdentity: s.o.srcIdentity,
    dstIdentity: s.o.dstIdentity,
    cookie: s.cookie,
    rule: rec.allowed ? s.rule : -1,
  };
}

/** Writes `reqs` as the Worker does, a batch taken every `every` records. */
function write(reqs: { src: number; rec: RequestRecord }[], every: number, t0: number) {
  const sources = [source(40001, 7), source(40002, 7), source(40003, 9)];
  const w = new L7BatchWriter(), batches: L7Batch[] = [], want: L7Record[] = [], at: number[] = [];
  reqs.forEach(({ src, rec }, i) => {
    const s = sources[src]!;
    if (i % 7 === 0) s.cookie += 1; // a new verdict's cookie on a connection
    s.rule = i % 5;
    w.add(s, rec, t0 + i);
    want.push(expected(s, rec)), at.push(t0 + i);
    if (w.size === every) batches.push(new L7Batch(w.take()!));
  });
  const last = w.take();
  if (last) batches.push(new L7Batch(last));
  assert.equal(w.take(), undefined);
  return { batches, want, at };
}

Deno.test("L7BatchWriter packs records and counts their metrics as the per-record path did", async (t) => {
  for (const [n, every] of [[1, 1], [50, 16], [300, 1000]] as const) {
    await t.step(`${n} records, a batch every ${every}`, () => {
      const reqs = requests(n, n + every);
      const { batches, want } = write(reqs, every, 1_700_000_000_000);
      assert.deepEqual(
        batches.flatMap((b) => [...Array(b.size).keys()].map((i) => b.record(i))),
        want,
      );
      // Metrics: counts by verdict and the histogram, against record-by-record counting.
      const one = new Metrics(), packed = new Metrics();
      const h1 = one.histogram("d", "", L7_LATENCY_BUCKETS);
      const h2 = packed.histogram("d", "", L7_LATENCY_BUCKETS);
      const c1 = one.counter("r", ""), c2 = packed.counter("r", "");
      for (const r of want) {
        const verdict = r.error !== undefined && r.code !== 403
          ? "error"
          : r.allowed
          ? "forwarded"
          : "denied";
        c1.inc({ verdict }), h1.observe(r.latencyMs / 1000);
      }
      for (const b of batches) {
        ["forwarded", "denied", "error"].forEach((verdict, i) => {
          if (b.wire.verdicts[i]! > 0) c2.inc({ verdict }, b.wire.verdicts[i]!);
        });
        h2.add(b.wire.latency, b.wire.latencySum);
      }
      const text = (m: Metrics) =>
        // (lines sorted: a counter lists labels as they came)
        m.render().replace(/^(d_sum) ([\d.e+-]+)$/m, (_, k, v) => `${k} ${Number(v).toFixed(9)}`)
          .split("\n").sort().join("\n");
      assert.equal(text(packed), text(one));
      // Strings and contexts are per batch: a batch holds each once.
      for (const b of batches) {
        assert.equal(new Set(b.wire.strings).size, b.wire.strings.length);
        assert.ok(b.contexts <= Math.min(b.size, 3 + Math.ceil(b.size / 7)), `${b.contexts}`);
      }
    });
  }
  await t.step("a batch that does not add up is refused", () => {
    const w = new L7BatchWriter();
    w.add(source(1, 1), requests(1, 3)[0]!.rec, 0);
    const wire = w.take()!;
    assert.throws(() => new L7Batch({ ...wire, n: 1000 }), /Invalid L7 record batch: 1000/);
  });
});

async function monitor(bufferSize: number) {
  const engine = await PolicyEngine.create();
  engine.upsertIdentities([
    { id: 1001, labels: ["k8s:app=frontend"] },
    { id: 1002, labels: ["k8s:app=backend"] },
  ]);
  engine.setPolicy(compilePolicies({ text: "", file: "p.yaml" }).spec);
  engine.setEndpoints([{ id: 1, identity: 1001, namedPorts: [] }, {
    id: 2,
    identity: 1002,
    namedPorts: [],
  }]);
  const ep = (id: number, name: string, identity: number, ipv4: string) =>
    ({
      id,
      name,
      namespace: "default",
      labels: { app: name },
      identity,
      ipv4,
    }) as unknown as EndpointRecord;
  const eps = [ep(1, "frontend", 1001, "10.0.0.1"), ep(2, "backend", 1002, "10.0.0.2")];
  const m = new Monitor({
    engine,
    endpoints: () => eps,
    nodeName: "node-1",
    bufferSize,
    log: new Logger({ level: "error" }),
  });
  return { m, close: () => (m.close(), engine.close()) };
}

Deno.test("Monitor.ingestL7Batch keeps the flows ingestL7 would, made when read", async (t) => {
  for (
    const [n, every, size, follow] of [
      [40, 16, 8, false], // more records than the ring holds: the overwritten are never made
      [40, 100, 64, false],
      [40, 16, 8, true], // a follower: flows made at once, as before
    ] as const
  ) {
    await t.step(
      `${n} records, batches of ${every}, ring ${size}, follower ${follow}`,
      async () => {
        const { batches, want, at } = write(requests(n, 11), every, 1_700_000_000_000);
        const a = await monitor(size), b = await monitor(size);
        try {
          const fa = follow ? a.m.follow() : undefined, fb = follow ? b.m.follow() : undefined;
          want.forEach((r, i) => a.m.ingestL7(r, new Date(at[i]!)));
          let made = 0;
          for (const batch of batches) {
            const counted = new Proxy(batch, {
              get: (o, k) =>
                k === "record"
                  ? (i: number) => (made++, o.record(i))
                  : Reflect.get(o, k, o) instanceof Function
                  ? (Reflect.get(o, k, o) as (...a: unknown[]) => unknown).bind(o)
                  : Reflect.get(o, k, o),
            });
            b.m.ingestL7Batch(counted);
          }
          assert.equal(made, follow ? n : 0, "flows made before anyone read them");
          const qa = a.m.query(), qb = b.m.query();
          assert.deepEqual(qb.flows, qa.flows);
          assert.deepEqual(qb.stats, qa.stats);
          assert.deepEqual(b.m.counters.processed, a.m.counters.processed);
          assert.equal(made, follow ? n : Math.min(n, size));
          if (fa && fb) {
            const [ta, tb] = [await fa.take(1000), await fb.take(1000)];
            assert.deepEqual(tb.items, ta.items);
            assert.equal(tb.items.length, n);
          }
        } finally {
          a.close(), b.close();
        }
      },
    );
  }
});

Deno.test("Monitor.ingestDnsBatch keeps the flows ingestDns would, made when read", async (t) => {
  // Two clients, allowed and refused, answers with and without addresses, one over TCP.
  const dns = (i: number) => ({
    epId: 1 + i % 2,
    client: { ip: i % 2 ? "10.0.0.2" : "10.0.0.1", port: 40000 + i },
    server: { ip: i % 3 ? "10.0.0.53" : "10.0.0.2", port: 53 },
    srcIdentity: 1001 + i % 2,
    dstIdentity: i % 3 ? 2 : 1002,
    cookie: i % 4,
    query: `q${i % 5}.example.com.`,
    qtype: i % 2 ? "AAAA" : "A",
    allowed: i % 3 !== 2,
    rcode: i % 3 === 2 ? 5 : 0,
    cnames: i % 7 ? [] : ["c.example.com."],
    ips: i % 3 === 2 ? [] : [`203.0.113.${i % 250}`],
    latencyMs: 0.25 * i,
    ...(i % 6 === 5 ? { tcp: true } : {}),
    at: 1_700_000_000_000 + i,
  });
  for (const [n, size, follow] of [[40, 8, false], [40, 64, false], [40, 8, true]] as const) {
    await t.step(`${n} records, ring ${size}, follower ${follow}`, async () => {
      const rs = Array.from({ length: n }, (_, i) => dns(i));
      const a = await monitor(size), b = await monitor(size);
      try {
        const fa = follow ? a.m.follow() : undefined, fb = follow ? b.m.follow() : undefined;
        rs.forEach((r) => a.m.ingestDns(r));
        b.m.ingestDnsBatch(rs.slice(0, 13));
        b.m.ingestDnsBatch(rs.slice(13));
        const qa = a.m.query(), qb = b.m.query();
        assert.equal(qa.flows.length, Math.min(n, size));
        assert.deepEqual(qb.flows, qa.flows);
        assert.deepEqual(qb.stats, qa.stats);
        assert.deepEqual(b.m.counters.processed, a.m.counters.processed);
        if (fa && fb) {
          const [ta, tb] = [await fa.take(1000), await fb.take(1000)];
          assert.equal(tb.items.length, n);
          assert.deepEqual(tb.items, ta.items);
        }
      } finally {
        a.close(), b.close();
      }
    });
  }
});
