// `deno task bench endpoints [--pods N] [--parallel N] [--agent-log FILE] [--trace FILE] [--quick] [--no-conntrack] [--idle S]`: issue #15's node-scale figures,
// each next to its target, on one lab node running `bin/cilia-agent` (kernel datapath, Deno KV,
// `--bpf-ct-max` 1,048,576) with a server pod and a client policy in force:
// 1. 1,000 CNI ADDs through bin/cilia-cni, every pod with a label set of its own (a new identity
//    each: identity churn): wall time, p50/p99 of the first 50 vs the last 50, no failed ADD,
//    every pod's policy in force when its ADD returned (the kernel's policy map read right after:
//    the server admits the new identity, the pod may reach the server's port and nothing else;
//    every 50th pod also connects for real), the agent's CPU (user + system, from /proc); with
//    --idle, the node's background CPU with no ADD running, before and after the ADDs.
// 2. Agent restart with those endpoints: SIGTERM, start, time until every endpoint is restored
//    and realised; long-lived TCP connections pass data during and after it.
// 3. A million tracked connections: request/response rate of a real established flow with the
//    bench's few entries vs with 1M synthetic ones in cilia_ct (_ct_fill.ts), measured in turns
//    (the synthetic entries written before and deleted after each 1M run), and how many idle
//    established flows a flood of new entries evicts (the LRU, figures reported, no target).
// Needs root; every netns, mount and process is removed at the end.
import { parseArgs } from "node:util";
import { epochMs } from "../../agent/cni/client.ts";
import { acquire, release } from "../../agent/datapath/ffi.ts";
import { kernelPolicyLookup } from "../../agent/datapath/kernel_lookup.ts";
import { execCni } from "../../tests/cni/_fixture.ts";
import { Lab, type Peer } from "../../tests/helpers/netns.ts";
import { BenchAgent } from "./_bench_agent.ts";
import { clearConntrack, countFlows, fillConntrack } from "./_ct_fill.ts";
import { marksOf, partsOf, percentile } from "./cni_bench.ts";

const RR_SCRIPT = new URL("./_rr.ts", import.meta.url).pathname;
const CT_MAX = 1_048_576, ECHO = 8080, RR = 5202, LIVE = 4, IDLE = 64, REFILL_SLACK = 4096;
/** Sizes of the successive floods of new flows into the full conntrack table. */
const FLOODS = [100, 1_000, 10_000, 100_000];
const POLICY = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: bench-server, namespace: default }
spec:
  endpointSelector: { matchLabels: { role: server } }
  ingress:
    - fromEndpoints: [{ matchLabels: { role: client } }]
      toPorts: [{ ports: [{ port: "${ECHO}", protocol: TCP }, { port: "${RR}", protocol: TCP }] }]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: bench-client, namespace: default }
spec:
  endpointSelector: { matchLabels: { role: client } }
  egress:
    - toEndpoints: [{ matchLabels: { role: server } }]
      toPorts: [{ ports: [{ port: "${ECHO}", protocol: TCP }, { port: "${RR}", protocol: TCP }] }]
`;

const progress = (msg: string) => console.error(`bench endpoints: ${msg}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const f1 = (x: number) => x.toFixed(1);
let missed = 0;

/** One figure against its target, with PASS or MISSED. */
function report(what: string, value: string, target: string, ok: boolean): void {
  if (!ok) missed++;
  console.log(
    `  ${what.padEnd(54)} ${value.padStart(16)}   target ${target.padEnd(14)} ${
      ok ? "PASS" : "MISSED"
    }`,
  );
}

/**
 * One ADD's stages for `--trace`, in ms: `netns` (the bench's `ip netns add`), then the parts of
 * `bench cni` (start: exec until the plugin's code runs; plugin; request: the socket round trip
 * and the agent's queue before its handler; agent; exit), and `lookup` (the bench's endpoint GET);
 * `at` is the epoch ms of the start, `container` joins it with the agent's log.
 */
