// `deno task bench churn [--rounds N] [--pods N] [--parallel N] [--snapshots R,R]
// [--snapshot-dir D]`: a soak for pod churn. A lab node runs `bin/cilia-agent` (kernel datapath,
// Deno KV, the three-tier example policy in force, a short identity GC grace, `--debug-api true`);
// each round (8 by default) adds N pods through the real CNI plugin (every pod with its own
// identity, so identities come and go and every endpoint regenerates), then deletes them and waits
// until the identity GC has brought the identities back to the baseline. After each round it prints
// the agent's RSS (VmRSS of the Deno process), its V8 heap, external and WASM memory (from
// /v1/status), then the same after full collections (POST /v1/debug/gc: heap, external, and RSS
// after malloc_trim), with the fds, identity and endpoint counts. Memory must stay flat after the
// first round: that is judged on the figures after the collections (_churn_verdict.ts), since the
// ones before them follow when V8 last collected. `--snapshots 2,8` copies V8 heap snapshots of the
// agent after those rounds into `--snapshot-dir`; `_heap_diff.ts A B` says what grew (a snapshot
// costs the agent RSS: judge memory on a run without them). Needs root; every netns, mount and
// process is removed at the end.

import { parseArgs } from "node:util";
import { Lab } from "../../tests/helpers/netns.ts";
import { spawnAgentArgv } from "../../tests/helpers/cluster.ts";
import { execCni, POD_CIDR, POD_CIDR_V6 } from "../../tests/cni/_fixture.ts";
import { SocketClient } from "../../tests/agent/_fixture.ts";
import { verdicts } from "./_churn_verdict.ts";

import type { RoundFigures } from "./_churn_verdict.ts";
export type { RoundFigures };

