// `deno task bench identity`: the cluster-wide identity allocator on Deno KV and on etcd, in one
// run. Two allocators ("agent A" and "agent B", each with its own store connection, cache and
// lease, as two agent processes have) share one backend: (a) new allocations per second on A,
// one at a time and 16 at a time; (b) re-acquiring known identities per second; (c) watch
// propagation: from A starting an allocation to B's cache learning the identity. Figures, then
// the ratio etcd / Deno KV. Progress goes to stderr.

import { parseArgs } from "node:util";
import { type KvStore, openKvStore } from "../../agent/kvstore/kvstore.ts";
import { IdentityCache } from "../../agent/identity/cache.ts";
import { IdentityAllocator } from "../../agent/identity/allocator.ts";
import { NodeLease } from "../../agent/node/lease.ts";
import { SILENT } from "../../agent/log.ts";
import { startEtcd } from "../../tests/helpers/etcd.ts";

interface Side {
  store: KvStore;
  cache: IdentityCache;
  allocator: IdentityAllocator;
  lease: NodeLease;
  abort: AbortController;
  done: Promise<void>;
}

interface Figures {
  sequentialPerSec: number;
  concurrentPerSec: number;
  reacquirePerSec: number;
  propagation: { p50: number; p95: number; max: number };
}

async function side(url: string, node: string): Promise<Side> {
  const store = await openKvStore(url);
  const lease = await NodeLease.grant(store, 30, SILENT);
  const cache = new IdentityCache();
  const allocator = new IdentityAllocator({
    store,
    cache,
    lease,
    node,
    range: { min: 256, max: 65535 },
    log: SILENT,
  });
  const abort = new AbortController();
  const w = cache.follow(store, { signal: abort.signal, log: SILENT });
  await w.ready;
  return { store, cache, allocator, lease, abort, done: w.done };
}

async function closeSide(s: Side): Promise<void> {
  s.abort.abort();
  await s.done;
  await s.allocator.settle();
  await s.lease.close();
  await s.store.close();
}

const labels = (
  tag: string,
  i: number,
) => [`k8s:app=${tag}-${i}`, "k8s:io.kubernetes.pod.namespace=bench"];

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? NaN;
}

async function measure(url: string, o: { n: number; concurrency: number; samples: number }) {
  const a = await side(url, "bench-a");
  const b = await side(url, "bench-b");
  try {
    let t = performance.now();
    for (let i = 0; i < o.n; i++) await a.allocator.acquire(labels("seq", i));
    const sequentialPerSec = o.n / ((performance.now() - t) / 1000);
    console.error(`  sequential: ${sequentialPerSec.toFixed(0)}/s`);

    t = performance.now();
    let next = 0;
    await Promise.all(Array.from({ length: o.concurrency }, async () => {
      while (next < o.n) await a.allocator.acquire(labels("par", next++));
    }));
    const concurrentPerSec = o.n / ((performance.now() - t) / 1000);
    console.error(`  concurrent: ${concurrentPerSec.toFixed(0)}/s`);

    t = performance.now();
    for (let i = 0; i < o.n; i++) await a.allocator.acquire(labels("seq", i));
    const reacquirePerSec = o.n / ((performance.now() - t) / 1000);
    console.error(`  re-acquire: ${reacquirePerSec.toFixed(0)}/s`);

    const seen = new Map<number, number>();
    const waiting = new Map<number, () => void>();
    b.cache.onChange((c) => {
      const now = performance.now();
      for (const i of c.added) {
        seen.set(i.id, now);
        waiting.get(i.id)?.();
      }
      return Promise.resolve();
    });
    const lat: number[] = [];
    for (let i = 0; i < o.samples; i++) {
      const started = performance.now();
      const { id } = await a.allocator.acquire(labels("watch", i));
      if (!seen.has(id)) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 5000);
          waiting.set(id, () => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
      lat.push((seen.get(id) ?? NaN) - started);
    }
    lat.sort((x, y) => x - y);
    return {
      sequentialPerSec,
      concurrentPerSec,
      reacquirePerSec,
      propagation: {
        p50: percentile(lat, 0.5),
        p95: percentile(lat, 0.95),
        max: lat.at(-1) ?? NaN,
      },
    } satisfies Figures;
  } finally {
    await closeSide(a);
    await closeSide(b);
  }
}

const fmt = (v: number) => (v >= 100 ? v.toFixed(0) : v.toFixed(1)).padStart(8);
const ratio = (v: number) =>
  (v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toPrecision(2)).padStart(8);

export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      n: { type: "string", default: "300" },
      concurrency: { type: "string", default: "16" },
      samples: { type: "string", default: "50" },
    },
  });
  const o = {
    n: Number(values.n),
    concurrency: Number(values.concurrency),
    samples: Number(values.samples),
  };
  const dir = await Deno.makeTempDir({ prefix: "cilia-identity-bench-" });
  const etcd = await startEtcd();
  try {
    console.error(`bench identity: Deno KV (${o.n} allocations, ${o.samples} watch samples)…`);
    const kv = await measure(`denokv://${dir}/kv.sqlite`, o);
    console.error(`bench identity: etcd at ${etcd.endpoints}…`);
    const ed = await measure(etcd.url, o);
    const rows: [string, (f: Figures) => number][] = [
      ["new allocations/s, sequential", (f) => f.sequentialPerSec],
      [`new allocations/s, ${o.concurrency} concurrent`, (f) => f.concurrentPerSec],
      ["re-acquire known identity/s", (f) => f.reacquirePerSec],
      ["A allocates → B knows, p50 (ms)", (f) => f.propagation.p50],
      ["A allocates → B knows, p95 (ms)", (f) => f.propagation.p95],
      ["A allocates → B knows, max (ms)", (f) => f.propagation.max],
    ];
    console.log(`identity allocator: agent A allocates, agent B's watch learns (same backend)`);
    console.log(`${"".padEnd(38)}  Deno KV      etcd  etcd/Deno KV`);
    for (const [name, get] of rows) {
      console.log(
        `${name.padEnd(38)}${fmt(get(kv))}  ${fmt(get(ed))}  ${ratio(get(ed) / get(kv))}×`,
      );
    }
    console.log(
      "(Deno KV: other processes' changes are found by polling every 100 ms, so propagation is " +
        "bounded by the poll interval; etcd pushes them on its watch stream)",
    );
  } finally {
    await etcd.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await main(Deno.args);