type AddTrace = Record<"at" | "netns" | "lookup" | keyof ReturnType<typeof partsOf>, number> & {
  container: string;
};

interface PodRef {
  name: string;
  netns: string;
  id: number;
  identity: number;
  ipv4: string;
}

class Bench {
  readonly lab: Lab;
  readonly agent: BenchAgent;
  readonly ctMap: string;
  #pods = new Map<string, PodRef>();

  constructor(lab: Lab, agent: BenchAgent, bpffs: string) {
    this.lab = lab;
    this.agent = agent;
    this.ctMap = `${bpffs}/cilia/maps/cilia_ct`;
  }

  get pods(): PodRef[] {
    return [...this.#pods.values()];
  }

  /** CNI ADD of a new pod; returns its latency, or throws with the plugin's error. */
  async add(
    name: string,
    labels: string,
  ): Promise<{ ms: number; agentMs: number; pod: PodRef; trace: AddTrace }> {
    const netns = `${this.lab.prefix}${name}`;
    const t0 = epochMs();
    const ns = await new Deno.Command("ip", { args: ["netns", "add", netns], stderr: "null" })
      .output();
    if (ns.code !== 0) throw new Error(`Cannot create netns "${netns}"`);
    const r = await execCni("ADD", {
      containerId: `bench-${name}`,
      netns: `/run/netns/${netns}`,
      args: `IgnoreUnknown=1;K8S_POD_NAME=${name};CILIA_LABELS=${labels}`,
      timing: true,
    }, this.agent.socket);
    if (r.code !== 0) throw new Error(`CNI ADD of "${name}" failed: ${r.stdout}${r.stderr}`);
    const ep = await this.agent.api.call("GET", `/v1/endpoint/${name}`);
    const ipv4 = (r.json.ips as { address: string }[]).map((i) => i.address.split("/")[0]!)
      .find((a) => !a.includes(":"))!;
    const pod = { name, netns, id: ep.body.id, identity: ep.body.identity, ipv4 };
    this.#pods.set(name, pod);
    const marks = marksOf(r.stderr), parts = partsOf(r, marks);
    const trace = {
      container: `bench-${name}`,
      at: t0,
      netns: r.startedAt - t0,
      ...parts,
      lookup: epochMs() - (r.startedAt + r.ms),
    };
    return { ms: r.ms, agentMs: parts.agent, pod, trace };
  }

  pod(name: string): PodRef {
    const p = this.#pods.get(name);
    if (!p) throw new Error(`No pod "${name}"`);
    return p;
  }

  /** What the kernel's maps say now: the policy of `pod` toward the server is in force. */
  policyInForce(pod: PodRef, server: PodRef): string | undefined {
    const maps = {
      cilia_endpoints: this.ctMap.replace(/cilia_ct$/, "cilia_endpoints"),
      cilia_policy: this.ctMap.replace(/cilia_ct$/, "cilia_policy"),
    };
    const q = (epId: number, egress: boolean, identity: number, port: number) =>
      kernelPolicyLookup(maps, { epId, egress, identity, proto: 6, port });
    const checks: [string, ReturnType<typeof q>, string][] = [
      ["server admits it", q(server.id, false, pod.identity, ECHO), "allow"],
      ["it reaches the server", q(pod.id, true, server.identity, ECHO), "allow"],
      ["other ports denied", q(pod.id, true, server.identity, 9), "deny"],
    ];
    const bad = checks.find(([, r, want]) => r.verdict !== want);
    return bad ? `${bad[0]}: kernel says ${bad[1].verdict} (${bad[1].step})` : undefined;
  }

  /** One real TCP connection from a pod to the server's echo port (bash /dev/tcp, 1 s). */
  async connects(pod: PodRef, server: PodRef): Promise<boolean> {
    const sh = `exec 3<>/dev/tcp/${server.ipv4}/${ECHO} && echo x >&3 && read -t 1 l <&3`;
    const r = await this.lab.exec(pod.netns, ["timeout", "2", "bash", "-c", sh]);
    return r.code === 0;
  }

  /** 1-byte TCP round trips per second from `pod` to the server's RR port (pinned to CPU 0). */
  async rr(pod: PodRef, server: PodRef, seconds: number): Promise<number> {
    const out = await this.lab.run(pod.netns, [
      ...["taskset", "-c", "0", Deno.execPath(), "run", "-A", "--no-config", RR_SCRIPT],
      ...["client", server.ipv4, String(RR), String(seconds)],
    ]);
    return (JSON.parse(out) as { perSec: number }).perSec;
  }
}

/** Runs `fn` over 0..n-1 with at most `parallel` at a time. */
async function pool(n: number, parallel: number, fn: (i: number) => Promise<void>) {
  let next = 0;
  const worker = async () => {
    while (next < n) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(n, parallel) }, worker));
}

