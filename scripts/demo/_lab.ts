// The demo's world, made of network namespaces on this machine: a node (`ciliademo-node`, with
// its own bpffs), `bin/cilia-agent` running inside it the MACHINE.md §1 way on Deno KV, pods
// added through `bin/cilia-cni` exactly as a CNI runtime would, and an "external" host on
// 203.0.113.0/24 routed through the node. Everything lives under /run/ciliademo and the
// `ciliademo-` prefix; close() removes all of it, and sweep() removes what a killed demo left.
import { type Peer, PEER_SCRIPT, spawnPeer } from "../../tests/helpers/netns.ts";
import { execCniPlugin } from "../../cli/connectivity_lab.ts";
import { AgentClient } from "../../cli/live_client.ts";
import { execCommand } from "../../agent/sys/exec.ts";

export const PREFIX = "ciliademo-";
export const RUN_DIR = "/run/ciliademo";
export const NODE = `${PREFIX}node`;
export const EXT = `${PREFIX}ext`;
export const EXT_IP = "203.0.113.10";
export const SOCKET = `${RUN_DIR}/cilia.sock`;
export const POD_CIDR = "10.200.0.0/24";
export const POD_CIDR_V6 = "fd00:200::/64";
const BPFFS = `${RUN_DIR}/bpf`;
export const EVENTS_MAP = `${BPFFS}/cilia/maps/cilia_events`;
const ROOT = new URL("../../", import.meta.url).pathname;

export interface DemoPod {
  name: string;
  netns: string;
  containerId: string;
  labels: Record<string, string>;
  ip: string;
  identity: number;
  addMs: number;
}

async function run(
  argv: string[],
  stdin?: string,
): Promise<{ code: number; out: string; err: string }> {
  const r = await execCommand(argv, stdin === undefined ? {} : { stdin });
  return { code: r.code, out: r.stdout, err: r.stderr };
}

async function must(argv: string[], stdin?: string): Promise<string> {
  const r = await run(argv, stdin);
  if (r.code !== 0) throw new Error(`"${argv.join(" ")}" failed: ${r.err.trim() || r.out.trim()}`);
  return r.out;
}

const alive = (pid: number) => Deno.stat(`/proc/${pid}`).then(() => true, () => false);

async function ourNetns(): Promise<string[]> {
  return (await run(["ip", "netns", "list"])).out.split("\n").map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n.startsWith(PREFIX));
}

async function mountsUnder(dir: string): Promise<string[]> {
  const info = await Deno.readTextFile("/proc/self/mountinfo");
  return info.split("\n").map((l) => l.split(" ")[4] ?? "")
    .filter((m) => m === dir || m.startsWith(dir + "/")).sort((a, b) => b.length - a.length);
}

/** Removes netns, mounts, files and the agent a demo that died left; refuses if one runs. */
export async function sweep(): Promise<boolean> {
  const pid = Number(await Deno.readTextFile(`${RUN_DIR}/pid`).catch(() => "0"));
  if (pid > 0 && pid !== Deno.pid && await alive(pid)) {
    throw new Error(`Another demo is running (pid ${pid}): stop it with Ctrl-C first`);
  }
  const agent = Number(await Deno.readTextFile(`${RUN_DIR}/agent.pid`).catch(() => "0"));
  const cmdline = await Deno.readTextFile(`/proc/${agent}/cmdline`).catch(() => "");
  if (agent > 0 && cmdline.includes("agent/main.ts")) Deno.kill(agent, "SIGKILL");
  const netns = await ourNetns();
  const mounts = await mountsUnder(RUN_DIR);
  const found = netns.length > 0 || mounts.length > 0 || pid > 0;
  for (const n of netns) {
    // Processes an interrupted demo left in its namespaces (servers, peers) go with them.
    const pids = (await run(["ip", "netns", "pids", n])).out.split("\n").map(Number);
    for (const p of pids.filter((p) => p > 0)) {
      try {
        Deno.kill(p, "SIGKILL");
      } catch { /* gone */ }
    }
    await run(["ip", "netns", "del", n]);
  }
  for (const m of mounts) await run(["umount", "-l", m]);
  await Deno.remove(RUN_DIR, { recursive: true }).catch(() => {});
  return found;
}

async function stopPeer(p: Peer): Promise<void> {
  try {
    p.process.kill("SIGKILL");
  } catch { /* exited */ }
  await p.close().catch(() => {});
}

