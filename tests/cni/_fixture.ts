// A node that runs cilia for real, for the CNI and end-to-end tests: a lab node netns with its
// own bpffs, `bin/cilia-agent` started inside it the MACHINE.md §1 way (kernel datapath, Deno KV
// in the lab dir), and a CNI runtime harness that does what the spec says a runtime does: create
// a netns, exec `bin/cilia-cni` with CNI_COMMAND/CNI_CONTAINERID/CNI_NETNS/CNI_IFNAME/CNI_ARGS/
// CNI_PATH and the network configuration on stdin. Datapath events are read through the agent
// (`GET /v1/events`, the agent owns the perf buffer's one reader), flows through `GET /v1/flows`.
// close() kills the agent and removes every netns, mount and file.
import type { PacketEvent } from "../../agent/datapath/events.ts";
import { eventFromJson, type Flow, type MonitorLine, readLines } from "../../agent/monitor/mod.ts";
import { type External, Lab, type Node, type Peer } from "../helpers/netns.ts";
import { type Reply, SocketClient } from "../agent/_fixture.ts";

export const root = new URL("../../", import.meta.url).pathname;
export const CNI_BIN = `${root}bin/cilia-cni`;
export const POD_CIDR = "10.200.0.0/24";
export const POD_CIDR_V6 = "fd00:200::/64";
export const NETWORK = "cilia-net";

export interface CniRun {
  code: number;
  /** stdout parsed as JSON (undefined when empty). */
  // deno-lint-ignore no-explicit-any
  json: any;
  stdout: string;
  stderr: string;
  ms: number;
  /** Wall-clock epoch ms of the exec (comparable with the plugin's `CILIA_CNI_TIMING` marks). */
  startedAt: number;
}

export interface CniCall {
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: string;
  /** The network configuration (object or raw text); default the node's. */
  config?: Record<string, unknown> | string;
  /** Replaces the environment entirely (for tests of missing variables). */
  env?: Record<string, string>;
  /** Sets CILIA_CNI_TIMING=1: the plugin writes its timing marks to stderr. */
  timing?: boolean;
}

export interface TestPod {
  name: string;
  netns: string;
  containerId: string;
  ipv4: string;
  ipv6: string;
  // deno-lint-ignore no-explicit-any
  result: any;
}

