// A cluster of cilia nodes for the multi-node tests: a lab (netns.ts) with an underlay network
// namespace holding a bridge (192.0.2.254/24) and one real etcd listening on it, N node netns
// each with eth0 = 192.0.2.<i> on that bridge and its own bpffs, and `bin/cilia-agent` on each
// node (the first alone, then the others at once) started the MACHINE.md §1 way (--node-ip, pod
// CIDRs 10.200.<i>.0/24 and fd00:200:<i>::/64, a short lease so that a stopped node expires
// quickly). Pods come through
// the CNI plugin (tests/cni/_fixture.ts execCni). Flows and events are asked from the agents,
// never read from the perf buffer. etcd can be killed and started again on its data
// (stopEtcd/startEtcd) or blackholed (blockEtcd) for the fault tests. Each node's eth0 also has
// 2001:db8:200::<i>/64 (native IPv6 routing). close() kills agents and etcd and removes
// everything. Also what the multi-node tests share: `eventually` and the b-from-a policy.
import { execCni, root, type TestPod } from "../cni/_fixture.ts";
import { type Reply, SocketClient } from "../agent/_fixture.ts";
import type { Flow, MonitorLine } from "../../agent/monitor/mod.ts";
import { Lab, type Node } from "./netns.ts";

const UNDERLAY_IP = "192.0.2.254";
const UNDERLAY_IP6_PREFIX = "2001:db8:200::";
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export { eventually } from "../agent/_fixture.ts";

