// `deno task bench etcd-scale [--nodes 10,100,500] [--endpoints 10] [--quick]`: how far one etcd
// carries the multi-node watch design (agent/node/discovery.ts), with simulated agents: no
// datapath, no netns. One real etcd on loopback (random ports, its data in a temp dir). For each
// cluster size N: N node records (each with its own lease, as agents keep them) and N × E endpoint
// records written with 32 writers at once (etcd write rate); N watchers on `cilia/endpoints/`,
// one watch stream each through the agent's own store (agent/kvstore/etcd.ts), then one endpoint
// record put at a time and the time until every watcher saw it (fan-out latency, p50/p99 over
// watchers × puts); and one real NodeDiscovery (the agent's, with a sink that keeps the ipcache
// entries it is handed) following the whole cluster: its heap per remote endpoint. Also the
// steady write load N agents put on etcd (lease keep-alives every TTL/3). Figures go to stdout.
import { parseArgs } from "node:util";
import { openKvStore } from "../../agent/kvstore/kvstore.ts";
import type { KvStore } from "../../agent/kvstore/kvstore.ts";
import { NodeDiscovery } from "../../agent/node/discovery.ts";
import { Logger } from "../../agent/log.ts";
import { Serial } from "../../agent/_serial.ts";
import type { IpcacheUpsert } from "../../agent/datapath/datapath.ts";

const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const progress = (msg: string) => console.error(`bench etcd-scale: ${msg}`);
const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil((p / 100) * xs.length) - 1)]!;
/** V8's gc: main() re-runs itself with --v8-flags=--expose-gc when it is missing. */
const gc = () => (globalThis as { gc?: () => void }).gc?.();
const LEASE_TTL = 15;

async function startEtcd(dir: string): Promise<{ url: string; stop: () => Promise<void> }> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const client = `http://127.0.0.1:${port}`, peer = `http://127.0.0.1:${port + 1}`;
  // deno-fmt-ignore
  const child = new Deno.Command("etcd", {
    args: ["--name", "scale", "--data-dir", `${dir}/etcd`, "--listen-client-urls", client,
      "--advertise-client-urls", client, "--listen-peer-urls", peer,
      "--initial-advertise-peer-urls", peer, "--initial-cluster", `scale=${peer}`,
      "--heartbeat-interval", "10", "--election-timeout", "100", "--unsafe-no-fsync",
      "--quota-backend-bytes", String(2 ** 31), "--log-level", "error", "--logger", "zap"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const stop = async () => {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
  };
  for (const end = Date.now() + 10_000; Date.now() < end; await sleep(50)) {
    const ok = await fetch(`${client}/health`).then((r) => r.text(), () => "");
    if (ok.includes(`"health":"true"`)) return { url: `etcd://127.0.0.1:${port}`, stop };
  }
  await stop();
  throw new Error("etcd did not become healthy within 10 s");
}

const nodeRecord = (i: number) => ({
  name: `node-${i}`,
  addresses: [`192.0.${i >> 8}.${i & 255}`],
  ip: `192.0.${i >> 8}.${i & 255}`,
  routingMode: "tunnel",
  podCidr: `10.${128 + (i >> 8)}.${i & 255}.0/24`,
  startedAt: new Date().toISOString(),
});
const endpointRecord = (i: number, j: number) => ({
  node: `node-${i}`,
  identity: 1000 + (j % 500),
  ipv4: `10.${128 + (i >> 8)}.${i & 255}.${j + 2}`,
});

/** Writes every record with `writers` concurrent puts; returns puts per second. */
async function load(store: KvStore, n: number, e: number, writers = 32): Promise<number> {
  const jobs: (() => Promise<void>)[] = [];
  for (let i = 0; i < n; i++) {
    jobs.push(async () => {
      const lease = await store.grantLease(LEASE_TTL * 20); // outlives the run
      await store.put(`cilia/nodes/node-${i}`, enc.encode(JSON.stringify(nodeRecord(i))), {
        lease,
      });
    });
    for (let j = 0; j < e; j++) {
      const key = `cilia/endpoints/node-${i}/${j}`;
      jobs.push(async () => {
        await store.put(key, enc.encode(JSON.stringify(endpointRecord(i, j))));
      });
    }
  }
  const t = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: writers }, async () => {
    while (next < jobs.length) await jobs[next++]!();
  }));
  return jobs.length / ((performance.now() - t) / 1000);
}

/** N watch streams; each put's arrival time per watcher. */
async function fanOut(url: string, n: number, puts: number): Promise<number[]> {
  const stores: KvStore[] = [];
  const ac = new AbortController();
  const seen = new Map<string, number[]>();
  let ready = 0;
  try {
    // A few stores (connection pools), many streams: as many etcd watchers as simulated agents.
    for (let s = 0; s < Math.min(n, 8); s++) stores.push(await openKvStore(url));
    const loops = Array.from({ length: n }, async (_, w) => {
      const store = stores[w % stores.length]!;
      const it = store.watch("cilia/endpoints/fanout/", {
        after: await store.cursor(),
        signal: ac.signal,
      });
      ready++;
      for await (const ev of it) {
        if (ev.type === "put") seen.get(ev.entry.key)?.push(performance.now());
      }
    }).map((p) => p.catch(() => {}));
    while (ready < n) await sleep(20);
    await sleep(300); // the last streams are open at etcd
    const lat: number[] = [];
    for (let k = 0; k < puts; k++) {
      const key = `cilia/endpoints/fanout/${k}`;
      const arrivals: number[] = [];
      seen.set(key, arrivals);
      const t = performance.now();
      await stores[0]!.put(key, enc.encode(JSON.stringify(endpointRecord(0, k))));
      for (const end = Date.now() + 10_000; arrivals.length < n && Date.now() < end;) {
        await sleep(1);
      }
      if (arrivals.length < n) throw new Error(`Only ${arrivals.length}/${n} watchers saw ${key}`);
      lat.push(...arrivals.map((a) => a - t));
    }
    ac.abort();
    await Promise.all(loops);
    return lat;
  } finally {
    ac.abort();
    for (const s of stores) await s.close();
  }
}

