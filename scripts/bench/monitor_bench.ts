// `deno task bench monitor [--seconds S]`: datapath events per second from the kernel to
// `cilia observe --follow -o json`, without loss, and where loss starts. A lab node runs the real
// agent; a producer (_event_producer.ts) runs the agent's own pinned `cil_to_container` on a denied
// TCP SYN with BPF_PROG_TEST_RUN at paced rates, so every run emits the kernel's real policy-verdict
// and drop events. The baseline, measured in the same run with the agent stopped, is the raw
// ring-buffer read rate (datapath/events.ts EventReader in this process, decoding each event to
// an object, no flows, no API; unpaced, so it also shows what the ring holds). Target:
// ≥ 200k events/s, and no loss at 100k/s. Each row also gives the CPU (user + system, /proc) the
// agent, the CLI and this reader spent per 100k events: a figure that moves less than rates when
// other jobs share the machine. Needs root. Progress to stderr, the table to stdout.
// `--rates 100000,0` picks the offered rates (0: unpaced). CILIA_BENCH_DENO runs the agent and the
// CLI with another Deno (e.g. a wrapper adding `--cpu-prof`) for profiling.
import { parseArgs } from "node:util";
import { cpuUsage } from "node:process";
import { EventReader } from "../../agent/datapath/events.ts";
import { CiliaNode, root, type TestPod } from "../../tests/cni/_fixture.ts";

const TARGET = 200_000, NO_LOSS_AT = 100_000;
/** Offered events per second; 0: as fast as the producer can. */
const RATES = [10_000, 25_000, 50_000, 100_000, 150_000, 200_000, 250_000, 0];
const BENCH_DENO = Deno.env.get("CILIA_BENCH_DENO");
const PRODUCER = new URL("./_event_producer.ts", import.meta.url).pathname;
const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`;

const progress = (msg: string) => console.error(`bench monitor: ${msg}`);
/** Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ). */
const TICKS_PER_SEC = 100;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const k = (n: number) => `${(n / 1000).toFixed(0)}k`;

interface Producer {
  prog: string;
  ifindex: number;
  packet: string;
}

/** A TCP SYN client:40000 → server:9090 (denied) as hex, Ethernet first. */
function synHex(src: string, dst: string): string {
  const b = new Uint8Array(54);
  b.set([0x08, 0x00], 12);
  b.set([0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0], 14);
  b.set(src.split(".").map(Number), 26);
  b.set(dst.split(".").map(Number), 30);
  b.set([0x9c, 0x40, 0x23, 0x82, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff], 34);
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

async function producerFor(n: CiliaNode, client: TestPod, server: TestPod): Promise<Producer> {
  const ifname = server.result.interfaces[0].name as string;
  const link = await n.lab.run(n.node.netns, ["ip", "-j", "link", "show", ifname]);
  const ifindex = (JSON.parse(link) as { ifindex: number }[])[0]!.ifindex;
  return { prog: await pinnedProgram(n), ifindex, packet: synHex(client.ipv4, server.ipv4) };
}

/** The agent's current `cil_to_container` pin (the newest object, after a restart too). */
async function pinnedProgram(n: CiliaNode): Promise<string> {
  let best: { path: string; mtime: number } | undefined;
  for await (const d of Deno.readDir(`${n.bpffs}/progs`)) {
    const path = `${n.bpffs}/progs/${d.name}/cil_to_container`;
    const mtime = (await Deno.stat(path).catch(() => undefined))?.mtime?.getTime();
    if (mtime !== undefined && (!best || mtime > best.mtime)) best = { path, mtime };
  }
  if (!best) throw new Error(`No pinned programs under "${n.bpffs}/progs"`);
  return best.path;
}

/** This process's CPU milliseconds (user + system) so far. */
function selfCpuMs(): number {
  const u = cpuUsage();
  return (u.user + u.system) / 1000;
}

/** CPU milliseconds (user + system) a process has used so far; 0 when it is gone. */
async function cpuMs(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`).catch(() => "");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11] ?? 0) + Number(f[12] ?? 0)) * 1000 / TICKS_PER_SEC;
}