/** The multi-node tests' policy: pods with app=b admit what comes from app=a, nothing else. */
export const POLICY_B_FROM_A = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-from-a, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
`;

export interface ClusterOptions {
  nodes: number;
  routingMode?: "tunnel" | "native";
  /** Node lease TTL (default "2s"). */
  leaseTtl?: string;
  /** How long peers keep a lost node's entries (default "0s": removed when its lease ends). */
  nodeGracePeriod?: string;
  /** More agent flags, for every node (a test may change `Cluster.agentArgs` and restart). */
  agentArgs?: string[];
}

export class ClusterNode {
  readonly name: string;
  readonly ip: string;
  readonly dir: string;
  readonly socket: string;
  readonly api: SocketClient;
  readonly podCidr: string;
  /** Its IPv6 underlay address (2001:db8:200::<i>). */
  readonly ip6: string;
  #agent: Deno.ChildProcess | undefined;
  #drained: Promise<void> | undefined;
  #log = "";
  #pods = 0;

  constructor(
    readonly cluster: Cluster,
    readonly node: Node,
  ) {
    this.name = `node-${node.index}`;
    this.ip = `192.0.2.${node.index}`;
    this.dir = `${cluster.lab.dir}/${this.name}`;
    this.socket = `${this.dir}/cilia.sock`;
    this.api = new SocketClient(this.socket);
    this.podCidr = `10.200.${node.index}.0/24`;
    this.ip6 = `${UNDERLAY_IP6_PREFIX}${node.index}`;
  }

  get log(): string {
    return this.#log;
  }

  async startAgent(): Promise<void> {
    await Deno.mkdir(this.dir, { recursive: true });
    const i = this.node.index;
    const argv = this.cluster.lab.nodeArgv(this.node, [
      `${root}bin/cilia-agent`,
      ...["--state-dir", `${this.dir}/state`, "--socket", this.socket],
      ...["--node-name", this.name, "--node-ip", this.ip],
      ...["--pod-cidr", this.podCidr, "--pod-cidr-v6", `fd00:200:${i}::/64`],
      ...["--kvstore", `etcd://${UNDERLAY_IP}:2379`, "--lease-ttl", this.cluster.leaseTtl],
      ...["--routing-mode", this.cluster.routingMode],
      ...["--node-grace-period", this.cluster.nodeGracePeriod],
      ...this.cluster.agentArgs,
    ]);
    const child = spawnAgentArgv(argv);
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
        throw new Error(`The agent of ${this.name} exited with ${exited}:\n${this.#log}`);
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

  async stopAgent(signal: Deno.Signal = "SIGTERM"): Promise<void> {
    const child = this.#agent;
    if (!child) return;
    this.#agent = undefined;
    try {
      child.kill(signal);
    } catch { /* gone */ }
    await child.status;
    await this.#drained;
  }

  /** A pod through CNI ADD (its netns is created first). */
  async addPod(name: string, labels: Record<string, string>): Promise<TestPod> {
    const netns = `${this.cluster.lab.prefix}${name}`;
    const r0 = await new Deno.Command("ip", { args: ["netns", "add", netns], stderr: "piped" })
      .output();
    // An existing netns is a retry of an ADD that failed (as a runtime retries a sandbox).
    const exists = await Deno.stat(`/run/netns/${netns}`).then(() => true, () => false);
    if (r0.code !== 0 && !exists) throw new Error(`Cannot create netns "${netns}"`);
    const containerId = `${name}-${++this.#pods}-${crypto.randomUUID().slice(0, 8)}`;
    const labelArg = Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(",");
    const r = await execCni("ADD", {
      containerId,
      netns: `/run/netns/${netns}`,
      args: `IgnoreUnknown=1;K8S_POD_NAME=${name};CILIA_LABELS=${labelArg}`,
    }, this.socket);
    if (r.code !== 0) throw new Error(`CNI ADD of "${name}" failed: ${r.stdout}${r.stderr}`);
    const ips = (r.json.ips as { address: string }[]).map((x) => x.address.replace(/\/\d+$/, ""));
    return {
      name,
      netns,
      containerId,
      ipv4: ips.find((a) => !a.includes(":"))!,
      ipv6: ips.find((a) => a.includes(":"))!,
      result: r.json,
    };
  }

  async delPod(pod: TestPod): Promise<void> {
    const r = await execCni(
      "DEL",
      { containerId: pod.containerId, netns: `/run/netns/${pod.netns}` },
      this.socket,
    );
    if (r.code !== 0) throw new Error(`CNI DEL of "${pod.name}" failed: ${r.stdout}${r.stderr}`);
  }

  call(method: string, path: string, body?: unknown): Promise<Reply> {
    return this.api.call(method, path, body);
  }

  /** Imports policy YAML through this node's agent. */
  async policy(yaml: string): Promise<void> {
    const r = await this.call("PUT", "/v1/policy", yaml);
    if (r.status !== 200) throw new Error(`Policy import failed: ${JSON.stringify(r.body)}`);
  }

  /** The kernel ipcache of this node (GET /v1/bpf/ipcache). */
  async ipcache(): Promise<{ prefix: string; identity: number; tunnelEndpoint?: string }[]> {
    const r = await this.call("GET", "/v1/bpf/ipcache");
    if (r.status !== 200) throw new Error(`GET /v1/bpf/ipcache: ${JSON.stringify(r.body)}`);
    return r.body as { prefix: string; identity: number; tunnelEndpoint?: string }[];
  }

  /** The agent's flows (GET /v1/flows) with query parameters. */
  async flows(query: Record<string, string> = {}): Promise<Flow[]> {
    const q = new URLSearchParams(query).toString();
    const client = Deno.createHttpClient({ proxy: { transport: "unix", path: this.socket } });
    try {
      const r = await fetch(`http://localhost/v1/flows${q ? `?${q}` : ""}`, {
        client,
      } as RequestInit);
      const text = await r.text();
      if (r.status !== 200) throw new Error(`GET /v1/flows: ${text}`);
      return text.split("\n").filter(Boolean).map((l) => JSON.parse(l) as MonitorLine)
        .flatMap((m) => "flow" in m ? [m.flow] : []);
    } finally {
      client.close();
    }
  }

  async close(): Promise<void> {
    await this.stopAgent("SIGKILL").catch(() => {});
    this.api.close();
  }
}

export class Cluster implements AsyncDisposable {
  readonly nodes: ClusterNode[] = [];
  readonly underlay: string;
  /** The mode agents start with (a test may change it and restart them). */
  routingMode: "tunnel" | "native";
  readonly leaseTtl: string;
  readonly nodeGracePeriod: string;
  agentArgs: string[];
  #etcd: Deno.ChildProcess | undefined;

  private constructor(readonly lab: Lab, opts: ClusterOptions) {
    this.underlay = `${lab.prefix}ul`;
    this.routingMode = opts.routingMode ?? "tunnel";
    this.leaseTtl = opts.leaseTtl ?? "2s";
    this.nodeGracePeriod = opts.nodeGracePeriod ?? "0s";
    this.agentArgs = opts.agentArgs ?? [];
  }

  static async create(opts: ClusterOptions): Promise<Cluster> {
    const lab = await Lab.create();
    const c = new Cluster(lab, opts);
    try {
      await c.#underlay();
      for (let i = 0; i < opts.nodes; i++) {
        const node = await lab.addNode(`n${i + 1}`);
        await c.#plug(node);
        c.nodes.push(new ClusterNode(c, node));
      }
      await startAll(c.nodes);
      return c;
    } catch (err) {
      await c.close();
      throw err;
    }
  }