/** The machine's CPU time so far from /proc/stat, in clock ticks: busy (not idle or iowait), all. */
function machineCpu(): { busy: number; all: number } {
  const line = Deno.readTextFileSync("/proc/stat").split("\n")[0]!;
  const t = line.trim().split(/\s+/).slice(1, 9).map(Number); // user … steal
  const all = t.reduce((a, b) => a + b, 0);
  return { busy: all - t[3]! - t[4]!, all };
}

/**
 * Clock ticks of user + system time so far: this process, the children it waited for (the plugin
 * processes, `ip netns add`), and the kernel's threads (kworkers: e.g. IPv6 addrconf work).
 */
async function processCpu(): Promise<{ bench: number; benchChildren: number; kernel: number }> {
  const fields = (stat: string) => stat.slice(stat.lastIndexOf(")") + 2).split(" ").map(Number);
  const own = fields(await Deno.readTextFile(`/proc/${Deno.pid}/stat`));
  let kernel = 0;
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const stat = await Deno.readTextFile(`/proc/${e.name}/stat`).catch(() => "");
    const f = stat ? fields(stat) : [];
    if (e.name === "2" || f[1] === 2) kernel += f[11]! + f[12]!; // kthreadd and its children
  }
  return { bench: own[11]! + own[12]!, benchChildren: own[13]! + own[14]!, kernel };
}

/** Clock ticks of user + system time so far of each kernel thread (kthreadd and its children). */
async function kernelThreadCpu(): Promise<Map<string, number>> {
  const ticks = new Map<string, number>();
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const stat = await Deno.readTextFile(`/proc/${e.name}/stat`).catch(() => "");
    const f = stat ? stat.slice(stat.lastIndexOf(")") + 2).split(" ").map(Number) : [];
    if (e.name === "2" || f[1] === 2) ticks.set(e.name, f[11]! + f[12]!);
  }
  return ticks;
}

/**
 * `--idle S`: the node's background CPU over S seconds with no ADD running (cores used by the
 * agent with its shells, by kernel threads, in softirq, and by the whole machine, which other
 * work shares): measured with the first endpoints and again with all of them, so work that grows
 * with the endpoints and runs beside the ADDs shows.
 */
async function idleCpu(b: Bench, seconds: number): Promise<string> {
  const softirq = () => Number(Deno.readTextFileSync("/proc/stat").split(/\s+/)[7]);
  const [a0, k0, m0, s0] = [await b.agent.cpu(), await kernelThreadCpu(), machineCpu(), softirq()];
  progress(`idle for ${seconds} s with ${b.pods.length} endpoints`);
  await sleep(seconds * 1000);
  const [a1, k1, m1, s1] = [await b.agent.cpu(), await kernelThreadCpu(), machineCpu(), softirq()];
  const pct = (ticks: number) => `${(ticks / seconds).toFixed(1)} %`;
  const agent = (a1.self + a1.children - a0.self - a0.children) * 100;
  // Threads that ran through the window only: an exiting kworker takes its ticks with it.
  let kernel = 0;
  for (const [pid, t] of k1) if (k0.has(pid)) kernel += t - k0.get(pid)!;
  return `agent ${pct(agent)}, kernel threads ${pct(kernel)}, softirq ${pct(s1 - s0)}, machine ${
    ((m1.busy - m0.busy) / (m1.all - m0.all) * 200).toFixed(0)
  } % of 200 %`;
}