const root = new URL("../../", import.meta.url).pathname;
const progress = (msg: string) => console.error(`bench churn: ${msg}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mb = (bytes: number) => Math.round(bytes / 1024 / 102.4) / 10;

/** VmRSS of a process in bytes. */
async function rssOf(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
  if (kb === undefined) throw new Error(`No VmRSS in /proc/${pid}/status`);
  return Number(kb) * 1024;
}

/** The Deno process among `pid` and its descendants (bin/cilia-agent is a wrapper that execs). */
async function denoPid(pid: number): Promise<number> {
  const exe = await Deno.readLink(`/proc/${pid}/exe`).catch(() => "");
  if (exe.endsWith("/deno")) return pid;
  const children = await Deno.readTextFile(`/proc/${pid}/task/${pid}/children`).catch(() => "");
  for (const c of children.trim().split(/\s+/).filter(Boolean)) {
    const found = await denoPid(Number(c)).catch(() => 0);
    if (found) return found;
  }
  throw new Error(`No Deno process under pid ${pid} (${exe})`);
}

async function must(argv: string[]): Promise<void> {
  const r = await new Deno.Command(argv[0]!, { args: argv.slice(1), stderr: "piped" }).output();
  if (r.code !== 0) {
    throw new Error(`"${argv.join(" ")}" failed: ${new TextDecoder().decode(r.stderr)}`);
  }
}

/** Runs `fn` over `items` with at most `n` at a time. */
async function pool<T>(items: T[], n: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}

interface Status {
  identities: { global: number };
  endpoints: { count: number };
  memory?: { heapUsed: number; external: number; wasm: number };
}

export interface ChurnOptions {
  rounds: number;
  pods: number;
  parallel: number;
  /** Heap snapshots of the agent after these rounds are copied into this directory. */
  snapshots?: { rounds: number[]; dir: string };
}

export async function measureChurn(o: ChurnOptions): Promise<RoundFigures[]> {
  if (Deno.uid() !== 0) throw new Error("The churn bench needs root (netns, bpffs, tc)");
  const lab = await Lab.create();
  let agent: Deno.ChildProcess | undefined;
  const api = new SocketClient(`${lab.dir}/agent/cilia.sock`);
  let log = "";
  try {
    const node = await lab.addNode("node");
    const dir = `${lab.dir}/agent`;
    await Deno.mkdir(dir);
    const argv = lab.nodeArgv(node, [
      `${root}bin/cilia-agent`,
      ...["--state-dir", `${dir}/state`, "--socket", api.path, "--node-name", "node-1"],
      ...["--pod-cidr", POD_CIDR, "--pod-cidr-v6", POD_CIDR_V6, "--lease-ttl", "5s"],
      ...["--identity-gc-grace", "1s", "--identity-gc-interval", "1s", "--log-level", "warn"],
      ...["--debug-api", "true"],
    ]);
    agent = spawnAgentArgv(argv);
    (async () => {
      for await (const c of agent.stderr) log = (log + new TextDecoder().decode(c)).slice(-20000);
    })();
    await waitFor(async () => (await api.call("GET", "/v1/healthz")).status === 200, 20_000);
    const pid = await denoPid(agent.pid);
    const policy = await api.call(
      "PUT",
      "/v1/policy",
      await Deno.readTextFile(`${root}examples/policies/three-tier.yaml`),
    );
    if (policy.status !== 200) throw new Error(`Policy import failed: ${JSON.stringify(policy)}`);
    const status = async () => (await api.call("GET", "/v1/status")).body as Status;
    const baseline = (await status()).identities.global;
    const figures: RoundFigures[] = [];
    const sample = async (round: number, started: number) => {
      const s = await status();
      const rss = await rssOf(pid);
      const gc = await api.call("POST", "/v1/debug/gc");
      if (gc.status !== 200) throw new Error(`POST /v1/debug/gc: ${JSON.stringify(gc)}`);
      const after = gc.body as {
        heapUsed: number;
        external: number;
        rss: number;
        rssTrimmed?: number;
        wasm: number;
        engineStrings: number;
      };
      figures.push({
        round,
        rssMb: mb(rss),
        ...(s.memory
          ? {
            heapMb: mb(s.memory.heapUsed),
            externalMb: mb(s.memory.external),
            wasmMb: mb(s.memory.wasm),
          }
          : {}),
        gc: {
          rssMb: mb(after.rssTrimmed ?? after.rss),
          heapMb: mb(after.heapUsed),
          externalMb: mb(after.external),
          wasmMb: mb(after.wasm),
          engineStrings: after.engineStrings,
        },
        fds: [...Deno.readDirSync(`/proc/${pid}/fd`)].length,
        identities: s.identities.global,
        endpoints: s.endpoints.count,
        seconds: Math.round((performance.now() - started) / 100) / 10,
      });
      progress(line(figures.at(-1)!));
      if (o.snapshots?.rounds.includes(round)) {
        const snap = await api.call("POST", "/v1/debug/heap-snapshot");
        if (snap.status !== 200) throw new Error(`heap snapshot: ${JSON.stringify(snap)}`);
        const to = `${o.snapshots.dir}/churn-round${round}.heapsnapshot`;
        await Deno.copyFile((snap.body as { path: string }).path, to);
        progress(`round ${round}: heap snapshot in ${to}`);
      }
    };
    await sample(0, performance.now());
    const apps = ["frontend", "backend", "db"];
    for (let round = 1; round <= o.rounds; round++) {
      const started = performance.now();
      const pods = Array.from({ length: o.pods }, (_, i) => ({
        name: `r${round}p${i}`,
        netns: `${lab.prefix}r${round}p${i}`,
        containerId: `churn-${round}-${i}`,
        app: apps[i % apps.length]!,
      }));
      await pool(pods, o.parallel, async (p) => {
        await must(["ip", "netns", "add", p.netns]);
        const r = await execCni("ADD", {
          containerId: p.containerId,
          netns: `/run/netns/${p.netns}`,
          args: `IgnoreUnknown=1;K8S_POD_NAME=${p.name};CILIA_LABELS=app=${p.app},churn=${p.name}`,
        }, api.path);
        if (r.code !== 0) throw new Error(`CNI ADD of "${p.name}" failed: ${r.stdout}${r.stderr}`);
      });
      const peak = await status();
      progress(
        `round ${round}: ${o.pods} pods added: RSS ${mb(await rssOf(pid)).toFixed(1)} MB, ` +
          `${peak.identities.global} identities, ${peak.endpoints.count} endpoints`,
      );
      await pool(pods, o.parallel, async (p) => {
        const r = await execCni("DEL", {
          containerId: p.containerId,
          netns: `/run/netns/${p.netns}`,
        }, api.path);
        if (r.code !== 0) throw new Error(`CNI DEL of "${p.name}" failed: ${r.stdout}${r.stderr}`);
        await must(["ip", "netns", "del", p.netns]);
      });
      await waitFor(async () => (await status()).identities.global <= baseline, 60_000);
      await sleep(500);
      await sample(round, started);
    }
    return figures;
  } catch (err) {
    if (log) console.error(log);
    throw err;
  } finally {
    try {
      agent?.kill("SIGKILL");
    } catch { /* gone */ }
    await agent?.status;
    api.close();
    await lab.close();
  }
}

async function waitFor(ok: () => Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      if (await ok()) return;
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`Gave up waiting after ${ms} ms`);
    await sleep(100);
  }
}

function line(f: RoundFigures): string {
  const opt = (x: number | undefined) => x === undefined ? "     -" : x.toFixed(1).padStart(6);
  return `round ${String(f.round).padStart(2)}   RSS ${f.rssMb.toFixed(1).padStart(6)} MB   ` +
    `heap ${opt(f.heapMb)} MB   external ${opt(f.externalMb)} MB   wasm ${opt(f.wasmMb)} MB   ` +
    `after GC: heap ${opt(f.gc?.heapMb)} MB external ${opt(f.gc?.externalMb)} MB ` +
    `RSS ${opt(f.gc?.rssMb)} MB engine strings ${f.gc?.engineStrings ?? "-"}   ` +
    `fds ${f.fds}   identities ${f.identities}   endpoints ${f.endpoints}   ` +
    `${f.seconds.toFixed(1)} s`;
}

/** The report: one line per round (round 0 is the idle agent before any pod). */
export function report(f: RoundFigures[], pods: number): string {
  const after = f.slice(1).map((x) => x.rssMb);
  const growth = after.length > 1 ? after.at(-1)! - after[0]! : 0;
  return [
    `Pod churn: ${pods} pods added and deleted per round, agent memory after each round`,
    ...f.map((x) => `  ${line(x)}`),
    `RSS growth from round 1 to round ${f.length - 1}: ${growth.toFixed(1)} MB (not judged: it ` +
    `follows when V8 last collected and the pages V8 and malloc keep; see the lines after GC)`,
    ...verdicts(f, pods),
  ].join("\n");
}

export async function main(args: string[]): Promise<void> {
  const flags = parseArgs({
    args,
    options: {
      rounds: { type: "string", default: "8" },
      pods: { type: "string", default: "100" },
      parallel: { type: "string", default: "2" },
      snapshots: { type: "string" },
      "snapshot-dir": { type: "string", default: "." },
    },
  });
  const num = (name: "rounds" | "pods" | "parallel") => {
    const n = Number(flags.values[name]);
    if (!Number.isInteger(n) || n < 1) {
      throw new RangeError(`Invalid --${name} "${flags.values[name]}": expected a whole number`);
    }
    return n;
  };
  const o: ChurnOptions = { rounds: num("rounds"), pods: num("pods"), parallel: num("parallel") };
  if (flags.values.snapshots !== undefined) {
    const rounds = flags.values.snapshots.split(",").map(Number);
    if (rounds.some((r) => !Number.isInteger(r) || r < 0 || r > o.rounds)) {
      throw new RangeError(
        `Invalid --snapshots "${flags.values.snapshots}": expected rounds such as 2,${o.rounds}`,
      );
    }
    o.snapshots = { rounds, dir: await Deno.realPath(flags.values["snapshot-dir"]!) };
  }
  progress(`${o.rounds} rounds of ${o.pods} pods (${o.parallel} at a time)`);
  console.log(report(await measureChurn(o), o.pods));
}

if (import.meta.main) await main(Deno.args);
