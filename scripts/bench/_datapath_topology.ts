// The topology of the datapath bench and the setups it is measured in: two pods (client, server)
// behind one node netns, routed through the node as in the datapath tests; cilia attached without
// policy, with the server's ingress default-deny and the engine's map-state of a real policy over
// N client identities, and the same filtering as N iptables rules in the node's FORWARD chain.
// It measures TCP throughput (iperf3) and request/response rate (_rr.ts). cilia is written through
// the agent's own KernelSink (the engine's map-state, diffs between setups), so the bench measures
// the datapath users run. Nothing here prints.
import { KernelSink } from "../../agent/datapath/kernel_sink.ts";
import { encodePolicyEntry } from "../../agent/datapath/policy_map.ts";
import { policyEntryOf } from "../../agent/datapath/policy_state.ts";
import type { DatapathEndpoint, EndpointFlags } from "../../agent/endpoint/datapath_sink.ts";
import { diffEntries, indexEntries } from "../../agent/endpoint/mapstate_diff.ts";
import { Logger } from "../../agent/log.ts";
import {
  compilePolicies,
  type IpcacheEntry,
  type MapStateEntry,
  podIdentityLabels,
  PolicyEngine,
  RESERVED_IDENTITIES,
} from "../../policy-wasm/mod.ts";
import { Lab, type Node, type Pod } from "../../tests/helpers/netns.ts";

const BUILD_DIR = new URL("../../bpf/build", import.meta.url).pathname;
const RR_SCRIPT = new URL("./_rr.ts", import.meta.url).pathname;
export const IPERF_PORT = 5201, RR_PORT = 5202;
const EP = { client: 1, server: 2 } as const;
const SERVER_IDENTITY = 300, CLIENT_BASE = 1000;
/**
 * CPU pinning. Waking a process on the other CPU costs ~100 µs on small VMs, which would swamp
 * the per-packet cost RR measures: client and server share one CPU there. iperf3 gets one each.
 */
const CPU = {
  rr: 0,
  iperfClient: 0,
  iperfServer: navigator.hardwareConcurrency > 1 ? 1 : 0,
};

/** An address for the i-th extra (decoy) client identity: 10.201.0.0 + i (into 10.202/16 past 65,535). */
const decoyIp = (i: number) => `10.${201 + (i >> 16)}.${(i >> 8) & 0xff}.${i & 0xff}`;

const POLICY = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {role: client}}]
      toPorts: [{ports: [{port: "${IPERF_PORT}", protocol: TCP}, {port: "${RR_PORT}", protocol: TCP}]}]