/** Phase 1: `n` ADDs of pods with new label sets; with `trace`, one JSON line per ADD there. */
async function churn(b: Bench, n: number, parallel: number, trace?: string): Promise<void> {
  const server = b.pod("server");
  const ms: number[] = new Array(n), agentMs: number[] = new Array(n);
  const traces: (AddTrace & { i: number })[] = [];
  const notInForce: string[] = [];
  let failed = 0, packetsOk = 0, packetsTried = 0;
  const mcpu0 = machineCpu(), pcpu0 = await processCpu();
  const cpu0 = await b.agent.cpu();
  const ids0 = (await b.agent.api.call("GET", "/v1/status")).body.identities.global as number;
  // The agent's CPU (with its shells) when the first W and all but the last W ADDs have finished:
  // its work per ADD at the start and at the end, which the machine's load inflates far less
  // than wall times (ticks of 10 ms: W ADDs of ~20 ms each make them fine enough).
  const w = Math.min(50, Math.floor(n / 2));
  const cpuAt = new Map<number, Promise<{ self: number; children: number }>>();
  let finished = 0;
  const t0 = performance.now();
  await pool(n, parallel, async (i) => {
    const name = `p${i}`;
    try {
      const r = await b.add(name, `role=client,pod=${name}`);
      ms[i] = r.ms;
      agentMs[i] = r.agentMs;
      traces.push({ i, ...r.trace });
      const bad = b.policyInForce(r.pod, server);
      if (bad) notInForce.push(`${name}: ${bad}`);
      if (i % 50 === 0) {
        packetsTried++;
        if (await b.connects(r.pod, server)) packetsOk++;
      }
    } catch (err) {
      failed++;
      if (failed <= 3) progress(String(err));
    }
    if ((i + 1) % 100 === 0) progress(`${i + 1} of ${n} ADDs`);
    finished++;
    if (finished === w || finished === n - w) cpuAt.set(finished, b.agent.cpu());
  });
  const wall = (performance.now() - t0) / 1000;
  const mcpu1 = machineCpu(), pcpu1 = await processCpu();
  const cpu1 = await b.agent.cpu();
  if (trace) await Deno.writeTextFile(trace, traces.map((x) => JSON.stringify(x) + "\n").join(""));
  const ids1 = (await b.agent.api.call("GET", "/v1/status")).body.identities.global as number;
  const done = ms.filter((x) => x !== undefined);
  const first = done.slice(0, 50), last = done.slice(-50);
  const agentDone = agentMs.filter((x) => x !== undefined);
  const p = (xs: number[], q: number) => percentile(xs, q);
  console.log(`${n} CNI ADDs, each pod with its own labels (${parallel} at a time)`);
  report(`pods added in`, `${f1(wall)} s`, "< 60 s", wall < 60);
  report("failed ADDs (allocation or other errors)", String(failed), "0", failed === 0);
  report("new identities", String(ids1 - ids0), `${n}`, ids1 - ids0 === n);
  report(
    "pods without their policy in force when ADD returned",
    String(notInForce.length),
    "0",
    notInForce.length === 0,
  );
  for (const x of notInForce.slice(0, 3)) console.log(`    ${x}`);
  report(
    "pods reaching the server right after ADD",
    `${packetsOk}/${packetsTried}`,
    "all",
    packetsOk === packetsTried,
  );
  const a1 = agentDone.slice(0, 50), a2 = agentDone.slice(-50);
  console.log(
    `  first 50 ADDs  p50 ${f1(p(first, 0.5))} ms   p99 ${f1(p(first, 0.99))} ms   ` +
      `(agent's part p50 ${f1(p(a1, 0.5))} ms, p99 ${f1(p(a1, 0.99))} ms)`,
  );
  console.log(
    `  last 50 ADDs   p50 ${f1(p(last, 0.5))} ms   p99 ${f1(p(last, 0.99))} ms   ` +
      `(agent's part p50 ${f1(p(a2, 0.5))} ms, p99 ${f1(p(a2, 0.99))} ms)`,
  );
  report(
    "  p50 last 50 / first 50",
    `${(p(last, 0.5) / p(first, 0.5)).toFixed(2)}×`,
    "≤ 1.2×",
    p(last, 0.5) / p(first, 0.5) <= 1.2,
  );
  report(
    "  p99 last 50 / first 50",
    `${(p(last, 0.99) / p(first, 0.99)).toFixed(2)}×`,
    "≤ 1.2×",
    p(last, 0.99) / p(first, 0.99) <= 1.2,
  );
  const busyMs = (a: { self: number; children: number }, b: { self: number; children: number }) =>
    ((b.self + b.children - a.self - a.children) * 1000) / w;
  const [cpuW, cpuNW] = [await cpuAt.get(w), await cpuAt.get(n - w)];
  if (cpuW && cpuNW) {
    const a = busyMs(cpu0, cpuW), z = busyMs(cpuNW, cpu1);
    console.log(
      `  agent CPU per ADD (with its shells): first ${w} ${f1(a)} ms, last ${w} ${f1(z)} ms ` +
        `(${(z / a).toFixed(2)}×)`,
    );
  }
  const self = cpu1.self - cpu0.self, kids = cpu1.children - cpu0.children;
  console.log(
    `  agent CPU: ${f1(self)} s in the agent (${Math.round((self / wall) * 100)} % of a core), ` +
      `${f1(kids)} s in its subprocesses (ip, tc, bpftool), over ${f1(wall)} s; the machine's ` +
      `CPUs ${Math.round(((mcpu1.busy - mcpu0.busy) / (mcpu1.all - mcpu0.all)) * 100)} % busy`,
  );
  // The machine's busy time per ADD, by whom (clock ticks are 10 ms: per ADD, 1,000 ADDs make
  // them fine enough); "the rest" is other jobs on the machine and interrupts.
  const perAdd = (ticks: number) => `${((ticks * 10) / n).toFixed(1)} ms`;
  const plugin = pcpu1.benchChildren - pcpu0.benchChildren, bench = pcpu1.bench - pcpu0.bench;
  const kernel = pcpu1.kernel - pcpu0.kernel, busy = mcpu1.busy - mcpu0.busy;
  const agentTicks = (self + kids) * 100;
  console.log(
    `  machine CPU per ADD ${perAdd(busy)}: plugins and the bench's other processes ` +
      `${perAdd(plugin)}, the bench ${perAdd(bench)}, the agent and its processes ` +
      `${perAdd(agentTicks)}, kernel threads ${perAdd(kernel)}, the rest ` +
      `${perAdd(busy - plugin - bench - kernel - agentTicks)}`,
  );
}

