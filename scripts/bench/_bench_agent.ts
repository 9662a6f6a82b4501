// One `bin/cilia-agent` in a lab node for the endpoints bench: started with the flags a bench asks
// for (kernel datapath, Deno KV in the lab dir), its Deno process found for CPU time (/proc stat:
// user + system of the agent, and of the subprocesses it waited for), stopped with a signal and
// started again on the same state (a restart). Prints nothing; keeps the last 20 kB of the log
// (all of it, at info level, in a file when asked).
import type { Lab, Node } from "../../tests/helpers/netns.ts";
import { SocketClient } from "../../tests/agent/_fixture.ts";

const root = new URL("../../", import.meta.url).pathname;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux). */
const HZ = 100;

export interface CpuTimes {
  /** Seconds of user + system time of the agent process. */
  self: number;
  /** Seconds of user + system time of the subprocesses it ran and waited for (ip, tc, bpftool). */
  children: number;
}

/** The Deno process among `pid` and its descendants (the launch chain execs or forks). */
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

export class BenchAgent {
  readonly api: SocketClient;
  readonly #lab: Lab;
  readonly #node: Node;
  readonly #args: string[];
  #child: Deno.ChildProcess | undefined;
  #pid = 0;
  log = "";
  /** With a path: the agent logs at info level, and all of it is appended there. */
  readonly #logFile: string | undefined;

  constructor(lab: Lab, node: Node, args: string[], logFile?: string) {
    this.#lab = lab;
    this.#node = node;
    this.#args = args;
    this.#logFile = logFile;
    this.api = new SocketClient(`${lab.dir}/agent/cilia.sock`);
  }

  get socket(): string {
    return this.api.path;
  }

  /** Starts the agent; resolves once /v1/healthz answers 200. */
  async start(timeoutMs = 60_000): Promise<void> {
    const dir = `${this.#lab.dir}/agent`;
    await Deno.mkdir(dir, { recursive: true });
    const argv = this.#lab.nodeArgv(this.#node, [
      `${root}bin/cilia-agent`,
      ...["--state-dir", `${dir}/state`, "--socket", this.api.path, "--node-name", "node-1"],
      ...["--lease-ttl", "30s", "--log-level", this.#logFile ? "info" : "warn", ...this.#args],
    ]);
    const child = this.#child = new Deno.Command(argv[0]!, {
      args: argv.slice(1),
      // CILIA_BENCH_AGENT_DENO: another Deno (or a wrapper, e.g. one adding V8 profiling flags).
      env: { CILIA_DENO: Deno.env.get("CILIA_BENCH_AGENT_DENO") ?? Deno.execPath() },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    (async () => {
      for await (const c of child.stderr) {
        this.log = (this.log + new TextDecoder().decode(c)).slice(-20000);
        if (this.#logFile) await Deno.writeFile(this.#logFile, c, { append: true });
      }
    })();
    let exited: number | undefined;
    child.status.then((s) => exited = s.code);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (exited !== undefined) throw new Error(`The agent exited with ${exited}:\n${this.log}`);
      try {
        if ((await this.api.call("GET", "/v1/healthz")).status === 200) break;
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) throw new Error(`The agent did not start:\n${this.log}`);
      await sleep(20);
    }
    this.#pid = await denoPid(child.pid);
  }

  async stop(signal: Deno.Signal = "SIGTERM"): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (!child) return;
    try {
      child.kill(signal);
    } catch { /* gone */ }
    await child.status;
  }

  /**
   * CPU time so far (the current process; a restart starts from zero). `children` includes
   * the agent's live children (its command shells) and what they waited for.
   */
  async cpu(): Promise<CpuTimes> {
    const times = async (pid: number | string) => {
      const stat = await Deno.readTextFile(`/proc/${pid}/stat`).catch(() => "");
      if (!stat) return [0, 0, 0, 0];
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ").map(Number);
      // Fields 14-17 of stat(5) (utime, stime, cutime, cstime), here from field 3 on.
      return [f[11]!, f[12]!, f[13]!, f[14]!];
    };
    const own = await times(this.#pid);
    let children = own[2]! + own[3]!;
    const kids = await Deno.readTextFile(`/proc/${this.#pid}/task/${this.#pid}/children`)
      .catch(() => "");
    for (const k of kids.trim().split(/\s+/).filter(Boolean)) {
      children += (await times(k)).reduce((a, b) => a + b, 0);
    }
    return { self: (own[0]! + own[1]!) / HZ, children: children / HZ };
  }

  /** SIGTERM (a clean stop, which also writes a --cpu-prof profile), SIGKILL after 10 s. */
  async close(): Promise<void> {
    const child = this.#child;
    const timer = setTimeout(() => {
      try {
        child?.kill("SIGKILL");
      } catch { /* gone */ }
    }, 10_000);
    try {
      await this.stop("SIGTERM");
    } finally {
      clearTimeout(timer);
    }
    this.api.close();
  }
}
