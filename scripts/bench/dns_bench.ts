// `deno task bench dns [--rate Q] [--turns N] [--duration S] [--trace DIR] [--codec]`: DNS queries
// through cilia's DNS proxy against the same queries straight to the same dnsmasq, in one lab node
// with an external host (tests/cni/_fixture.ts). dnsmasq on the external host answers
// api.example.com itself on two addresses: 203.0.113.10, which a DNS rule covers (the datapath
// redirects the queries to the agent's proxy, which judges, forwards, learns and answers), and
// 203.0.113.11, which an L3/L4 rule allows (the queries go straight through the datapath: the
// baseline). A client pod sends UDP A queries at a paced rate (default 5k q/s) with a small Deno
// client in its own process (_dns_load.ts; it and dnsmasq at nice -10, the same for both sides, and
// the bench's session at nice -10 as a group where the kernel groups tasks by session),
// after a short warm-up, in several turns (default 5) of 1 s to each address, alternating between
// the two addresses every 250 ms within each turn, so both are measured by the same client over the
// same stretch of time. Like with like: a query never answered counts as lost on either side, and
// p50/p99 are taken over every query sent to that address (a lost one ranks slowest; more than 1%
// lost makes p99 "lost"); the client's own CPU time and how far its sends fell behind the pace are
// printed, so a client that cannot keep up shows, as is the agent's CPU per proxied query (and its
// DNS Worker thread's, from /proc). Prints per turn the load average and both sides'
// p50/p99 (round trips to the answer's arrival in the client's socket, the kernel's time stamp),
// the added p50/p99 (proxied minus direct), and their median over the turns, which is judged
// against issue 11's target (MISSED with the figure when missed; a turn whose direct p99 is lost
// counts as missed), with the pooled figures (and the client's read times) beside it. `--trace
// DIR`: the proxy's Worker and the client record each query's stage times, and the breakdown of the
// proxied ones (slowest 1%) is printed (_dns_trace_report.ts). `--rate 1000,2500,5000`: each rate
// in turn. Needs root and dnsmasq; every netns and process is removed. `--codec`: no lab; what
// reading a query and its answer costs (µs and bytes allocated per query), the proxy's in-place
// reader against the previous decode by npm dns-packet, in one process (_dns_codec.ts).
import { parseArgs } from "node:util";
import { CiliaNode } from "../../tests/cni/_fixture.ts";
import type { LoadFigures, LoadResult } from "./_dns_load.ts";
import { printTrace } from "./_dns_trace_report.ts";

/** Issue 11's target: the proxy adds less than 1 ms at p99 at 5k queries/s. */
export const TARGET = { addedP99Ms: 1.0, rate: 5000 };