/** The demo's HTTP server: answers with the caller's address (as the server saw it) and path. */
const HTTP_SERVER = `const port = Number(Deno.args[0]);
Deno.serve({ hostname: "0.0.0.0", port, onListen() {} }, (req, info) =>
  new Response("hello " + info.remoteAddr.hostname + ", this is " + new URL(req.url).pathname));
`;

export class DemoLab {
  readonly api = new AgentClient(SOCKET);
  readonly pods: DemoPod[] = [];
  #agent: Deno.ChildProcess | undefined;
  #agentLog: Deno.FsFile | undefined;
  #peers = new Map<string, Peer>();
  #servers: Deno.ChildProcess[] = [];
  #closed = false;

  /** The node and the external host, and the node's bpffs. */
  static async create(): Promise<DemoLab> {
    await Deno.mkdir(RUN_DIR, { recursive: true, mode: 0o700 });
    const lab = new DemoLab();
    await Deno.writeTextFile(`${RUN_DIR}/pid`, String(Deno.pid));
    await Deno.writeTextFile(`${RUN_DIR}/peer.ts`, PEER_SCRIPT);
    await Deno.mkdir(BPFFS);
    const m = await run(["mount", "-t", "bpf", "bpf", BPFFS]);
    if (m.code !== 0) {
      throw new Error(
        `Cannot mount a bpffs at "${BPFFS}": ${m.err.trim()} (does this kernel have BPF?)`,
      );
    }
    await must(["ip", "netns", "add", NODE]);
    await must(["ip", "netns", "add", EXT]);
    const sysctls = "net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 " +
      "net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0";
    await must(["ip", "netns", "exec", NODE, "sh", "-c", `sysctl -qw ${sysctls}`]);
    await must(["ip", "netns", "exec", EXT, "sh", "-c", `sysctl -qw ${sysctls}`]);
    await must(
      ["ip", "-n", NODE, "-batch", "-"],
      [
        "link set lo up",
        `link add ext0 type veth peer name eth0 netns ${EXT}`,
        "addr add 203.0.113.1/24 dev ext0",
        "addr add 2001:db8:113::1/64 dev ext0 nodad",
        "link set ext0 up",
      ].join("\n") + "\n",
    );
    await must(
      ["ip", "-n", EXT, "-batch", "-"],
      [
        "link set lo up",
        `addr add ${EXT_IP}/24 dev eth0`,
        "addr add 2001:db8:113::10/64 dev eth0 nodad",
        "link set eth0 up",
        "route add default via 203.0.113.1",
        "route add default via 2001:db8:113::1",
      ].join("\n") + "\n",
    );
    return lab;
  }