/** Phase 2: restart with every endpoint; LIVE connections send every 100 ms throughout. */
async function restart(b: Bench, client: Peer, server: PodRef): Promise<void> {
  const expected = b.pods.length;
  let sent = 0, lost = 0, stop = false;
  const traffic = (async () => {
    while (!stop) {
      for (let c = 0; c < LIVE; c++) {
        sent++;
        if (!(await client.send(`live${c}`, `ping-${sent}`, 1000))) lost++;
      }
      await sleep(100);
    }
  })();
  let healthy = 0, restored = 0, reused: boolean | undefined;
  try {
    await b.agent.stop("SIGTERM");
    const t0 = performance.now();
    await b.agent.start(300_000);
    healthy = (performance.now() - t0) / 1000;
    for (;;) {
      const s = (await b.agent.api.call("GET", "/v1/status")).body;
      reused = s.datapath?.reused;
      if (s.endpoints.count >= expected && s.realised && s.endpoints.notReady === 0) break;
      if (performance.now() - t0 > 300_000) {
        throw new Error(`Restore did not finish in 300 s: ${JSON.stringify(s.endpoints)}`);
      }
      await sleep(100);
    }
    restored = (performance.now() - t0) / 1000;
    await sleep(500);
  } finally {
    stop = true;
    await traffic;
  }
  let after = 0;
  for (let c = 0; c < LIVE; c++) if (await client.send(`live${c}`, "after", 1000)) after++;
  const inForce = b.policyInForce(b.pod("p0"), server);
  console.log(`agent restart with ${expected} endpoints (SIGTERM, start)`);
  console.log(
    `  API answers after ${f1(healthy)} s; programs ${
      reused === false
        ? "RELOADED (bpf/ changed since the first start: includes a compile)"
        : "reused from the pins"
    }`,
  );
  report(
    `every endpoint restored and realised after`,
    `${f1(restored)} s`,
    "< 10 s",
    restored < 10,
  );
  report(
    `long-lived connections: echoes lost during the restart`,
    `${lost}/${sent}`,
    "0",
    lost === 0,
  );
  report(
    `long-lived connections passing data after it`,
    `${after}/${LIVE}`,
    `${LIVE}/${LIVE}`,
    after === LIVE,
  );
  report(
    "policy still in force after it (kernel map)",
    inForce ?? "yes",
    "yes",
    inForce === undefined,
  );
}