/** One real NodeDiscovery following the cluster: heap bytes per remote endpoint it holds. */
async function memoryPerEndpoint(url: string, remote: number, endpoints: number): Promise<number> {
  const store = await openKvStore(url);
  const ac = new AbortController();
  try {
    const held = new Map<string, IpcacheUpsert>();
    gc();
    const before = Deno.memoryUsage().heapUsed;
    const d = new NodeDiscovery({
      store,
      self: { name: "observer", addresses: ["192.0.2.250"], startedAt: new Date().toISOString() },
      mode: "tunnel",
      ipcache: (up, del) => {
        for (const u of up) held.set(u.prefix, u);
        for (const x of del) held.delete(x.prefix);
        return Promise.resolve();
      },
      gateways: {},
      serial: new Serial(),
      log: new Logger({ level: "error" }),
    });
    const w = d.follow({ signal: ac.signal });
    await w.ready;
    for (const end = Date.now() + 60_000; d.entries().length < remote && Date.now() < end;) {
      await sleep(50);
    }
    gc();
    const bytes = Deno.memoryUsage().heapUsed - before;
    if (d.entries().length < remote) {
      throw new Error(`Discovery held ${d.entries().length}/${remote}`);
    }
    ac.abort();
    await w.done;
    return bytes / endpoints;
  } finally {
    ac.abort();
    await store.close();
  }
}

export async function main(args: string[]): Promise<void> {
  if (!(globalThis as { gc?: unknown }).gc) {
    // Heap figures need a collection before each reading.
    const bench = new URL("./main.ts", import.meta.url).pathname;
    const o = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--v8-flags=--expose-gc", bench, "etcd-scale", ...args],
      stdin: "null",
    }).spawn().status;
    if (!o.success) Deno.exit(o.code);
    return;
  }
  const { values } = parseArgs({
    args,
    options: {
      nodes: { type: "string" },
      endpoints: { type: "string", default: "10" },
      quick: { type: "boolean", default: false },
    },
  });
  const sizes = (values.nodes ?? (values.quick ? "10,100" : "10,100,500")).split(",").map(Number);
  const e = Number(values.endpoints);
  if (sizes.some((n) => !Number.isInteger(n) || n < 2) || !Number.isInteger(e) || e < 1) {
    throw new RangeError(
      `Invalid --nodes "${values.nodes}" or --endpoints "${values.endpoints}": expected counts like 10,100 and 10`,
    );
  }
  const dir = await Deno.makeTempDir({ prefix: "cilia-etcd-scale-" });
  const rows: string[][] = [];
  try {
    for (const n of sizes) {
      const etcd = await startEtcd(`${dir}/${n}`);
      try {
        const store = await openKvStore(etcd.url);
        progress(`${n} nodes: writing ${n} node records and ${n * e} endpoint records`);
        const rate = await load(store, n, e);
        await store.close();
        progress(`${n} nodes: ${n} watchers, fan-out of 20 puts`);
        const lat = await fanOut(etcd.url, n, values.quick ? 5 : 20);
        progress(`${n} nodes: one discovery following ${(n * e).toLocaleString()} endpoints`);
        const perEp = await memoryPerEndpoint(etcd.url, n * e + n + n, n * e);
        rows.push([
          String(n),
          (n * e).toLocaleString("en"),
          Math.round(rate).toLocaleString("en"),
          (n / (LEASE_TTL / 3)).toFixed(0),
          pct(lat, 50).toFixed(1),
          pct(lat, 99).toFixed(1),
          Math.round(perEp).toLocaleString("en"),
          (perEp * n * e / 2 ** 20).toFixed(1),
        ]);
      } finally {
        await etcd.stop();
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const head = [
    "nodes",
    "endpoints",
    "puts/s",
    "keep-alives/s",
    "fan-out p50 ms",
    "p99 ms",
    "B/remote ep",
    "MiB/agent",
  ];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => x.padStart(w[i]!)).join("  ");
  console.log(`\nbench etcd-scale: one etcd, ${e} endpoints per node, simulated agents\n`);
  console.log([line(head), line(w.map((x) => "-".repeat(x))), ...rows.map(line)].join("\n"));
  console.log(
    "\nputs/s: bulk writes by 32 writers; keep-alives/s: the steady load of N agents (TTL 15 s);" +
      "\nfan-out: put → seen by every one of N watchers; B/remote ep: one NodeDiscovery's heap" +
      "\nper remote endpoint (its maps and ipcache entries, node entries included; the engine's" +
      "\nipcache copy and the kernel map are extra); MiB/agent: that times N × E",
  );
}