  async #underlay(): Promise<void> {
    const ns = this.underlay;
    const sh = (cmd: string) => this.lab.run(ns, ["sh", "-c", cmd]);
    await new Deno.Command("ip", { args: ["netns", "add", ns] }).output();
    await sh(
      `ip link set lo up && ip link add br0 type bridge && ip link set br0 up && ` +
        `ip addr add ${UNDERLAY_IP}/24 dev br0`,
    );
    await this.startEtcd();
  }

  /**
   * Starts etcd in the underlay namespace on its data dir (again after stopEtcd(): same data,
   * same leases) and waits until /health says so.
   */
  async startEtcd(): Promise<void> {
    if (this.#etcd) return;
    const ns = this.underlay;
    const url = `http://${UNDERLAY_IP}:2379`;
    // deno-fmt-ignore
    this.#etcd = this.lab.spawn(["ip", "netns", "exec", ns, "etcd",
      "--name", "t", "--data-dir", `${this.lab.dir}/etcd`,
      "--listen-client-urls", url, "--advertise-client-urls", url,
      "--listen-peer-urls", "http://127.0.0.1:2380",
      "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
      "--initial-cluster", "t=http://127.0.0.1:2380",
      "--heartbeat-interval", "10", "--election-timeout", "100", "--unsafe-no-fsync",
      "--log-level", "error", "--logger", "zap"]);
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const r = await this.lab.exec(ns, ["curl", "-s", "-m", "1", `${url}/health`]);
      if (r.stdout.includes(`"health":"true"`)) return;
      await sleep(20);
    }
    throw new Error(`etcd in the underlay namespace did not become healthy`);
  }

  /** Kills etcd (SIGKILL, as a crash) and waits for it; its data dir stays for startEtcd(). */
  async stopEtcd(): Promise<void> {
    const child = this.#etcd;
    if (!child) return;
    this.#etcd = undefined;
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await child.status;
  }

  /**
   * Blackholes etcd's client port (an nft drop rule in the underlay namespace) or lifts that:
   * etcd keeps running, but nothing reaches it and open connections hang, as on a partition.
   */
  async blockEtcd(blocked: boolean): Promise<void> {
    const rules = blocked
      ? "add table inet cilia_block\n" +
        "add chain inet cilia_block input { type filter hook input priority 0; }\n" +
        "add rule inet cilia_block input tcp dport 2379 drop\n"
      : "delete table inet cilia_block\n";
    const r = await this.lab.exec(this.underlay, ["nft", "-f", "-"], rules);
    if (r.code !== 0) throw new Error(`nft in the underlay namespace failed: ${r.stderr}`);
  }

  async #plug(node: Node): Promise<void> {
    const port = `ul${this.lab.tag}${node.index}`;
    await this.lab.run(node.netns, [
      "sh",
      "-c",
      `ip link add eth0 type veth peer name ${port} netns ${this.underlay} && ` +
      `ip addr add 192.0.2.${node.index}/24 dev eth0 && ` +
      // An IPv6 underlay address too (documentation range): next hop of native IPv6 routes.
      `ip addr add ${UNDERLAY_IP6_PREFIX}${node.index}/64 dev eth0 nodad && ip link set eth0 up`,
    ]);
    await this.lab.run(this.underlay, ["ip", "link", "set", port, "master", "br0", "up"]);
  }

  async close(): Promise<void> {
    for (const n of this.nodes) await n.close();
    await this.lab.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Starts the first node's agent, then the others' at once (they share only etcd, where each
 * writes its own node record, lease and IPAM keys, and identities are created-if-absent), and
 * waits for all of them: the first failure is thrown once every start has settled, so close()
 * finds no start half done. The first goes alone because a cold start builds the eBPF objects
 * and transpiles the agent: several at once would each do all of it on the same cores. A test
 * that needs another order starts its agents itself.
 */
async function startAll(nodes: ClusterNode[]): Promise<void> {
  const [first, ...others] = nodes;
  await first?.startAgent();
  const started = await Promise.allSettled(others.map((n) => n.startAgent()));
  const failed = started.find((s): s is PromiseRejectedResult => s.status === "rejected");
  if (failed) throw failed.reason;
}

/** Starts an agent from its argv (Lab.nodeArgv's), this test's Deno for it, stderr piped. */
export function spawnAgentArgv(argv: string[]): Deno.ChildProcess {
  return new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    env: { CILIA_DENO: Deno.execPath() },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
}