/**
 * Phase 3: RR with few vs 1M conntrack entries, in turns (few, 1M, few, 1M, ...: the synthetic
 * entries are written before each 1M run and deleted after it), so both tables are measured at
 * nearly the same time, with the agent's background work and the machine's other load spread
 * over both; then a flood against idle established flows.
 */
async function conntrack(b: Bench, client: Peer, o: { reps: number; seconds: number }) {
  const server = b.pod("server"), keep = b.pod("keep"), flooder = b.pod("p0");
  await b.rr(keep, server, 0.5); // warm-up
  const before = countFlows(b.ctMap, keep.ipv4, [ECHO, RR]);
  progress(`${before.total} entries; RR with them and with ${CT_MAX} entries, ${o.reps} turns`);
  const dst = server.ipv4.split(".").map(Number) as [number, number, number, number];
  // Up to the table's size less what is in it, so filling evicts none of the real flows. Later
  // turns leave REFILL_SLACK slots free: near full, the LRU frees slots in batches by evicting
  // the oldest flows (the idle ones the floods below watch); the last slots are written after
  // the turns, so the floods start from the same full table as with one fill.
  const fill = CT_MAX - before.total - 64;
  const flows = (i: number) => ({
    epId: flooder.id,
    first: 0,
    count: i === 0 ? fill : fill - REFILL_SLACK,
    dst,
  });
  const bases: number[] = [], loads: number[] = [], sizes: number[] = [];
  let refused = 0, fillS = 0, filled = before;
  for (let i = 0; i < o.reps; i++) {
    bases.push(await b.rr(keep, server, o.seconds));
    const t = performance.now();
    refused += fillConntrack(b.ctMap, flows(i));
    if (i === 0) {
      fillS = (performance.now() - t) / 1000;
      filled = countFlows(b.ctMap, keep.ipv4, [ECHO, RR]);
      sizes.push(filled.total);
    } else sizes.push(countFlows(b.ctMap, keep.ipv4, [ECHO, RR]).total);
    loads.push(await b.rr(keep, server, o.seconds));
    progress(
      `turn ${i + 1}: RR ${Math.round(bases[i]!)}/s, then ${Math.round(loads[i]!)}/s with ` +
        `${sizes[i]} entries`,
    );
    if (i < o.reps - 1) clearConntrack(b.ctMap, flows(i));
  }
  if (o.reps > 1) {
    refused += fillConntrack(b.ctMap, {
      ...flows(1),
      first: fill - REFILL_SLACK,
      count: REFILL_SLACK,
    });
  }
  const full = countFlows(b.ctMap, keep.ipv4, [ECHO, RR]);
  const base = median(bases), loaded = median(loads), least = Math.min(...sizes);
  const n = (x: number) => x.toLocaleString("en");
  console.log(`a million tracked connections (cilia_ct max ${n(CT_MAX)})`);
  console.log(
    `  ${n(fill)} synthetic established flows written in ${f1(fillS)} s (${refused} refused): ` +
      `${n(before.total)} entries before, ${n(filled.total)} after`,
  );
  console.log(
    `  filling to ${((filled.total / CT_MAX) * 100).toFixed(2)} % evicted ` +
      `${before.byPort[ECHO]! - filled.byPort[ECHO]!} of the ${
        before.byPort[ECHO]
      } entries of the ` +
      `keep pod's ${
        IDLE + LIVE
      } idle echo connections (the LRU evicts in batches before it is full)`,
  );
  report("table holds ≥ 1,000,000 entries", n(least), "≥ 1,000,000", least >= 1e6);
  console.log(
    `  established flow RR/s (median of ${o.reps} turns): ${Math.round(base)} with ` +
      `${n(before.total)} entries, ${Math.round(loaded)} with ${n(least)}–${
        n(Math.max(...sizes))
      }; turn by turn ${bases.map((x, i) => `${(loads[i]! / x).toFixed(2)}×`).join(" ")}`,
  );
  report(
    "  RR with 1M entries / without",
    `${(loaded / base).toFixed(2)}×`,
    "≥ 0.95×",
    loaded / base >= 0.95,
  );
  // Floods into the full table while the RR flow runs; the idle connections' entries wait.
  let first = fill;
  console.log(
    `floods of new flows from one pod into the full table; the keep pod's ${IDLE + LIVE} idle ` +
      `echo connections have ${full.byPort[ECHO]} entries (both ends), its RR flow ${
        full.byPort[RR]
      }`,
  );
  for (const flood of FLOODS) {
    const was = countFlows(b.ctMap, keep.ipv4, [ECHO, RR]);
    const running = b.rr(keep, server, 2);
    await sleep(300);
    fillConntrack(b.ctMap, { epId: flooder.id, first, count: flood, dst });
    first += flood;
    const during = await running;
    const now = countFlows(b.ctMap, keep.ipv4, [ECHO, RR]);
    console.log(
      `  flood of ${n(flood).padStart(9)}: idle echo entries ${was.byPort[ECHO]} → ` +
        `${now.byPort[ECHO]} (${was.byPort[ECHO]! - now.byPort[ECHO]!} evicted), active RR flow ` +
        `${was.byPort[RR]} → ${now.byPort[RR]} (${Math.round(during)} RR/s during it)`,
    );
  }
  let pass = 0;
  for (let c = 0; c < IDLE; c++) if (await client.send(`idle${c}`, "after-flood", 1000)) pass++;
  report(
    "idle connections passing data after the floods",
    `${pass}/${IDLE}`,
    `${IDLE}/${IDLE}`,
    pass === IDLE,
  );
}