/** The agent's process: the one whose command line names its socket (after nsenter and exec). */
async function agentPid(n: CiliaNode): Promise<number> {
  for await (const e of Deno.readDir("/proc")) {
    const pid = Number(e.name);
    if (!Number.isInteger(pid)) continue;
    const cmd = await Deno.readTextFile(`/proc/${pid}/cmdline`).catch(() => "");
    if (cmd.includes(`\0--socket\0${n.socket}\0`) && /deno\0run\0/.test(cmd)) return pid;
  }
  throw new Error(`No agent process with socket "${n.socket}"`);
}

/** Runs the producer in the node netns; returns its runs and duration. */
async function produce(n: CiliaNode, p: Producer, runsPerSec: number, runs: number) {
  const out = await new Deno.Command("nsenter", {
    args: [
      `--net=/run/netns/${n.node.netns}`,
      ...[Deno.execPath(), "run", "-A", "--no-config", PRODUCER],
      ...[p.prog, String(p.ifindex), p.packet, String(runsPerSec), String(runs)],
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (out.code !== 0) {
    throw new Error(`The producer failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return JSON.parse(text) as { runs: number; ms: number; retval: number };
}

/** Waits until `count()` reaches `until` or stops growing for `idleMs`. */
async function settle(count: () => number, idleMs = 400, until = Infinity): Promise<void> {
  let last = -1;
  while (count() !== last && count() < until) {
    last = count();
    await sleep(idleMs);
  }
}

const NL = 0x0a;

/**
 * Calls `onNewline` with the index of each newline of `c`, in order, looking at four bytes at a
 * time (a word with no newline byte is skipped whole): the reader counts lines of ~800 bytes at
 * 200k/s and must not take the CPU it measures.
 */
function forEachNewline(c: Uint8Array, onNewline: (at: number) => void): void {
  const head = (4 - (c.byteOffset & 3)) & 3; // bytes before the first whole word
  if (c.length < head + 4) {
    for (let i = 0; i < c.length; i++) if (c[i] === NL) onNewline(i);
    return;
  }
  for (let i = 0; i < head; i++) if (c[i] === NL) onNewline(i);
  const words = new Uint32Array(c.buffer, c.byteOffset + head, (c.length - head) >>> 2);
  for (let k = 0; k < words.length; k++) {
    const v = words[k]! ^ 0x0a0a0a0a; // a newline byte becomes a zero byte
    if (((v - 0x01010101) & ~v & 0x80808080) !== 0) {
      const b = head + (k << 2);
      for (let j = b; j < b + 4; j++) if (c[j] === NL) onNewline(j);
    }
  }
  for (let j = head + words.length * 4; j < c.length; j++) if (c[j] === NL) onNewline(j);
}

/** The raw ring-buffer read rate, agent stopped: events per run and events per second. */
async function baseline(n: CiliaNode, p: Producer, runs: number) {
  let got = 0, lost = 0, first = 0, last = 0;
  const reader = new EventReader(`${n.bpffs}/maps/cilia_events`, {
    onEvent: () => {
      const t = performance.now();
      if (got++ === 0) first = t;
      last = t;
    },
    onLost: (_cpu, c) => lost += c,
  });
  try {
    const r = await produce(n, p, 0, runs);
    await settle(() => got);
    return { perRun: (got + lost) / r.runs, got, lost, rate: got / ((last - first) / 1000) };
  } finally {
    reader.close();
  }
}

interface Row {
  offered: number;
  produced: number;
  delivered: number;
  expected: number;
  lost: number;
  /** As the agent counts them: events the kernel ring had no room for, and flows a slow follower lost. */
  lostPerf: number;
  lostSlow: number;
  /** Events the agent turned into flows. */
  ingested: number;
  /** What the follower was told (`lost_events` lines). */
  lostReported: number;
  rate: number;
  /**
   * CPU ms per 100k events while producing and draining: the agent per event ingested, the CLI
   * and this reader per flow delivered (a load-independent figure to compare changes by).
   */
  cpu: { agent: number; cli: number; reader: number };
}

/** One paced run through the agent to `cilia observe --follow -o json`. */
async function throughObserve(
  n: CiliaNode,
  p: Producer,
  o: { eventsPerSec: number; perRun: number; seconds: number },
): Promise<Row> {
  const followers = (await lostCounts(n)).followers;
  const child = new Deno.Command(`${root}bin/cilia`, {
    args: ["observe", "--follow", "-o", "json"],
    env: {
      CILIA_DENO: BENCH_DENO ?? Deno.execPath(),
      CILIA_HOST: `unix://${n.socket}`,
      NO_COLOR: "1",
    },
    stdout: "piped",
    stderr: "null",
  }).spawn();
  let flows = 0, lostLines = 0, first = 0, last = 0;
  // Counted on the bytes, no text per flow line: the reader must not take the CPU it measures.
  const F = 0x66, dec = new TextDecoder(); // `{"f…`: a flow line
  const line = (head: Uint8Array) => {
    const text = dec.decode(head);
    if (text.startsWith('{"lost_events"')) {
      lostLines += Number(/"num_events_lost":(\d+)/.exec(text)?.[1] ?? 0);
    } else if (text.startsWith('{"flow"') && flows++ === 0) first = performance.now();
  };
  let carry: number[] | undefined; // the start of a line that began in an earlier chunk
  const reading = (async () => {
    // reads into one reused buffer (no new 64 KiB chunk per read)
    const reader = child.stdout.getReader({ mode: "byob" });
    let buf = new ArrayBuffer(1 << 20);
    for (;;) {
      const { value: chunk, done } = await reader.read(new Uint8Array(buf));
      if (done || !chunk) break;
      buf = chunk.buffer;
      let at = 0; // where the current line starts in this chunk
      forEachNewline(chunk, (nl) => {
        if (carry) {
          for (let i = 0; i < nl && carry.length < 200; i++) carry.push(chunk[i]!);
          line(new Uint8Array(carry));
          carry = undefined;
        } else if (nl - at > 2 && chunk[at + 2] === F) {
          if (flows++ === 0) first = performance.now();
        } else line(chunk.subarray(at, nl));
        at = nl + 1;
      });
      if (carry) {
        for (let i = 0; i < chunk.length && carry.length < 200; i++) carry.push(chunk[i]!);
      } else if (at < chunk.length) {
        carry = [...chunk.subarray(at, Math.min(chunk.length, at + 200))];
      }
      last = performance.now();
    }
  })();
  // the follower connects (a busy machine may take a while to start the CLI)
  for (let i = 0; i < 100 && (await lostCounts(n)).followers <= followers; i++) await sleep(100);
  const before = await lostCounts(n);
  const pids = { agent: await agentPid(n), cli: child.pid };
  const cpu0 = { agent: await cpuMs(pids.agent), cli: await cpuMs(pids.cli), reader: selfCpuMs() };
  const runsPerSec = o.eventsPerSec / o.perRun;
  const runs = Math.round((o.eventsPerSec > 0 ? runsPerSec : 150_000) * o.seconds);
  const r = await produce(n, p, runsPerSec, runs);
  const expected = Math.round(r.runs * o.perRun);
  // the stream drains (a busy machine may pause it: up to 2 s without progress)
  await settle(() => flows + lostLines, 2000, expected);
  const after = await lostCounts(n);
  const per100k = (ms: number, events: number) => ms * 100_000 / Math.max(1, events);
  const cpu = {
    agent: per100k(await cpuMs(pids.agent) - cpu0.agent, after.seen - before.seen),
    cli: per100k(await cpuMs(pids.cli) - cpu0.cli, flows),
    reader: per100k(selfCpuMs() - cpu0.reader, flows),
  };
  child.kill("SIGINT");
  await reading;
  await child.status;
  return {
    offered: o.eventsPerSec,
    produced: expected / (r.ms / 1000),
    delivered: flows,
    expected,
    lost: expected - flows,
    lostPerf: after.perf - before.perf,
    lostSlow: after.slow - before.slow,
    ingested: after.seen - before.seen,
    lostReported: lostLines,
    rate: flows / ((last - first) / 1000),
    cpu,
  };
}

/** The agent's counters: kernel ring overruns, slow followers, events seen and live followers. */
async function lostCounts(n: CiliaNode) {
  const { stats } = await n.flows({ last: "0" });
  const s = stats as {
    lost: { perf: number; slowReaders: number };
    buffer: { seen: number };
    followers: number;
  };
  return {
    perf: s.lost.perf,
    slow: s.lost.slowReaders,
    seen: s.buffer.seen,
    followers: s.followers,
  };
}

function table(rows: Row[], base: number): string {
  const head = [
    "offered ev/s",
    "produced ev/s",
    "delivered",
    "loss",
    "ingested",
    "ring lost",
    "slow-reader lost",
    "told",
    "unexplained",
    "ev/s to observe",
    "CPU ms/100k ev: agent, CLI, reader",
  ];
  const body = rows.map((r) => [
    r.offered > 0 ? k(r.offered) : "max",
    k(r.produced),
    `${r.delivered}/${r.expected}`,
    `${(100 * r.lost / r.expected).toFixed(2)}%`,
    String(r.ingested),
    String(r.lostPerf),
    String(r.lostSlow),
    String(r.lostReported),
    String(r.expected - r.delivered - r.lostPerf - r.lostSlow),
    `${k(r.rate)} (${(r.rate / base).toFixed(2)}× baseline)`,
    `${r.cpu.agent.toFixed(0)}, ${r.cpu.cli.toFixed(0)}, ${r.cpu.reader.toFixed(0)}`,
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => x.padStart(w[i]!)).join("  ");
  return [line(head), line(w.map((x) => "-".repeat(x))), ...body.map(line)].join("\n");
}

export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { seconds: { type: "string", default: "2" }, rates: { type: "string" } },
  });
  const seconds = Number(values.seconds);
  const rates = values.rates ? values.rates.split(",").map(Number) : RATES;
  if (Deno.uid() !== 0) throw new Error("The monitor bench needs root (netns, bpffs, tc)");
  progress("starting a lab node with the agent, two pods and a deny policy");
  const n = await CiliaNode.create(BENCH_DENO ? { agentEnv: { CILIA_DENO: BENCH_DENO } } : {});
  try {
    const client = await n.addPod("client", { app: "client" });
    const server = await n.addPod("server", { app: "server" });
    await n.policy(POLICY);
    const p = await producerFor(n, client, server);
    await n.stopAgent();
    const base = await baseline(n, p, 150_000);
    progress(
      `baseline (agent stopped, raw ring-buffer read): ${k(base.rate)} ev/s, ` +
        `${base.perRun} events per run, ${base.lost} lost`,
    );
    await n.startAgent();
    p.prog = await pinnedProgram(n); // a restart may load a newer object
    const rows: Row[] = [];
    for (const eventsPerSec of rates) {
      const row = await throughObserve(n, p, { eventsPerSec, perRun: base.perRun, seconds });
      progress(
        `${eventsPerSec > 0 ? k(eventsPerSec) : "max"}: ${row.delivered}/${row.expected} ` +
          `delivered, ${row.lost} lost, ${k(row.rate)} ev/s`,
      );
      rows.push(row);
    }
    console.log(table(rows, base.rate));
    const lossless = rows.filter((r) => r.lost === 0);
    const best = Math.max(0, ...lossless.map((r) => Math.min(r.rate, r.produced)));
    const firstLoss = rows.find((r) => r.lost > 0);
    const at100 = rows.find((r) => r.offered === NO_LOSS_AT);
    console.log(
      `baseline: raw ring-buffer read without the agent ${k(base.rate)} ev/s (${base.lost} lost)`,
    );
    console.log(
      `highest rate without loss: ${k(best)} ev/s; loss starts ${
        firstLoss
          ? `at ${firstLoss.offered > 0 ? k(firstLoss.offered) : "max"} offered`
          : "nowhere measured"
      }`,
    );
    console.log(
      `target ≥ ${k(TARGET)} ev/s without loss: ${best >= TARGET ? "MET" : "MISSED"} ` +
        `(${k(best)} ev/s)`,
    );
    console.log(
      `target: no loss at ${k(NO_LOSS_AT)}/s: ${
        !at100 ? "not measured" : at100.lost === 0 ? "MET" : "MISSED"
      } (${at100?.lost ?? "-"} lost)`,
    );
  } finally {
    if (BENCH_DENO) await n.stopAgent(); // SIGTERM: a profiling agent writes its profile
    await n.close();
  }
}

if (import.meta.main) await main(Deno.args);
