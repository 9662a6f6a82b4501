// The lab `cilia connectivity test` runs in, made of network namespaces on this machine: a node
// (`ciliact<tag>-node`, its own bpffs) running `bin/cilia-agent` the MACHINE.md §1 way, pods
// added through `bin/cilia-cni` as a CNI runtime would (labels, namespace), an external host with
// two addresses on 203.0.113.0/24 routed through the node ("world"), TCP servers (busybox nc) and
// probes (busybox nc, ping) run with `ip netns exec`. With `nodes: 2`, two nodes on an underlay
// bridge with one etcd (connectivity_underlay.ts), an agent on each in tunnel mode, pods placed
// on either node. Everything carries the lab's tag under /run/ciliact-<tag>; close() removes it
// all, also after an interrupt. It decides no verdict: the kernel does, and the agents' flows say
// why.
import { ETCD_URL, plugNode, startUnderlay, stopEtcd } from "./connectivity_underlay.ts";

const ROOT = new URL("../", import.meta.url).pathname;
export const EXT_IPS = ["203.0.113.10", "203.0.113.11"] as const;
/** Node i's pod CIDRs (i = 0 with one node). */
const podCidrs = (i: number) => [`10.210.${i}.0/24`, `fd00:210:${i}::/64`] as const;
const dec = new TextDecoder();

export interface LabPod {
  name: string;
  namespace: string;
  netns: string;
  containerId: string;
  ip: string;
  /** The node it runs on (index into `nodes`). */
  node: number;
}

async function run(argv: string[], stdin?: string) {
  const child = new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const o = await child.output();
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
}

async function must(argv: string[], stdin?: string): Promise<string> {
  const r = await run(argv, stdin);
  if (r.code !== 0) {
    throw new Error(`Command failed: "${argv.join(" ")}" exited with ${r.code}: ${r.err.trim()}`);
  }
  return r.out;
}

export class ConnectivityLab {
  readonly tag = crypto.getRandomValues(new Uint16Array(1))[0]!.toString(16).padStart(4, "0");
  readonly prefix = `ciliact${this.tag}-`;
  readonly dir = `/run/ciliact-${this.tag}`;
  /** The node netns, one per node; the external host hangs off the first. */
  readonly nodes: string[];
  readonly ext = `${this.prefix}ext`;
  readonly pods: LabPod[] = [];
  #agents: Deno.ChildProcess[] = [];
  #etcd: Deno.ChildProcess | undefined;
  #servers: Deno.ChildProcess[] = [];
  #closed: Promise<void> | undefined;

  constructor(opts: { nodes?: number } = {}) {
    const n = opts.nodes ?? 1;
    this.nodes = n === 1
      ? [`${this.prefix}node`]
      : Array.from({ length: n }, (_, i) => `${this.prefix}node${i + 1}`);
  }

  /** The first node's netns. */
  get node(): string {
    return this.nodes[0]!;
  }

  /** The API socket of node i. */
  socket(i = 0): string {
    return this.nodes.length === 1 ? `${this.dir}/cilia.sock` : `${this.dir}/node${i + 1}.sock`;
  }