const DNS_IP = "203.0.113.10";
/** The same dnsmasq on an address no DNS rule covers: the baseline. */
const DIRECT_IP = "203.0.113.11";
const NAME = "api.example.com";
const LOAD = new URL("./_dns_load.ts", import.meta.url).pathname;
const progress = (msg: string) => console.error(`bench dns: ${msg}`);

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchName: ${NAME}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toCIDR: [${DNS_IP}/32]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*"}]}
  - toCIDR: [${DIRECT_IP}/32]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`;

async function waitAnswer(n: CiliaNode, netns: string, ip: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const r = await n.lab.exec(netns, ["dig", "+time=1", "+tries=1", `@${ip}`, NAME, "A"]);
    if (/status: NOERROR/.test(r.stdout)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`dnsmasq at "${ip}" does not answer "${NAME}" from the client pod`);
}

/** The fields of a /proc stat line after the command (f[0] is the state, field 3). */
const statFields = (stat: string) => stat.slice(stat.lastIndexOf(")") + 2).split(" ");
/** utime, stime of stat fields in seconds (ticks of USER_HZ 100). */
const cpuOf = (f: string[]): [number, number] => [Number(f[11]) / 100, Number(f[12]) / 100];

/**
 * CPU seconds [user, system] of the agent serving `socket`, and of its DNS Worker thread (the
 * one in SCHED_FIFO), from /proc (NaN: not found).
 */
async function agentCpu(socket: string): Promise<[number, number, number, number]> {
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmd = await Deno.readTextFile(`/proc/${e.name}/cmdline`);
      if (!cmd.includes("agent/main.ts") || !cmd.includes(socket)) continue;
      const all = cpuOf(statFields(await Deno.readTextFile(`/proc/${e.name}/stat`)));
      let worker: [number, number] = [NaN, NaN];
      for await (const t of Deno.readDir(`/proc/${e.name}/task`)) {
        const f = statFields(await Deno.readTextFile(`/proc/${e.name}/task/${t.name}/stat`));
        if (f[38] === "1") worker = cpuOf(f); // policy (field 41): SCHED_FIFO
      }
      return [...all, ...worker];
    } catch { /* gone */ }
  }
  return [NaN, NaN, NaN, NaN];
}

const loadAverage = async () =>
  (await Deno.readTextFile("/proc/loadavg").catch(() => "?")).split(" ").slice(0, 3).join(" ");

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      rate: { type: "string", default: String(TARGET.rate) },
      duration: { type: "string", default: "1" },
      turns: { type: "string", default: "5" },
      trace: { type: "string" },
      codec: { type: "boolean", default: false },
    },
  });
  if (values.codec) return await codec();
  const rates = values.rate.split(",").map(Number);
  const dur = Number(values.duration), turns = Number(values.turns);
  if (
    rates.some((r) => !(r > 0 && r * dur * 2 * turns <= 60_000)) ||
    !(Number.isInteger(turns) && turns >= 1 && turns <= 20) || !(dur > 0 && dur <= 6)
  ) {
    throw new RangeError(
      `Invalid arguments: --rate "${values.rate}" (q/s, comma separated), --turns ` +
        `"${values.turns}" (1–20), --duration "${values.duration}" (seconds to each address per ` +
        `turn, at most 6; rate × duration × turns at most 30,000 queries to each address)`,
    );
  }
  const trace = values.trace;
  if (trace !== undefined) await Deno.mkdir(trace, { recursive: true });
  const restore = await raiseSession();
  try {
    await measure(rates, { dur, turns, trace });
  } finally {
    await restore();
  }
  if (trace !== undefined) printTrace(trace, DNS_IP, 1);
}

const AUTOGROUP = "/proc/self/autogroup";

/**
 * With the kernel's autogroups (sched_autogroup_enabled, on here) a nice value counts only against
 * the processes of the same session: dnsmasq and the client at nice -10 still shared the CPUs
 * evenly with each other session (other jobs on the node) and starved under load: dnsmasq's
 * sockets overflowed (RcvbufErrors +733 in one run at load 11), and over 5 runs each, alternated
 * at load 5–8 (3 Dec), 0–872 direct queries were lost a run (524 at the median) against 0–88 (0)
 * with the session at nice -10, the client's sends 18–200 ms behind the pace at p99 against 12–26.
 * So the session running the bench (dnsmasq, the client, the agent: both sides alike) gets nice
 * -10 as a group for the run, put back after. Best effort: returns what puts it back.
 */
async function raiseSession(): Promise<() => Promise<void>> {
  const before = /nice (-?\d+)/.exec(await Deno.readTextFile(AUTOGROUP).catch(() => ""))?.[1];
  if (before === undefined) return async () => {};
  const ok = await Deno.writeTextFile(AUTOGROUP, "-10").then(() => true, () => false);
  if (!ok) progress(`cannot give the session nice -10 (${AUTOGROUP}): nice counts in it only`);
  return async () => {
    if (ok) await Deno.writeTextFile(AUTOGROUP, before).catch(() => {});
  };
}

/** `--codec`: _dns_codec.ts in a process of its own (a young generation no GC runs in). */
async function codec(): Promise<void> {
  const flags = "--expose-gc,--min-semi-space-size=64,--max-semi-space-size=64";
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `--v8-flags=${flags}`,
      new URL("./_dns_codec.ts", import.meta.url).pathname,
    ],
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`_dns_codec.ts exited with ${out.code}`);
  const r = JSON.parse(new TextDecoder().decode(out.stdout)) as Record<
    string,
    Record<string, { us: number; bytes: number; gcFree: boolean }>
  >;
  console.log(`parseQuery + parseAnswer per query; load average ${await loadAverage()}`);
  for (const [shape, codecs] of Object.entries(r)) {
    for (const [name, f] of Object.entries(codecs)) {
      console.log(
        `${shape.padEnd(24)} ${name.padEnd(11)} ${f.us.toFixed(2).padStart(6)} µs  ` +
          `${f.bytes.toFixed(0).padStart(5)} bytes allocated` +
          (f.gcFree ? "" : " (a GC ran: not exact)"),
      );
    }
  }
}

async function measure(
  rates: number[],
  o: { dur: number; turns: number; trace: string | undefined },
): Promise<void> {
  const { dur, turns, trace } = o;
  // CILIA_BENCH_AGENT_DENO: another Deno for the agent (a wrapper adding V8 flags such as
  // --trace-gc; V8 prints to stdout, which the fixture discards: the wrapper must redirect it).
  const agentDeno = Deno.env.get("CILIA_BENCH_AGENT_DENO");
  await using n = await CiliaNode.create({
    external: true,
    agentEnv: {
      ...(trace !== undefined ? { CILIA_DNS_TRACE: `${trace}/worker.jsonl` } : {}),
      ...(agentDeno ? { CILIA_DENO: agentDeno } : {}),
    },
  });
  const ext = n.ext!;
  await n.lab.run(ext.netns, ["ip", "addr", "add", `${DIRECT_IP}/24`, "dev", "eth0"]);
  // dnsmasq at nice -10, as the client: both sides share it, and other tenants of the node must
  // not stall it (at nice 0 under load 7 its answers on the proxied leg took 3.1 ms at p50,
  // 0.2 ms at nice -10; it lost queries to full socket buffers on both sides).
  n.lab.spawn([
    ...["nice", "-n", "-10", "ip", "netns", "exec", ext.netns, "dnsmasq", "--no-daemon"],
    "--port=53",
    ...[`--listen-address=${DNS_IP}`, `--listen-address=${DIRECT_IP}`, "--bind-interfaces"],
    ...["--no-resolv", "--no-hosts"],
    ...["--local-ttl=60", `--address=/${NAME}/${DNS_IP}`, "--dns-forward-max=1000"],
    `--pid-file=${n.lab.dir}/dnsmasq.pid`,
  ]);
  const client = await n.addPod("client", { app: "client" });
  await n.policy(POLICY);
  await waitAnswer(n, client.netns, DNS_IP);
  await waitAnswer(n, client.netns, DIRECT_IP);
  const loadBefore = await loadAverage();
  // The agent's own background work (event polls, timers), measured idle in this run, so the
  // per-query figure can also be given net of it.
  const idle0 = await agentCpu(n.socket), idleT0 = performance.now();
  await new Promise((r) => setTimeout(r, 2000));
  const idle1 = await agentCpu(n.socket);
  const idlePerS = (idle1[0] + idle1[1] - idle0[0] - idle0[1]) /
    ((performance.now() - idleT0) / 1000);
  const cpuBefore = await agentCpu(n.socket), loadT0 = performance.now();
  /** One run of all turns at `rate` (server 0 direct, 1 proxied). */
  const run = async (rate: number, i: number): Promise<LoadResult> => {
    progress(
      `${rate} q/s, ${turns} turns of ${dur} s to each of ${DIRECT_IP} and ${DNS_IP}`,
    );
    // The client at nice -10 (the same for both servers): its sends keep the pace on a busy node.
    const out = await n.lab.run(client.netns, [
      ...["nice", "-n", "-10"],
      ...(trace !== undefined ? ["env", `DNS_LOAD_TRACE=${trace}/client-${i}.json`] : []),
      ...[Deno.execPath(), "run", "-A", "--unstable-net", "--no-config", LOAD],
      ...[NAME, String(rate), String(dur), String(turns), DIRECT_IP, DNS_IP],
    ]);
    return JSON.parse(out.trim().split("\n").at(-1)!) as LoadResult;
  };
  const results = new Map<number, LoadResult>();
  for (const [i, rate] of rates.entries()) results.set(rate, await run(rate, i));
  // The Worker writes its trace when it idles (1 s without traffic).
  if (trace !== undefined) await new Promise((r) => setTimeout(r, 1500));
  const loadAfter = await loadAverage();
  const cpuAfter = await agentCpu(n.socket), loadS = (performance.now() - loadT0) / 1000;
  const [user, sys] = [cpuAfter[0] - cpuBefore[0], cpuAfter[1] - cpuBefore[1]];
  const [wUser, wSys] = [cpuAfter[2] - cpuBefore[2], cpuAfter[3] - cpuBefore[3]];
  const cpu = user + sys;
  const { entries } = (await n.call("GET", `/v1/fqdn/cache?name=${NAME}`)).body as {
    entries: unknown[];
  };
  if (entries.length === 0) throw new Error(`The queries did not go through the proxy: no record`);

  const ms = (x: number, w = 7) => (Number.isFinite(x) ? x.toFixed(3) : "lost").padStart(w);
  const row = (name: string, f: LoadFigures) =>
    `${name.padEnd(26)} ${f.qps.toFixed(0).padStart(6)} q/s  answered ${f.answered}/${f.sent}` +
    ` (lost ${f.lost})  p50 ${ms(f.p50Ms, 0)} ms  p99 ${ms(f.p99Ms, 0)} ms  max ${
      Number.isFinite(f.maxMs) ? f.maxMs.toFixed(1) : "lost"
    } ms  (read by the client: p50 ${ms(f.readP50Ms, 0)} ms  p99 ${ms(f.readP99Ms, 0)} ms)` +
    (f.nonNoError ? `  non-NOERROR ${f.nonNoError}` : "");
  console.log(
    `UDP A ${NAME}, paced, ${turns} turns of ${dur} s to each address (alternating every ` +
      `250 ms), client pod → dnsmasq; load average ${loadBefore} before, ${loadAfter} after; ` +
      `session ${(await Deno.readTextFile(AUTOGROUP).catch(() => "no autogroup")).trim()}`,
  );
  const proxiedQueries = rates.reduce((sum, r) => sum + r * (dur * turns + 0.1), 0);
  console.log(
    `agent CPU over all turns ${cpu.toFixed(2)} s, about ` +
      `${(cpu * 1e6 / proxiedQueries).toFixed(0)} µs per proxied query (warm-up included; ` +
      `user ${(user * 1e6 / proxiedQueries).toFixed(0)} µs, system ${
        (sys * 1e6 / proxiedQueries).toFixed(0)
      } µs); idle agent ${(idlePerS * 1000).toFixed(0)} ms CPU/s, so about ${
        ((cpu - idlePerS * loadS) * 1e6 / proxiedQueries).toFixed(0)
      } µs per proxied query net of it`,
  );
  const us = (x: number) => Number.isFinite(x) ? (x * 1e6 / proxiedQueries).toFixed(0) : "?";
  console.log(
    `of it the DNS Worker thread (SCHED_FIFO) ${us(wUser + wSys)} µs per proxied query (user ` +
      `${us(wUser)} µs, system ${us(wSys)} µs)`,
  );
  for (const rate of rates) printRate(rate, results.get(rate)!, { ms, row });
}

/** A turn's added latency: NaN when the direct side's is lost (not measurable: counts as missed). */
const added = (b: number, a: number) => Number.isFinite(a) ? b - a : NaN;
/** The median of turns, a NaN (not measurable) ranking above everything. */
const medianOfTurns = (xs: number[]) => median(xs.map((x) => Number.isNaN(x) ? Infinity : x));

function printRate(
  rate: number,
  r: LoadResult,
  f: { ms: (x: number, w?: number) => string; row: (name: string, f: LoadFigures) => string },
): void {
  const [a, b] = r.servers as [LoadFigures, LoadFigures];
  console.log(`-- ${rate} q/s`);
  console.log(
    `load generator: CPU ${r.clientCpuS.toFixed(2)} s over ${r.wallS.toFixed(1)} s (${
      (100 * r.clientCpuS / r.wallS).toFixed(0)
    }% of one core); sends behind the pace p50 ${r.sendLagP50Ms.toFixed(2)} ms, p99 ${
      r.sendLagP99Ms.toFixed(2)
    } ms, max ${r.sendLagMaxMs.toFixed(1)} ms`,
  );
  console.log(
    `turn  load   direct p50/p99 (lost)      proxied p50/p99 (lost)     added p50  added p99`,
  );
  const p50s: number[] = [], p99s: number[] = [];
  r.turns.forEach((t, i) => {
    const [d, p] = t as [LoadFigures, LoadFigures];
    const a50 = added(p.p50Ms, d.p50Ms), a99 = added(p.p99Ms, d.p99Ms);
    p50s.push(a50);
    p99s.push(a99);
    const side = (x: LoadFigures) => `${f.ms(x.p50Ms)}/${f.ms(x.p99Ms)} (${x.lost})`.padEnd(26);
    const show = (x: number) =>
      (Number.isNaN(x) ? "n/a" : Number.isFinite(x) ? x.toFixed(3) : "lost").padStart(9);
    console.log(
      `${String(i + 1).padStart(4)}  ${(r.turnLoad[i] ?? NaN).toFixed(2).padStart(5)}  ${side(d)} ${
        side(p)
      } ${show(a50)}  ${show(a99)}`,
    );
  });
  const m50 = medianOfTurns(p50s), m99 = medianOfTurns(p99s);
  console.log(`all turns ${f.row("(a) straight to dnsmasq", a)}`);
  console.log(`all turns ${f.row("(b) through the DNS proxy", b)}`);
  console.log(`proxy/direct q/s    ${(b.qps / a.qps).toFixed(2)}x`);
  console.log(`added p50           ${f.ms(m50, 0)} ms (median of ${p50s.length} turns)`);
  // The client must have kept the pace (sends at most 20 ms late at p99), else the rate and the
  // bursts were not what the figures say.
  const paced = r.sendLagP99Ms < 20;
  if (!paced) {
    console.log(`the load generator fell behind the pace: the figures are not at ${rate} q/s`);
  }
  const ok = m99 < TARGET.addedP99Ms && b.lost === 0 && rate >= TARGET.rate && paced;
  console.log(
    `added p99           ${f.ms(m99, 0)} ms (median of ${p99s.length} turns)  target < ` +
      `${TARGET.addedP99Ms} ms at ${TARGET.rate} q/s  ` +
      (ok ? "ok" : `MISSED (${f.ms(m99, 0)} ms at ${rate} q/s, ${b.lost} proxied queries lost)`),
  );
}
