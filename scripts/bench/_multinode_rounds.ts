// The measuring half of `bench multinode` (multinode_bench.ts): the bench servers in a path's
// server netns, one iperf3 throughput run and one request/response run (_rr.ts) from its client,
// and the rounds that alternate the setups and pair the targeted ones with a run of the bare
// underlay. It builds no lab and judges no target.
import type { Lab } from "../../tests/helpers/netns.ts";

const RR_SCRIPT = new URL("./_rr.ts", import.meta.url).pathname;
export const IPERF_PORT = 5201, RR_PORT = 5202;
const CPU = { rr: 0, iperfClient: 0, iperfServer: navigator.hardwareConcurrency > 1 ? 1 : 0 };
/**
 * RR client and server run SCHED_FIFO: the other work on a loaded machine waits, not them. Not
 * iperf3: its client polls without sleeping, so on the server's CPU it starves it (a 2 s run
 * did not end in 80 s), and FIFO on both CPUs would starve everything else, softirqs included.
 */
const RR_PRIO = ["chrt", "-f", "50"];

const progress = (msg: string) => console.error(`bench multinode: ${msg}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The median (the mean of the middle two for an even count). */
export const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
/** A client and a server netns on two different nodes, with the bench servers started. */
export interface Path {
  name: string;
  lab: Lab;
  client: string;
  server: string;
  serverIp: string;
  /** Before and after each measurement of this path (the A/B row's datapath switch). */
  around?: (on: boolean) => Promise<void>;
}

export async function startServers(p: Path): Promise<void> {
  const pin = (cpu: number) => ["ip", "netns", "exec", p.server, "taskset", "-c", String(cpu)];
  p.lab.spawn([...pin(CPU.iperfServer), "iperf3", "-s", "-p", String(IPERF_PORT)]);
  p.lab.spawn([
    ...pin(CPU.rr),
    ...RR_PRIO,
    ...[Deno.execPath(), "run", "-A", "--no-config", RR_SCRIPT, "server", String(RR_PORT)],
  ]);
  for (let i = 0; i < 100; i++) {
    const out = await p.lab.run(p.server, ["ss", "-Htln"]);
    if ([IPERF_PORT, RR_PORT].every((port) => new RegExp(`:${port}\\s`).test(out))) return;
    await sleep(50);
  }
  throw new Error(`The bench servers in "${p.server}" did not start listening`);
}

async function throughput(p: Path, seconds: number): Promise<number> {
  const out = await p.lab.run(p.client, [
    ...["taskset", "-c", String(CPU.iperfClient), "iperf3", "-c", p.serverIp],
    ...["-p", String(IPERF_PORT), "-t", String(seconds), "-J"],
  ]);
  const j = JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } };
  return j.end.sum_received.bits_per_second / 1e9;
}

/**
 * run_time_ns and run_cnt of every loaded program named cil_*, summed by name (both nodes' and
 * both clusters' copies: only the measured path's run while it is measured), or undefined with
 * kernel.bpf_stats_enabled=0 (a machine-wide switch the bench leaves as it is).
 */
async function bpfStats(): Promise<Map<string, { ns: number; runs: number }> | undefined> {
  const on = await Deno.readTextFile("/proc/sys/kernel/bpf_stats_enabled").catch(() => "0");
  if (on.trim() !== "1") return undefined;
  const o = await new Deno.Command("bpftool", { args: ["-j", "prog", "show"], stderr: "null" })
    .output();
  const progs = JSON.parse(new TextDecoder().decode(o.stdout)) as {
    name?: string;
    run_time_ns?: number;
    run_cnt?: number;
  }[];
  const out = new Map<string, { ns: number; runs: number }>();
  for (const p of progs) {
    if (!p.name?.startsWith("cil_") || p.run_time_ns === undefined) continue;
    const t = out.get(p.name) ?? { ns: 0, runs: 0 };
    out.set(p.name, { ns: t.ns + p.run_time_ns, runs: t.runs + (p.run_cnt ?? 0) });
  }
  return out;
}

/** Per program: ns and runs per round trip between two bpfStats() snapshots. */
export type ProgCost = Map<string, { ns: number; runs: number }>;
function perRoundTrip(
  a: Map<string, { ns: number; runs: number }>,
  b: Map<string, { ns: number; runs: number }>,
  roundTrips: number,
): ProgCost {
  const out: ProgCost = new Map();
  for (const [name, t] of b) {
    const f = a.get(name) ?? { ns: 0, runs: 0 };
    if (t.runs === f.runs) continue;
    out.set(name, { ns: (t.ns - f.ns) / roundTrips, runs: (t.runs - f.runs) / roundTrips });
  }
  return out;
}

async function requestResponse(p: Path, seconds: number): Promise<number> {
  const out = await p.lab.run(p.client, [
    ...["taskset", "-c", String(CPU.rr), ...RR_PRIO],
    ...[Deno.execPath(), "run", "-A", "--no-config", RR_SCRIPT],
    ...["client", p.serverIp, String(RR_PORT), String(seconds)],
  ]);
  return (JSON.parse(out) as { perSec: number }).perSec;
}

/**
 * `rounds` rounds over paths (paths[0] is the bare underlay): each round runs every other path
 * once, in an order rotated round by round; a targeted path runs right next to a run of the
 * bare underlay (before it in even rounds, after it in odd ones), and its round's ratio is
 * against that run, so a load that changes within seconds cancels out; the other paths' ratios
 * are against the mean of the round's bare runs. Per path: every figure and every round's ratio.
 */
export async function measureRounds(
  paths: Path[],
  o: { seconds: number; rrSeconds: number; rounds: number },
  targeted: Path[],
) {
  const per = () => paths.map((): number[] => []);
  const out = {
    gbps: per(),
    rr: per(),
    gbpsRatio: per(),
    rrRatio: per(),
    /** Per path and round, with kernel.bpf_stats_enabled=1: cilia's programs per round trip. */
    progs: paths.map((): ProgCost[] => []),
  };
  const measure = async (i: number, round: number): Promise<[number, number]> => {
    const p = paths[i]!;
    await p.around?.(true);
    try {
      out.gbps[i]!.push(await throughput(p, o.seconds));
      const before = await bpfStats();
      const rr = await requestResponse(p, o.rrSeconds);
      const after = before && await bpfStats();
      out.rr[i]!.push(rr);
      if (before && after) out.progs[i]!.push(perRoundTrip(before, after, rr * o.rrSeconds));
    } finally {
      await p.around?.(false);
    }
    const x: [number, number] = [out.gbps[i]!.at(-1)!, out.rr[i]!.at(-1)!];
    progress(
      `${p.name} (${round + 1}/${o.rounds}): ${x[0].toFixed(2)} Gbit/s, ${Math.round(x[1])} RR/s`,
    );
    return x;
  };
  const ratio = (i: number, x: [number, number], b: [number, number]) => {
    out.gbpsRatio[i]!.push(x[0] / b[0]);
    out.rrRatio[i]!.push(x[1] / b[1]);
  };
  for (let round = 0; round < o.rounds; round++) {
    const others = paths.slice(1).map((_, k) => 1 + (k + round) % (paths.length - 1));
    const bare: [number, number][] = [], rest: [number, [number, number]][] = [];
    for (const i of others) {
      if (!targeted.includes(paths[i]!)) {
        rest.push([i, await measure(i, round)]);
        continue;
      }
      const pair = round % 2 === 0
        ? [await measure(0, round), await measure(i, round)]
        : [await measure(i, round), await measure(0, round)].reverse();
      bare.push(pair[0]!);
      ratio(i, pair[1]!, pair[0]!);
    }
    const mean = (k: 0 | 1) => bare.reduce((a, b) => a + b[k], 0) / bare.length;
    for (const [i, x] of rest) ratio(i, x, [mean(0), mean(1)]);
  }
  return out;
}
