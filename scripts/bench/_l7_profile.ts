// `bench l7 --profile`: measures the proxy's run and the node haproxy's run the same way, so the
// kernel time each spends per request can be compared (issue 10). During a measured wrk run it
// takes, for one process: each thread's user and system CPU (/proc/<pid>/task/*/stat), its system
// calls and context switches by type (`perf stat --per-thread` on syscall tracepoints), and the run
// time of every tc program attached in the lab node's netns (`kernel.bpf_stats_enabled` on for
// the run, `run_time_ns` / `run_cnt` from `bpftool prog show`). With `--perf-record DIR` it also
// writes `perf record -a -g` of the run to DIR/<name>.data. Figures are per request. It changes
// nothing in the lab; bpf_stats_enabled is restored afterwards.

const SYSCALLS = [
  "epoll_wait",
  "epoll_pwait",
  "epoll_ctl",
  "recvfrom",
  "sendto",
  "read",
  "write",
  "readv",
  "writev",
  "accept4",
  "connect",
  "close",
  "setsockopt",
];

export interface ThreadCpu {
  tid: number;
  comm: string;
  utime: number;
  stime: number;
}

export interface RunProfile {
  name: string;
  requests: number;
  /** The busiest thread's user and system µs per request, and the whole process's. */
  threads: { comm: string; userUs: number; sysUs: number }[];
  /** System calls (and context switches) per request, summed over the process's threads. */
  calls: Record<string, number>;
  /** The whole machine's CPU per request by /proc/stat class (µs), and its idle share. */
  machine: { userUs: number; sysUs: number; softirqUs: number; idle: number };
  /** ns per request spent in each tc program of the lab node (by program name). */
  bpf: Record<string, { nsPerReq: number; runsPerReq: number; nsPerRun: number }>;
}

async function threads(pid: number): Promise<ThreadCpu[]> {
  const out: ThreadCpu[] = [];
  for await (const e of Deno.readDir(`/proc/${pid}/task`)) {
    const stat = await Deno.readTextFile(`/proc/${pid}/task/${e.name}/stat`).catch(() => "");
    if (!stat) continue;
    const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    out.push({ tid: Number(e.name), comm, utime: Number(f[11]), stime: Number(f[12]) });
  }
  return out;
}

/** /proc/stat's cpu line: user, nice, system, idle, iowait, irq, softirq (clock ticks). */
async function cpuTicks(): Promise<number[]> {
  const line = (await Deno.readTextFile("/proc/stat")).split("\n")[0]!;
  return line.split(/\s+/).slice(1, 8).map(Number);
}

async function cmd(argv: string[]): Promise<string> {
  const r = await new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (r.code !== 0) {
    throw new Error(
      `"${argv.join(" ")}" exited with ${r.code}: ${new TextDecoder().decode(r.stderr)}`,
    );
  }
  return new TextDecoder().decode(r.stdout);
}

interface ProgStat {
  label: string;
  ns: number;
  cnt: number;
}

/** The tc programs attached in `netns`, by name, with their run time and count so far. */
async function bpfStats(netns: string): Promise<Map<number, ProgStat>> {
  const net = JSON.parse(await cmd(["ip", "netns", "exec", netns, "bpftool", "-j", "net", "show"]));
  const progs = JSON.parse(await cmd(["bpftool", "-j", "prog", "show"])) as {
    id: number;
    name?: string;
    run_time_ns?: number;
    run_cnt?: number;
  }[];
  const byId = new Map(progs.map((p) => [p.id, p]));
  const out = new Map<number, ProgStat>();
  for (const t of (net[0]?.tc ?? []) as { devname: string; kind: string; id: number }[]) {
    const p = byId.get(t.id); // (one program serves every endpoint's veth: keyed by program)
    const label = p?.name ?? `${t.devname}/${t.kind}`;
    out.set(t.id, { label, ns: p?.run_time_ns ?? 0, cnt: p?.run_cnt ?? 0 });
  }
  return out;
}