`;

export interface PolicyFigures {
  /** The server's policy entries read back from the map (adjacent ports merged). */
  ranges: number;
  /** LPM keys written for them. */
  keys: number;
  computeMs: number;
  writeMs: number;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

export class BenchTopology implements AsyncDisposable {
  readonly lab: Lab;
  readonly node: Node;
  readonly client: Pod;
  readonly server: Pod;
  #sink: KernelSink | undefined;
  #engine: PolicyEngine | undefined;
  #policy: MapStateEntry[] = [];
  #ipcache: IpcacheEntry[] = [];
  #revision = 0;
  readonly #children: Deno.ChildProcess[] = [];

  private constructor(lab: Lab, node: Node, client: Pod, server: Pod) {
    this.lab = lab;
    this.node = node;
    this.client = client;
    this.server = server;
  }

  static async create(): Promise<BenchTopology> {
    const lab = await Lab.create();
    let t: BenchTopology | undefined;
    try {
      const node = await lab.addNode("node");
      const client = await lab.addPod(node, "client");
      const server = await lab.addPod(node, "server");
      t = new BenchTopology(lab, node, client, server);
      t.#spawn(server, ["iperf3", "-s", "-p", String(IPERF_PORT)], CPU.iperfServer);
      t.#spawn(
        server,
        [Deno.execPath(), "run", "-A", "--no-config", RR_SCRIPT, "server"]
          .concat(String(RR_PORT)),
        CPU.rr,
      );
      await t.#waitListening([IPERF_PORT, RR_PORT]);
      return t;
    } catch (e) {
      await (t ? t.close() : lab.close());
      throw e;
    }
  }

  /** A long-running server in a pod, pinned to a CPU; killed in close(). */
  #spawn(pod: Pod, argv: string[], cpu: number): void {
    this.#children.push(
      new Deno.Command("ip", {
        args: ["netns", "exec", pod.netns, "taskset", "-c", String(cpu), ...argv],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn(),
    );
  }

  async #waitListening(ports: number[]): Promise<void> {
    for (let i = 0; i < 100; i++) {
      const out = await this.lab.run(this.server.netns, ["ss", "-Htln"]);
      if (ports.every((p) => new RegExp(`:${p}\\s`).test(out))) return;
      await sleep(50);
    }
    throw new Error(`The bench servers did not start listening on ports ${ports.join(", ")}`);
  }

  /** iperf3 client → server; Gbit/s received. */
  async throughput(seconds: number): Promise<number> {
    const out = await this.lab.run(this.client.netns, [
      "taskset",
      "-c",
      String(CPU.iperfClient),
      "iperf3",
      "-c",
      this.server.ipv4,
      "-p",
      String(IPERF_PORT),
      "-t",
      String(seconds),
      "-J",
    ]);
    const j = JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } };
    return j.end.sum_received.bits_per_second / 1e9;
  }

  /** 1-byte TCP round trips per second (to the server, or to host: a service address). */
  async requestResponse(seconds: number, host = this.server.ipv4): Promise<number> {
    const out = await this.lab.run(this.client.netns, [
      "taskset",
      "-c",
      String(CPU.rr),
      Deno.execPath(),
      "run",
      "-A",
      "--no-config",
      RR_SCRIPT,
      "client",
      host,
      String(RR_PORT),
      String(seconds),
    ]);
    return (JSON.parse(out) as { perSec: number }).perSec;
  }

  /** The endpoint of a pod as the agent describes it to the sink. */
  #endpoint(which: keyof typeof EP): DatapathEndpoint {
    const pod = this[which];
    return {
      id: EP[which],
      identity: which === "client" ? CLIENT_BASE : SERVER_IDENTITY,
      name: which,
      namespace: "bench",
      ips: [pod.ipv4, pod.ipv6],
      ifname: pod.ifname,
      mac: pod.mac,
    };
  }

  /** Opens the agent's sink and attaches both pods: no policy, no default deny. */
  async attachCilia(): Promise<void> {
    const sink = this.#sink = await KernelSink.open({
      bpffsRoot: `${this.node.bpffs}/cilia`,
      buildDir: BUILD_DIR,
      log: new Logger({ level: "error" }),
      netns: this.node.netns,
    });
    await sink.updateIpcache([
      { prefix: this.client.ipv4, identity: CLIENT_BASE },
      { prefix: this.server.ipv4, identity: SERVER_IDENTITY },
    ], []);
    const open: EndpointFlags = {
      defaultDeny: { ingress: false, egress: false },
      enforcement: true,
    };
    for (const which of ["client", "server"] as const) {
      const change = { adds: [], deletes: [], revision: ++this.#revision, full: true };
      await sink.attach(this.#endpoint(which), open, change);
    }
  }

  /**
   * The server's ingress becomes default-deny with the engine's map-state of POLICY, where n client
   * identities (the real client's and n-1 others, each with an ipcache address) carry role=client.
   */
  async applyPolicy(n: number): Promise<PolicyFigures> {
    const sink = this.#sink;
    if (!sink) throw new Error("Cannot apply policy: cilia is not attached");
    let t = performance.now();
    this.#engine?.close();
    const engine = this.#engine = await PolicyEngine.create();
    const { spec } = compilePolicies([{ text: POLICY }]);
    const id = (labels: Record<string, string>) =>
      podIdentityLabels({ labels, namespace: "bench" });
    engine.upsertIdentities([
      ...RESERVED_IDENTITIES,
      { id: SERVER_IDENTITY, labels: id({ app: "server" }) },
      ...Array.from({ length: n }, (_, i) => ({
        id: CLIENT_BASE + i,
        labels: id({ app: `client-${i}`, role: "client" }),
      })),
    ]);
    engine.setPolicy(spec);
    engine.setEndpoints([
      { id: EP.client, identity: CLIENT_BASE, namedPorts: [] },
      { id: EP.server, identity: SERVER_IDENTITY, namedPorts: [] },
    ]);
    const ms = engine.computeMapState(EP.server);
    const computeMs = performance.now() - t;
    t = performance.now();
    // As the agent: ipcache first, then the policy diff, and only then the default deny.
    const ipcache = Array.from({ length: n - 1 }, (_, i) => ({
      prefix: decoyIp(i + 1),
      identity: CLIENT_BASE + i + 1,
    }));
    await sink.updateIpcache(ipcache, this.#ipcache);
    const diff = diffEntries(indexEntries(this.#policy), ms.entries);
    await sink.applyPolicy(EP.server, { ...diff, revision: ++this.#revision, full: true });
    await sink.updateEndpoint(this.#endpoint("server"), {
      defaultDeny: ms.defaultDeny,
      enforcement: ms.enforcement,
    });
    const writeMs = performance.now() - t;
    this.#policy = ms.entries;
    this.#ipcache = ipcache;
    const ranges = (await sink.datapath.dumpPolicy(EP.server)).length;
    const keys = new Set(
      ms.entries.flatMap((e) =>
        encodePolicyEntry(EP.server, policyEntryOf(e)).map((k) => k.key.join())
      ),
    ).size;
    return { ranges, keys, computeMs, writeMs };
  }

  /** Detaches cilia from both pods and removes the qdiscs (back to a bare veth). */
  async detachCilia(): Promise<void> {
    const sink = this.#sink;
    if (!sink) return;
    for (const which of ["client", "server"] as const) {
      await sink.removeEndpoint(this.#endpoint(which));
      await this.lab.run(this.node.netns, [
        "tc",
        "qdisc",
        "del",
        "dev",
        this[which].ifname,
        "clsact",
      ]);
    }
    await sink.close();
    this.#sink = undefined;
    this.#policy = [];
    this.#ipcache = [];
  }

  /**
   * The same filtering as n iptables rules in the node's FORWARD chain (policy DROP): replies
   * accepted through conntrack first (as cilia passes replies), then n-3 ACCEPTs for other
   * sources, the client's two ACCEPTs (iperf3, RR) last.
   */
  async iptables(n: number): Promise<number> {
    const s = this.server.ipv4,
      rule = (src: string, port: number) =>
        `-A FORWARD -s ${src}/32 -d ${s}/32 -p tcp -m tcp --dport ${port} -j ACCEPT`;
    const lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]"];
    lines.push("-A FORWARD -m conntrack --ctstate ESTABLISHED --ctdir REPLY -j ACCEPT");
    for (let i = 0; i < n - 3; i++) lines.push(rule(decoyIp(1 + i), i % 2 ? RR_PORT : IPERF_PORT));
    lines.push(rule(this.client.ipv4, IPERF_PORT), rule(this.client.ipv4, RR_PORT), "COMMIT", "");
    const r = await this.lab.exec(this.node.netns, ["iptables-restore"], lines.join("\n"));
    if (r.code !== 0) throw new Error(`iptables-restore exited with ${r.code}: ${r.stderr.trim()}`);
    const count = await this.lab.run(this.node.netns, ["iptables", "-S", "FORWARD"]);
    return count.split("\n").filter((l) => l.startsWith("-A FORWARD")).length;
  }

  async close(): Promise<void> {
    for (const c of this.#children) {
      try {
        c.kill("SIGKILL");
      } catch { /* already gone */ }
      await c.status;
    }
    this.#engine?.close();
    await this.#sink?.close();
    await this.lab.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