  #bpffs(i: number): string {
    return this.nodes.length === 1 ? `${this.dir}/bpf` : `${this.dir}/bpf${i + 1}`;
  }

  /** Throws once close() began: an interrupted setup stops making things. */
  #open(): void {
    if (this.#closed) throw new Error("The lab is being removed");
  }

  /** Nodes, bpffs, external host, the underlay and etcd (several nodes) and the agents. */
  async start(): Promise<void> {
    await Deno.mkdir(this.dir, { recursive: true, mode: 0o700 });
    for (const [i] of this.nodes.entries()) {
      await Deno.mkdir(this.#bpffs(i));
      await must(["mount", "-t", "bpf", "bpf", this.#bpffs(i)]);
    }
    for (const ns of [...this.nodes, this.ext]) {
      this.#open();
      await must(["ip", "netns", "add", ns]);
      await must([
        ...["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"],
        ...["net.ipv4.conf.default.rp_filter=0", "net.ipv6.conf.all.accept_dad=0"],
      ]);
    }
    if (this.nodes.length === 1) {
      const link = `ext${this.tag}`;
      await must(
        ["ip", "-n", this.node, "-batch", "-"],
        `link set lo up\nlink add ${link} type veth peer name eth0 netns ${this.ext}\n` +
          `addr add 203.0.113.1/24 dev ${link}\nlink set ${link} up\n`,
      );
      await must(
        ["ip", "-n", this.ext, "-batch", "-"],
        `link set lo up\n${EXT_IPS.map((ip) => `addr add ${ip}/24 dev eth0\n`).join("")}` +
          "link set eth0 up\nroute add default via 203.0.113.1\n",
      );
    } else await this.#underlay();
    for (const [i] of this.nodes.entries()) await this.#startAgent(i);
  }

  /**
   * Several nodes: the bridge with etcd, each node on it, and the external host on it too
   * (192.0.2.200, with its 203.0.113.x addresses): every node routes 203.0.113.0/24 to it and it
   * routes each node's pod CIDR back to that node, so pods on any node reach "world" unNATed.
   */
  async #underlay(): Promise<void> {
    const ul = `${this.prefix}ul`;
    await must(["ip", "netns", "add", ul]);
    this.#etcd = await startUnderlay(ul, `${this.dir}/etcd`);
    const ext = await plugNode(ul, this.ext, { i: 200, port: `ct${this.tag}ux` });
    const back = this.nodes.map((_, i) => `route add ${podCidrs(i + 1)[0]} via 192.0.2.${i + 1}\n`);
    await must(
      ["ip", "-n", this.ext, "-batch", "-"],
      `link set lo up\n${EXT_IPS.map((ip) => `addr add ${ip}/24 dev eth0\n`).join("")}` +
        back.join(""),
    );
    for (const [i, ns] of this.nodes.entries()) {
      this.#open();
      await must(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
      await plugNode(ul, ns, { i: i + 1, port: `ct${this.tag}u${i + 1}` });
      await must(["ip", "-n", ns, "route", "add", "203.0.113.0/24", "via", ext]);
    }
  }

  /** Agent flags of node i: its own Deno KV alone, or etcd, node IP and tunnel mode. */
  #agentArgs(i: number): string[] {
    const [v4, v6] = podCidrs(this.nodes.length === 1 ? 0 : i + 1);
    const common = ["--socket", this.socket(i), "--pod-cidr", v4, "--pod-cidr-v6", v6];
    if (this.nodes.length === 1) {
      return [...common, "--state-dir", `${this.dir}/state`, "--node-name", "connectivity"];
    }
    return [
      ...common,
      ...["--state-dir", `${this.dir}/state${i + 1}`, "--node-name", `node-${i + 1}`],
      ...["--kvstore", `etcd://${ETCD_URL.slice("http://".length)}`, "--routing-mode", "tunnel"],
      ...["--node-ip", `192.0.2.${i + 1}`],
    ];
  }

  async #startAgent(i: number): Promise<void> {
    const file = this.nodes.length === 1 ? "agent.log" : `agent${i + 1}.log`;
    const log = await Deno.open(`${this.dir}/${file}`, { write: true, create: true });
    // setsid: Ctrl-C reaches the test, which deletes the pods before it stops the agent.
    const child = new Deno.Command("setsid", {
      args: [
        ...["ip", "netns", "exec", this.nodes[i]!, "sh", "-c"],
        'mount --bind "$0" /sys/fs/bpf && exec "$@"',
        this.#bpffs(i),
        ...[`${ROOT}bin/cilia-agent`, ...this.#agentArgs(i)],
      ],
      env: { CILIA_DENO: Deno.execPath() },
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#agents.push(child);
    child.stderr.pipeTo(log.writable).catch(() => {});
    let exited = false;
    child.status.then(() => exited = true);
    for (const deadline = Date.now() + 30_000; Date.now() < deadline;) {
      if (exited) throw new Error(`The agent exited during startup:\n${await this.agentLog()}`);
      const r = await this.api("GET", "/v1/healthz", undefined, i).catch(() => undefined);
      if (r?.status === 200) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`The agent did not answer within 30 s:\n${await this.agentLog()}`);
  }

  /** The last lines of each agent's log (named by node when there are several). */
  async agentLog(lines = 15): Promise<string> {
    const out: string[] = [];
    for (const [i] of this.nodes.entries()) {
      const file = this.nodes.length === 1 ? "agent.log" : `agent${i + 1}.log`;
      const text = await Deno.readTextFile(`${this.dir}/${file}`).catch(() => "");
      const tail = text.trim().split("\n").slice(-lines).join("\n");
      out.push(this.nodes.length === 1 ? tail : `[node-${i + 1}]\n${tail}`);
    }
    return out.join("\n");
  }

  /** One request to node i's agent API on its socket: status and body text. */
  async api(
    method: string,
    path: string,
    body?: string,
    node = 0,
  ): Promise<{ status: number; text: string }> {
    const client = Deno.createHttpClient({
      proxy: { transport: "unix", path: this.socket(node) },
    });
    try {
      const res = await fetch(`http://localhost${path}`, {
        method,
        client,
        headers: { "content-type": "application/yaml" },
        ...(body !== undefined ? { body } : {}),
      } as RequestInit);
      return { status: res.status, text: await res.text() };
    } finally {
      client.close();
    }
  }

  #cni(command: "ADD" | "DEL", pod: LabPod, args = "") {
    const socket = this.socket(pod.node);
    return execCniPlugin(command, pod, { network: "connectivity", socket, args });
  }

  /** A pod on node `o.node` (default 0): netns + CNI ADD with labels and namespace, servers. */
  async addPod(
    name: string,
    o: { namespace: string; labels: Record<string, string>; ports?: number[]; node?: number },
  ): Promise<LabPod> {
    this.#open();
    const pod: LabPod = {
      name,
      namespace: o.namespace,
      netns: `${this.prefix}${name}`,
      containerId: `ct-${this.tag}-${name}`,
      ip: "",
      node: o.node ?? 0,
    };
    await must(["ip", "netns", "add", pod.netns]);
    this.pods.push(pod);
    const labels = Object.entries(o.labels).map(([k, v]) => `${k}=${v}`).join(",");
    const r = await this.#cni(
      "ADD",
      pod,
      `IgnoreUnknown=1;K8S_POD_NAME=${name};K8S_POD_NAMESPACE=${o.namespace};CILIA_LABELS=${labels}`,
    );
    if (r.code !== 0) throw new Error(`CNI ADD of "${name}" failed: ${JSON.stringify(r.result)}`);
    pod.ip = (r.result.ips as { address: string }[]).map((i) => i.address.split("/")[0]!)
      .find((a) => !a.includes(":"))!;
    for (const port of o.ports ?? []) this.serve(pod.netns, port);
    return pod;
  }

  /** A TCP server that accepts and closes (busybox nc), killed in close(). */
  serve(netns: string, port: number): void {
    this.#open();
    this.#servers.push(
      new Deno.Command("ip", {
        args: ["netns", "exec", netns, "busybox", "nc", "-ll", "-p", String(port), "-e", "true"],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn(),
    );
  }

  /** True when a TCP connect (proto "tcp") or one ping (proto "icmp") got through. */
  async probe(netns: string, ip: string, proto: "tcp" | "icmp", port = 0): Promise<boolean> {
    const argv = proto === "tcp"
      ? ["busybox", "nc", "-w", "1", ip, String(port)]
      : ["ping", "-c", "1", "-W", "1", ip];
    return (await run(["ip", "netns", "exec", netns, ...argv])).code === 0;
  }

  /** CNI DEL of the pods, the agent, servers, namespaces, mounts and files. */
  close(): Promise<void> {
    return this.#closed ??= this.#close();
  }

  async #close(): Promise<void> {
    for (const s of this.#servers) {
      try {
        s.kill("SIGKILL");
      } catch { /* exited */ }
      await s.status;
    }
    if (this.#agents.length > 0) {
      for (const p of this.pods) await this.#cni("DEL", p).catch(() => {});
    }
    for (const agent of this.#agents) {
      try {
        agent.kill("SIGTERM");
      } catch { /* exited */ }
      const t = setTimeout(() => {
        try {
          agent.kill("SIGKILL");
        } catch { /* exited */ }
      }, 5000);
      await agent.status;
      clearTimeout(t);
    }
    if (this.#etcd) await stopEtcd(this.#etcd);
    // Twice: a command the interrupted setup had started may add a netns meanwhile.
    for (const wait of [0, 300]) {
      await new Promise((r) => setTimeout(r, wait));
      const list = await run(["ip", "netns", "list"]);
      for (const line of list.out.split("\n")) {
        const ns = line.split(" ")[0] ?? "";
        if (ns.startsWith(this.prefix)) await run(["ip", "netns", "del", ns]);
      }
    }
    for (const [i] of this.nodes.entries()) await run(["umount", "-l", this.#bpffs(i)]);
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Runs bin/cilia-cni as a CNI runtime does (CNI_* environment, the network configuration on
 * stdin, interface eth0); returns its exit code and parsed stdout. The connectivity lab and the
 * demo share it.
 */
export async function execCniPlugin(
  command: "ADD" | "DEL",
  pod: { netns: string; containerId: string },
  o: { network: string; socket: string; args?: string },
  // deno-lint-ignore no-explicit-any
): Promise<{ code: number; result: any }> {
  const child = new Deno.Command(`${ROOT}bin/cilia-cni`, {
    env: {
      CNI_COMMAND: command,
      CNI_CONTAINERID: pod.containerId,
      CNI_NETNS: `/run/netns/${pod.netns}`,
      CNI_IFNAME: "eth0",
      CNI_ARGS: o.args ?? "",
      CNI_PATH: `${ROOT}bin`,
      CILIA_DENO: Deno.execPath(),
    },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const conf = { cniVersion: "1.0.0", name: o.network, type: "cilia-cni", agentSocket: o.socket };
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(JSON.stringify(conf)));
  await w.close();
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout).trim();
  return { code: out.code, result: text ? JSON.parse(text) : undefined };
}