/** `perf stat` of the syscalls and context switches of `pid` for `seconds`, by event. */
async function perfStatCounts(pid: number, seconds: number): Promise<Record<string, number>> {
  const events = ["context-switches", ...SYSCALLS.map((s) => `syscalls:sys_enter_${s}`)];
  const r = await new Deno.Command("perf", {
    args: [
      "stat",
      "-x",
      ";",
      "-e",
      events.join(","),
      "-p",
      String(pid),
      "--",
      "sleep",
      String(seconds),
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  return parsePerfStat(new TextDecoder().decode(r.stderr));
}

/** Counts by event (syscalls by name) from `perf stat -x ";"` output; uncounted events left out. */
export function parsePerfStat(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const f = line.split(";");
    if (f.length < 3 || !/^\d+$/.test(f[0]!)) continue;
    out[f[2]!.replace("syscalls:sys_enter_", "")] = Number(f[0]);
  }
  return out;
}

/**
 * Profiles `pid` (and the lab's tc programs in `netns`) while `run()` runs; `seconds` is how long
 * the measured part of run() lasts (perf stat covers that long from its start). `requests(r)`
 * gives the request count of the run's result.
 */
export async function profileRun<T>(
  name: string,
  opts: { pid: number; netns: string; seconds: number; perfRecord?: string },
  run: () => Promise<T>,
  requests: (r: T) => number,
): Promise<{ result: T; profile: RunProfile }> {
  const stats0 = await Deno.readTextFile("/proc/sys/kernel/bpf_stats_enabled");
  await Deno.writeTextFile("/proc/sys/kernel/bpf_stats_enabled", "1");
  try {
    const t0 = await threads(opts.pid);
    const m0 = await cpuTicks();
    const b0 = await bpfStats(opts.netns);
    const perf = perfStatCounts(opts.pid, opts.seconds);
    const rec = opts.perfRecord
      ? cmd([
        "perf",
        "record",
        "-a",
        "-g",
        "-q",
        "-o",
        `${opts.perfRecord}/${name}.data`,
        "--",
        "sleep",
        String(opts.seconds),
      ])
      : Promise.resolve("");
    const result = await run();
    const t1 = await threads(opts.pid);
    const m1 = await cpuTicks();
    const b1 = await bpfStats(opts.netns);
    const calls = await perf;
    await rec;
    const n = requests(result);
    const tick = 1e6 / 100 / n; // µs per clock tick per request
    const before = new Map(t0.map((t) => [t.tid, t]));
    const ths = t1.map((t) => {
      const b = before.get(t.tid);
      return {
        comm: t.comm,
        userUs: (t.utime - (b?.utime ?? 0)) * tick,
        sysUs: (t.stime - (b?.stime ?? 0)) * tick,
      };
    }).filter((t) => t.userUs + t.sysUs > 0).sort((a, b) =>
      b.userUs + b.sysUs - a.userUs - a.sysUs
    );
    const bpf: RunProfile["bpf"] = {};
    for (const [id, s1] of b1) {
      const s0 = b0.get(id);
      const ns = s1.ns - (s0?.ns ?? 0), cnt = s1.cnt - (s0?.cnt ?? 0);
      if (cnt <= 0) continue;
      bpf[s1.label] = { nsPerReq: ns / n, runsPerReq: cnt / n, nsPerRun: ns / cnt };
    }
    const perReq: Record<string, number> = {};
    for (const [k, v] of Object.entries(calls)) if (v > 0) perReq[k] = v / n;
    const d = m1.map((v, i) => v - m0[i]!);
    const [user, nice, sys, idle, iowait, irq, softirq] = d as [
      number,
      number,
      number,
      number,
      number,
      number,
      number,
    ];
    const machine = {
      userUs: (user + nice) * tick,
      sysUs: sys * tick,
      softirqUs: (irq + softirq) * tick,
      idle: (idle + iowait) / d.reduce((a, b) => a + b, 0),
    };
    return { result, profile: { name, requests: n, threads: ths, calls: perReq, machine, bpf } };
  } finally {
    await Deno.writeTextFile("/proc/sys/kernel/bpf_stats_enabled", stats0.trim());
  }
}

/** Prints profiles side by side, per request. */
export function printProfiles(ps: RunProfile[]): void {
  for (const p of ps) {
    console.log(`profile ${p.name} (${p.requests} requests), per request:`);
    const top = p.threads.slice(0, 3).map((t) =>
      `${t.comm} ${t.userUs.toFixed(1)} user + ${t.sysUs.toFixed(1)} sys µs`
    );
    const all = p.threads.reduce((s, t) => [s[0]! + t.userUs, s[1]! + t.sysUs], [0, 0]);
    console.log(
      `  threads: ${top.join("; ")}; process ${all[0]!.toFixed(1)} + ${all[1]!.toFixed(1)} µs`,
    );
    const m = p.machine;
    console.log(
      `  machine: ${m.userUs.toFixed(1)} user + ${m.sysUs.toFixed(1)} sys + ${
        m.softirqUs.toFixed(1)
      } softirq µs, idle ${(100 * m.idle).toFixed(1)}%`,
    );
    console.log(
      `  calls: ${Object.entries(p.calls).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ")}`,
    );
    const bpf = Object.entries(p.bpf).sort((a, b) => b[1].nsPerReq - a[1].nsPerReq);
    const total = bpf.reduce((s, [, v]) => s + v.nsPerReq, 0);
    console.log(
      `  tc programs ${(total / 1000).toFixed(2)} µs: ` +
        bpf.map(([k, v]) =>
          `${k} ${v.nsPerReq.toFixed(0)} ns (${v.runsPerReq.toFixed(2)} runs × ${
            v.nsPerRun.toFixed(0)
          } ns)`
        ).join(", "),
    );
  }
}