export async function main(args: string[]): Promise<void> {
  const flags = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      pods: { type: "string" },
      parallel: { type: "string", default: "3" },
      "agent-log": { type: "string" },
      // One JSON line per ADD with the time of each stage (see AddTrace).
      trace: { type: "string" },
      // Phases 1 and 2 only (while iterating on ADD and restart times).
      "no-conntrack": { type: "boolean", default: false },
      // Seconds of background CPU measured with no ADD running, before and after the ADDs.
      idle: { type: "string", default: "0" },
    },
  });
  const n = Number(flags.values.pods ?? (flags.values.quick ? 100 : 1000));
  const parallel = Number(flags.values.parallel);
  for (const [k, v] of [["pods", n], ["parallel", parallel]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`Invalid --${k} "${v}": expected a whole number`);
    }
  }
  if (Deno.uid() !== 0) throw new Error("The endpoints bench needs root (netns, bpffs, tc)");
  const started = performance.now();
  const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
  console.log(`bench endpoints: ${n} pods on one node; load average at start ${load}`);
  const lab = await Lab.create();
  let agent: BenchAgent | undefined;
  try {
    const node = await lab.addNode("node");
    agent = new BenchAgent(lab, node, [
      ...["--pod-cidr", "10.200.0.0/20", "--pod-cidr-v6", "fd00:200::/64"],
      ...["--bpf-ct-max", String(CT_MAX)],
    ], flags.values["agent-log"]);
    progress("starting the agent");
    await agent.start(120_000);
    const pol = await agent.api.call("PUT", "/v1/policy", POLICY);
    if (pol.status !== 200) throw new Error(`Policy import failed: ${JSON.stringify(pol.body)}`);
    const b = new Bench(lab, agent, node.bpffs);
    const server = (await b.add("server", "role=server")).pod;
    const keep = (await b.add("keep", "role=client,pod=keep")).pod;
    await lab.peer(server.netns).listen("tcp", ECHO);
    lab.spawn([
      "ip",
      "netns",
      "exec",
      server.netns,
      "taskset",
      "-c",
      "0",
      Deno.execPath(),
      "run",
      "-A",
      "--no-config",
      RR_SCRIPT,
      "server",
      String(RR),
    ]);
    const client = lab.peer(keep.netns);
    for (let c = 0; c < LIVE; c++) {
      if (!(await client.open(`live${c}`, server.ipv4, ECHO))) {
        throw new Error("Cannot open a long-lived connection");
      }
    }
    for (let c = 0; c < IDLE; c++) {
      if (!(await client.open(`idle${c}`, server.ipv4, ECHO))) {
        throw new Error("Cannot open an idle connection");
      }
    }
    const idle = Number(flags.values.idle);
    const idleBefore = idle > 0 ? `${b.pods.length} endpoints: ${await idleCpu(b, idle)}` : "";
    progress(`${n} ADDs`);
    // libbpf and libc stay open while the bench reads the kernel's maps after every ADD (opened
    // per lookup they cost ~10 ms each on the bench's one thread, while it should be reaping
    // the plugins and starting the next).
    acquire();
    try {
      await churn(b, n, parallel, flags.values.trace);
    } finally {
      release();
    }
    if (idle > 0) {
      const after = await idleCpu(b, idle);
      console.log(`background CPU over ${idle} s with no ADD running (% of one core)`);
      console.log(`  ${idleBefore}\n  ${b.pods.length} endpoints: ${after}`);
    }
    progress("restart");
    await restart(b, client, server);
    if (!flags.values["no-conntrack"]) {
      progress("conntrack");
      await conntrack(
        b,
        client,
        flags.values.quick ? { reps: 1, seconds: 1 } : { reps: 5, seconds: 2 },
      );
    }
  } catch (err) {
    if (agent?.log) console.error(agent.log);
    throw err;
  } finally {
    await agent?.close();
    await lab.close();
  }
  const end = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
  console.log(
    `${missed === 0 ? "every target met" : `${missed} target(s) MISSED`} in ` +
      `${Math.round((performance.now() - started) / 1000)} s; load average at the end ${end}`,
  );
}

if (import.meta.main) await main(Deno.args);