const enc = new TextEncoder(), dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs the CNI plugin the way a runtime does. */
export async function execCni(command: string, call: CniCall, socket: string): Promise<CniRun> {
  const config = call.config ??
    { cniVersion: "1.0.0", name: NETWORK, type: "cilia-cni", agentSocket: socket };
  const env = call.env ?? {
    CNI_COMMAND: command,
    CNI_CONTAINERID: call.containerId ?? "",
    CNI_NETNS: call.netns ?? "",
    CNI_IFNAME: call.ifname ?? "eth0",
    CNI_ARGS: call.args ?? "",
    CNI_PATH: `${root}bin`,
    ...(call.timing ? { CILIA_CNI_TIMING: "1" } : {}),
  };
  const start = performance.now();
  const child = new Deno.Command(CNI_BIN, {
    env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", CILIA_DENO: Deno.execPath(), ...env },
    clearEnv: true,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(enc.encode(typeof config === "string" ? config : JSON.stringify(config)));
  await w.close();
  const out = await child.output();
  const stdout = dec.decode(out.stdout);
  return {
    code: out.code,
    json: stdout.trim() ? JSON.parse(stdout) : undefined,
    stdout,
    stderr: dec.decode(out.stderr),
    ms: performance.now() - start,
    startedAt: performance.timeOrigin + start,
  };
}

export class CiliaNode implements AsyncDisposable {
  readonly lab: Lab;
  readonly node: Node;
  readonly dir: string;
  readonly socket: string;
  readonly api: SocketClient;
  readonly ext: External | undefined;
  #agent: Deno.ChildProcess | undefined;
  #log = "";
  #drained: Promise<void> | undefined;
  #pods = 0;
  /** Extra environment for the agent process (e.g. a PATH with a fault-injecting bpftool). */
  agentEnv: Record<string, string> = {};
  /** Extra agent options (e.g. `["--l7-http-io", "worker"]`). */
  agentArgs: string[] = [];

  private constructor(lab: Lab, node: Node, ext: External | undefined) {
    this.lab = lab;
    this.node = node;
    this.ext = ext;
    this.dir = `${lab.dir}/agent`;
    this.socket = `${this.dir}/cilia.sock`;
    this.api = new SocketClient(this.socket);
  }

  /** A lab node (and an external host on 203.0.113.0/24 if asked) with a running agent. */
  static async create(
    opts: { external?: boolean; agentEnv?: Record<string, string>; agentArgs?: string[] } = {},
  ): Promise<CiliaNode> {
    const lab = await Lab.create();
    try {
      const node = await lab.addNode("node");
      const ext = opts.external ? await lab.addExternal(node, "ext") : undefined;
      const n = new CiliaNode(lab, node, ext);
      n.agentEnv = opts.agentEnv ?? {};
      n.agentArgs = opts.agentArgs ?? [];
      await Deno.mkdir(n.dir);
      await n.startAgent();
      return n;
    } catch (err) {
      await lab.close();
      throw err;
    }
  }

  get bpffs(): string {
    return `${this.node.bpffs}/cilia`;
  }

  /** The agent's log (JSON lines) so far. */
  get log(): string {
    return this.#log;
  }

  async startAgent(): Promise<void> {
    const argv = this.lab.nodeArgv(this.node, [
      `${root}bin/cilia-agent`,
      "--state-dir",
      `${this.dir}/state`,
      "--socket",
      this.socket,
      "--node-name",
      "node-1",
      "--pod-cidr",
      POD_CIDR,
      "--pod-cidr-v6",
      POD_CIDR_V6,
      "--lease-ttl",
      "5s",
      ...this.agentArgs,
    ]);
    const child = new Deno.Command(argv[0]!, {
      args: argv.slice(1),
      env: { CILIA_DENO: Deno.execPath(), ...this.agentEnv },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#agent = child;
    this.#drained = (async () => {
      for await (const chunk of child.stderr) this.#log += dec.decode(chunk);
    })();
    let exited: number | undefined;
    child.status.then((s) => exited = s.code);
    // Generous: a first start on a loaded machine transpiles the agent (a cold cache) slowly.
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (exited !== undefined) {
        await this.#drained;
        throw new Error(`The agent exited with ${exited} during startup:\n${this.#log}`);
      }
      try {
        if ((await this.api.call("GET", "/v1/healthz")).status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`The agent did not start:\n${this.#log}`);
      await sleep(50);
    }
  }

  /** Stops the agent with a signal; returns its exit code. */
  async stopAgent(signal: Deno.Signal = "SIGTERM"): Promise<number> {
    const child = this.#agent;
    if (!child) return 0;
    this.#agent = undefined;
    try {
      child.kill(signal);
    } catch { /* gone */ }
    const s = await child.status;
    await this.#drained;
    return s.code;
  }

  /** Runs the CNI plugin against this node's agent. */
  cni(command: string, call: CniCall = {}): Promise<CniRun> {
    return execCni(command, call, this.socket);
  }

  /** Creates a netns and adds it through CNI ADD; throws with the error object on failure. */
  async addPod(
    name: string,
    labels: Record<string, string>,
    opts: { namespace?: string; ifname?: string } = {},
  ): Promise<TestPod> {
    const netns = `${this.lab.prefix}${name}`;
    const r0 = await new Deno.Command("ip", { args: ["netns", "add", netns], stderr: "piped" })
      .output();
    if (r0.code !== 0) throw new Error(`Cannot create netns "${netns}"`);
    const containerId = `${name}-${++this.#pods}-${crypto.randomUUID().slice(0, 8)}`;
    const labelArg = Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(",");
    const args = [
      "IgnoreUnknown=1",
      `K8S_POD_NAME=${name}`,
      ...(opts.namespace ? [`K8S_POD_NAMESPACE=${opts.namespace}`] : []),
      ...(labelArg ? [`CILIA_LABELS=${labelArg}`] : []),
    ].join(";");
    const r = await this.cni("ADD", {
      containerId,
      netns: `/run/netns/${netns}`,
      ifname: opts.ifname ?? "eth0",
      args,
    });
    if (r.code !== 0) throw new Error(`CNI ADD of "${name}" failed: ${r.stdout}${r.stderr}`);
    const ips = (r.json.ips as { address: string }[]).map((i) => i.address.replace(/\/\d+$/, ""));
    return {
      name,
      netns,
      containerId,
      ipv4: ips.find((a) => !a.includes(":"))!,
      ipv6: ips.find((a) => a.includes(":"))!,
      result: r.json,
    };
  }

  delPod(pod: TestPod): Promise<CniRun> {
    return this.cni("DEL", { containerId: pod.containerId, netns: `/run/netns/${pod.netns}` });
  }

  /** Imports policy YAML through the live API (PUT /v1/policy); throws on a refusal. */
  async policy(yaml: string): Promise<void> {
    const r = await this.api.call("PUT", "/v1/policy", yaml);
    if (r.status !== 200) throw new Error(`Policy import failed: ${JSON.stringify(r.body)}`);
  }

  /** Deletes every policy (PUT /v1/policy/… all). */
  async clearPolicies(): Promise<void> {
    const r = await this.api.call("DELETE", "/v1/policy?all=true");
    if (r.status !== 200) throw new Error(`Policy delete failed: ${JSON.stringify(r.body)}`);
  }

  call(method: string, path: string, body?: unknown): Promise<Reply> {
    return this.api.call(method, path, body);
  }

  peer(netns: string): Peer {
    return this.lab.peer(netns);
  }

  /** True when a ping got its reply within timeoutSec. */
  ping(netns: string, ip: string, timeoutSec = 0.6): Promise<boolean> {
    return this.lab.ping(netns, ip, { timeoutSec });
  }

  /**
   * Runs action while reading datapath events; returns its result and the events seen until
   * `until` matched one or `timeoutMs` after the action.
   */
  async withEvents<T>(
    action: () => Promise<T>,
    opts: { until?: (e: PacketEvent) => boolean; timeoutMs?: number } = {},
  ): Promise<{ result: T; events: PacketEvent[] }> {
    const ac = new AbortController();
    const client = Deno.createHttpClient({ proxy: { transport: "unix", path: this.socket } });
    const events: PacketEvent[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    let result!: T;
    try {
      const res = await fetch("http://localhost/v1/events", {
        client,
        signal: ac.signal,
      } as RequestInit);
      if (!res.ok || !res.body) throw new Error(`GET /v1/events: HTTP ${res.status}`);
      const lines = readLines(res.body)[Symbol.asyncIterator]();
      result = await action();
      // Generous (every caller stops at `until`): a loaded machine delivers events late.
      timer = setTimeout(() => ac.abort(), opts.timeoutMs ?? 5000);
      try {
        for (;;) {
          const r = await lines.next();
          if (r.done) break;
          const m = JSON.parse(r.value) as MonitorLine;
          if (!("event" in m)) continue;
          const e = eventFromJson(m.event);
          events.push(e);
          if (opts.until?.(e)) break;
        }
      } catch (err) {
        if (!ac.signal.aborted) throw err;
      }
      await lines.return?.(undefined).catch(() => {});
    } finally {
      clearTimeout(timer);
      ac.abort();
      client.close();
    }
    return { result, events };
  }

  /** The agent's flows (GET /v1/flows) with query parameters (filters, `last`, `since`). */
  async flows(query: Record<string, string> = {}): Promise<{ flows: Flow[]; stats: unknown }> {
    const q = new URLSearchParams(query).toString();
    const client = Deno.createHttpClient({ proxy: { transport: "unix", path: this.socket } });
    let text: string;
    try {
      const r = await fetch(`http://localhost/v1/flows${q ? `?${q}` : ""}`, {
        client,
      } as RequestInit);
      text = await r.text();
      if (r.status !== 200) throw new Error(`GET /v1/flows: ${text}`);
    } finally {
      client.close();
    }
    const flows: Flow[] = [];
    let stats: unknown;
    for (const line of text.split("\n").filter(Boolean)) {
      const m = JSON.parse(line) as MonitorLine;
      if ("flow" in m) flows.push(m.flow);
      else if ("stats" in m) stats = m.stats;
    }
    return { flows, stats };
  }

  /** The agent's Prometheus metrics (GET /v1/metrics). */
  async metrics(): Promise<string> {
    return (await this.api.call("GET", "/v1/metrics")).body as string;
  }

  async close(): Promise<void> {
    await this.stopAgent("SIGKILL").catch(() => {});
    this.api.close();
    await this.lab.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** A drop event's essentials, for assertion messages. */
export function dropText(e: PacketEvent): string {
  return `${e.type} reason=${e.subtype} ${e.direction} ep=${e.epId} ` +
    `${e.srcIdentity}->${e.dstIdentity} proto=${e.proto} dport=${e.dport}`;
}