  /** Starts the agent inside the node with the node's bpffs at /sys/fs/bpf; returns ms. */
  async startAgent(): Promise<number> {
    const started = performance.now();
    this.#agentLog = await Deno.open(`${RUN_DIR}/agent.log`, { write: true, create: true });
    // setsid: Ctrl-C in the terminal reaches the demo, which then deletes the pods through the
    // agent before it stops it, rather than the agent at once.
    this.#agent = new Deno.Command("setsid", {
      args: ["ip", "netns", "exec", NODE, "sh", "-c", 'mount --bind "$0" /sys/fs/bpf && exec "$@"']
        .concat([BPFFS])
        .concat([`${ROOT}bin/cilia-agent`, "--state-dir", `${RUN_DIR}/state`, "--socket", SOCKET])
        .concat(["--node-name", "demo-node", "--pod-cidr", POD_CIDR, "--pod-cidr-v6", POD_CIDR_V6]),
      env: { CILIA_DENO: Deno.execPath() },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#agent.stderr.pipeTo(this.#agentLog.writable).catch(() => {});
    await Deno.writeTextFile(`${RUN_DIR}/agent.pid`, String(this.#agent.pid));
    let exited = false;
    this.#agent.status.then(() => exited = true);
    while (performance.now() - started < 30_000) {
      if (exited) throw new Error(`The agent exited during startup:\n${await this.agentLog()}`);
      try {
        await this.api.request("GET", "/v1/healthz");
        return performance.now() - started;
      } catch {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    throw new Error(`The agent did not answer within 30 s:\n${await this.agentLog()}`);
  }

  async agentLog(lines = 15): Promise<string> {
    const text = await Deno.readTextFile(`${RUN_DIR}/agent.log`).catch(() => "");
    return text.trim().split("\n").slice(-lines).join("\n");
  }

  /** Runs bin/cilia-cni as a CNI runtime does; returns its exit code and parsed stdout. */
  cni(command: "ADD" | "DEL", pod: { netns: string; containerId: string }, args = "") {
    return execCniPlugin(command, pod, { network: "demo", socket: SOCKET, args });
  }

  /** A pod: its netns, then CNI ADD with its labels in CNI_ARGS. */
  async addPod(name: string, labels: Record<string, string>): Promise<DemoPod> {
    const netns = `${PREFIX}${name}`;
    await must(["ip", "netns", "add", netns]);
    const containerId = `demo-${name}`;
    const labelArg = Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(",");
    const t = performance.now();
    const r = await this.cni(
      "ADD",
      { netns, containerId },
      `IgnoreUnknown=1;K8S_POD_NAME=${name};K8S_POD_NAMESPACE=default;CILIA_LABELS=${labelArg}`,
    );
    const addMs = performance.now() - t;
    if (r.code !== 0) throw new Error(`CNI ADD of "${name}" failed: ${JSON.stringify(r.result)}`);
    const ep = await this.api.request<{ identity: number; ipv4: string }>(
      "GET",
      `/v1/endpoint/default/${name}`,
    );
    const pod = { name, netns, containerId, labels, ip: ep.ipv4, identity: ep.identity, addMs };
    this.pods.push(pod);
    return pod;
  }

  /** The socket helper of a netns for a role (servers and clients apart, see closePeers). */
  peer(netns: string, role: "server" | "client"): Peer {
    const key = `${netns}/${role}`;
    let p = this.#peers.get(key);
    if (!p) this.#peers.set(key, p = spawnPeer(netns, `${RUN_DIR}/peer.ts`));
    return p;
  }

  /** A small HTTP server in `netns` on `port` that echoes the caller's address and the path. */
  async httpServer(netns: string, port: number): Promise<void> {
    const script = `${RUN_DIR}/http_server.ts`;
    await Deno.writeTextFile(script, HTTP_SERVER);
    const child = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        netns,
        Deno.execPath(),
        "run",
        "--quiet",
        "--allow-net",
        script,
        String(port),
      ],
      env: { DENO_NO_UPDATE_CHECK: "1", DENO_NO_PROMPT: "1" },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    this.#servers.push(child);
    for (let i = 0; i < 100; i++) {
      const r = await run(["ip", "netns", "exec", netns, "ss", "-Htln", `sport = :${port}`]);
      if (r.out.trim() !== "") return;
      await new Promise((res) => setTimeout(res, 50));
    }
    throw new Error(`The demo's HTTP server in "${netns}" did not start on port ${port}`);
  }

  /** Stops the helpers of a role: pending connects of denied probes stop retrying. */
  async closePeers(role: "server" | "client"): Promise<void> {
    for (const [key, p] of this.#peers) {
      if (!key.endsWith(`/${role}`)) continue;
      this.#peers.delete(key);
      await stopPeer(p);
    }
  }

  /** `bin/cilia policy import FILE` against the demo's agent; its output line. */
  async importPolicy(file: string): Promise<string> {
    const r = await run([`${ROOT}bin/cilia`, "policy", "import", file, "-H", `unix://${SOCKET}`]);
    if (r.code !== 0) throw new Error(`cilia policy import failed: ${r.err.trim()}`);
    return r.out.trim();
  }

  /** Deletes the pods through CNI DEL, stops everything, removes every netns and file. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#agent) {
      for (const p of this.pods) await this.cni("DEL", p).catch(() => {});
    }
    for (const p of this.#peers.values()) await stopPeer(p);
    for (const c of this.#servers) {
      try {
        c.kill("SIGKILL");
      } catch { /* exited */ }
      await c.status;
    }
    this.api.close();
    if (this.#agent) {
      try {
        this.#agent.kill("SIGTERM");
      } catch { /* exited */ }
      const t = setTimeout(() => {
        try {
          this.#agent?.kill("SIGKILL");
        } catch { /* exited */ }
      }, 5000);
      await this.#agent.status;
      clearTimeout(t);
    }
    try {
      this.#agentLog?.close();
    } catch { /* closed by the pipe */ }
    await Deno.remove(`${RUN_DIR}/pid`).catch(() => {});
    await sweep();
  }
}
