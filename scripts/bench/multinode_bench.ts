// `deno task bench multinode [--quick] [--rounds N]`: pod-to-pod traffic across two nodes (issue
// #12), in one run: TCP throughput (iperf3) and 1-byte request/response rate (_rr.ts) over the
// bare underlay (two node namespaces on the same bridge routing each other's pod subnet, no
// cilia), over a plain kernel VXLAN between those (a profile row), through cilia in tunnel mode
// (VXLAN written and read by BPF, identity in the VNI; and, as an A/B row on the same pods, through
// the kernel's tunnel device only) and in native mode (routes), each with a policy in force on the
// server; ratios against the bare underlay: every round measures every setup, in an order
// rotated round by round, tunnel and native each right next to a run of the bare underlay, and
// a ratio is the median of the per-round ratios (5 rounds), so drift in the load of a shared
// machine cancels out (as bench lb does; _multinode_rounds.ts); the RR client and server run
// SCHED_FIFO. Then the time from a pod's CNI ADD on node 1 until node 2 enforces policy for it:
// its IP with its identity in node 2's kernel ipcache and node 2's server policy entries for that
// identity (both read from the pinned maps through node 2's API), p50/p99 over 50 pods with new
// labels. Targets: native ≥ 0.9× bare, tunnel ≥ 0.8× bare, remote policy in force < 1 s p99.
// With kernel.bpf_stats_enabled=1 (a machine-wide switch the bench leaves as it is) it also prints
// the time each of cilia's programs ran per RR round trip, both nodes together: a change to the
// datapath too small for the RR ratio's run-to-run noise shows there. Needs root, etcd and iperf3.
// Progress on stderr, the table on stdout; the labs are removed.
import { parseArgs } from "node:util";
import { Cluster, type ClusterNode } from "../../tests/helpers/cluster.ts";
import type { Lab, Node, Pod } from "../../tests/helpers/netns.ts";
import { setTunnelNetdevOnly } from "../../agent/datapath/netdev_loader.ts";
import {
  IPERF_PORT,
  measureRounds,
  median,
  type Path,
  type ProgCost,
  RR_PORT,
  startServers,
} from "./_multinode_rounds.ts";

const TARGET = { native: 0.9, tunnel: 0.8, remoteP99Ms: 1000 };
const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {role: client}}]
      toPorts: [{ports: [{port: "${IPERF_PORT}", protocol: TCP}, {port: "${RR_PORT}", protocol: TCP}]}]
`;

const progress = (msg: string) => console.error(`bench multinode: ${msg}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil((p / 100) * xs.length) - 1)]!;

/**
 * The bare underlay, in the tunnel cluster's lab: two more node netns on the same bridge, a pod
 * behind each (veth, /32 routes, as lab pods are), and a route to the other's pod subnet via its
 * node IP. No cilia, no BPF: the path native routing takes, without the datapath.
 */
async function bareUnderlay(cluster: Cluster): Promise<Path[]> {
  const lab = cluster.lab;
  const nodes: Node[] = [await lab.addNode("b1"), await lab.addNode("b2")];
  for (const n of nodes) {
    const port = `ul${lab.tag}${n.index}`;
    await lab.run(n.netns, [
      "sh",
      "-c",
      `ip link add eth0 type veth peer name ${port} netns ${cluster.underlay} && ` +
      `ip addr add 192.0.2.${n.index}/24 dev eth0 && ip link set eth0 up`,
    ]);
    await lab.run(cluster.underlay, ["ip", "link", "set", port, "master", "br0", "up"]);
  }
  const pods: Pod[] = [await lab.addPod(nodes[0]!, "bc"), await lab.addPod(nodes[1]!, "bs")];
  for (const [a, b] of [[0, 1], [1, 0]] as const) {
    const to = nodes[b]!;
    await lab.run(nodes[a]!.netns, [
      ...["ip", "route", "add", `10.200.${to.index}.0/24`, "via", `192.0.2.${to.index}`],
    ]);
  }
  const bare = {
    name: "bare underlay",
    lab,
    client: pods[0]!.netns,
    server: pods[1]!.netns,
    serverIp: pods[1]!.ipv4,
  };
  return [bare, await bareVxlan(lab, nodes)];
}

/**
 * A profile row, no target: the same two bare nodes with a plain kernel VXLAN device between them
 * (a fixed remote, MTU underlay − 50 as cilia's) and another pod pair routed through it: what
 * the encapsulation costs without cilia, so the tunnel row's gap splits into kernel and cilia.
 */
async function bareVxlan(lab: Lab, nodes: Node[]): Promise<Path> {
  const pods: Pod[] = [await lab.addPod(nodes[0]!, "vc"), await lab.addPod(nodes[1]!, "vs")];
  for (const [a, b] of [[0, 1], [1, 0]] as const) {
    const [me, peer] = [nodes[a]!, nodes[b]!];
    await lab.run(me.netns, [
      "sh",
      "-c",
      `ip link add vx0 type vxlan id 42 local 192.0.2.${me.index} remote 192.0.2.${peer.index} ` +
      `dstport 4789 dev eth0 && ip link set vx0 addrgenmode none mtu 1450 up && ` +
      `ip addr add 10.99.0.${a + 1}/30 dev vx0 && ` +
      `ip route add ${pods[b]!.ipv4}/32 via 10.99.0.${b + 1} dev vx0 mtu 1450`,
    ]);
  }
  return {
    name: "bare vxlan (profile)",
    lab,
    client: pods[0]!.netns,
    server: pods[1]!.netns,
    serverIp: pods[1]!.ipv4,
  };
}

/**
 * The A/B row of the tunnel: the same pods and cluster with VXLAN through the kernel's tunnel
 * device only (NAT_CFG_F_TUNNEL_NETDEV on both nodes while it is measured, bpf/lib/vxlan.h, 2.):
 * the path before BPF wrote and read VXLAN itself, measured interleaved with the BPF one.
 */
function tunnelDevicePath(cluster: Cluster, p: Path): Path {
  const set = async (on: boolean) => {
    for (const n of cluster.nodes) await setTunnelNetdevOnly(`${n.node.bpffs}/cilia`, on);
  };
  return { ...p, name: "cilia tunnel, device (A/B)", around: set };
}

/** A cluster in `mode` with client on node 1, server on node 2 and the policy in force. */
async function ciliaPath(mode: "tunnel" | "native"): Promise<{ cluster: Cluster; path: Path }> {
  const cluster = await Cluster.create({ nodes: 2, routingMode: mode });
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const client = await n1.addPod("client", { role: "client" });
  const server = await n2.addPod("server", { app: "server" });
  await n2.policy(POLICY);
  const cid = await identityOf(n1, "client");
  await until(`node-2 knows the client`, () => enforced(n2, client.ipv4, cid));
  const path = {
    name: `cilia ${mode}`,
    lab: cluster.lab,
    client: client.netns,
    server: server.netns,
    serverIp: server.ipv4,
  };
  return { cluster, path };
}

async function identityOf(n: ClusterNode, pod: string): Promise<number> {
  return ((await n.call("GET", `/v1/endpoint/default/${pod}`)).body as { identity: number })
    .identity;
}

/** Node 2's kernel has ip → identity and the server's ingress entries for that identity. */
async function enforced(n: ClusterNode, ip: string, identity: number): Promise<boolean> {
  if (!(await n.ipcache()).some((e) => e.prefix === `${ip}/32` && e.identity === identity)) {
    return false;
  }
  const r = await n.call("GET", "/v1/bpf/policy/default/server");
  const entries = (r.body as { entries?: { identity: number; direction: string }[] }).entries;
  return (entries ?? []).some((e) => e.identity === identity && e.direction === "ingress");
}

async function until(what: string, fn: () => Promise<boolean>, ms = 15_000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(5)) if (await fn()) return;
  throw new Error(`Timed out after ${ms} ms waiting until ${what}`);
}

/** CNI ADD of `count` pods with new labels on node 1; ms until node 2 enforces for each. */
async function remotePolicy(cluster: Cluster, count: number) {
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const fromAdd: number[] = [], fromReturn: number[] = [], add: number[] = [];
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    const pod = await n1.addPod(`lat${i}`, { role: "client", app: `lat-${i}` });
    const t1 = performance.now();
    const id = await identityOf(n1, `lat${i}`);
    await until(`node-2 enforces for lat${i}`, () => enforced(n2, pod.ipv4, id));
    const t2 = performance.now();
    add.push(t1 - t0), fromAdd.push(t2 - t0), fromReturn.push(t2 - t1);
    if ((i + 1) % 10 === 0) progress(`remote policy: ${i + 1}/${count} pods`);
  }
  return { add, fromAdd, fromReturn };
}

interface Row {
  setup: string;
  /** Medians of the rounds' figures. */
  gbps: number;
  rr: number;
  /** Medians of the per-round ratios against the bare underlay. */
  gbpsRatio: number;
  rrRatio: number;
}

function table(rows: Row[]): string {
  const head = ["setup", "Gbit/s", "vs bare", "RR/s", "vs bare", "target"];
  const body = rows.map((r) => {
    const target = r.setup === "cilia native"
      ? `≥ ${TARGET.native}×`
      : r.setup === "cilia tunnel"
      ? `≥ ${TARGET.tunnel}×`
      : "";
    return [
      r.setup,
      r.gbps.toFixed(2),
      r.gbpsRatio.toFixed(2),
      String(Math.round(r.rr)),
      r.rrRatio.toFixed(2),
      target,
    ];
  });
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => i === 0 || i === 5 ? c.padEnd(w[i]!) : c.padStart(w[i]!)).join("  ")
      .trimEnd();
  return [line(head), line(w.map((n) => "-".repeat(n))), ...body.map(line)].join("\n");
}

function verdicts(rows: Row[]): string[] {
  return rows.filter((r) => r.setup === "cilia tunnel" || r.setup === "cilia native").map((r) => {
    const mode = r.setup.endsWith("native") ? "native" : "tunnel";
    const g = r.gbpsRatio, rr = r.rrRatio;
    const ok = g >= TARGET[mode] && rr >= TARGET[mode];
    return `${r.setup}: ${g.toFixed(2)}× throughput, ${rr.toFixed(2)}× RR vs bare (target ≥ ${
      TARGET[mode]
    }×): ${ok ? "met" : "MISSED"}`;
  });
}

/**
 * cilia's programs per RR round trip (kernel.bpf_stats_enabled=1; medians over the rounds): the
 * figure to compare when a change to the datapath is too small for the RR ratio's noise.
 */
function progCosts(names: string[], progs: ProgCost[][]): string {
  const lines: string[] = [];
  names.forEach((name, i) => {
    const rounds = progs[i] ?? [];
    // Programs that ran for this path's packets (not a stray ARP or health probe meanwhile).
    const progNames = [...new Set(rounds.flatMap((r) => [...r.keys()]))].sort().filter((n) =>
      median(rounds.map((r) => r.get(n)?.runs ?? 0)) >= 0.5
    );
    if (progNames.length === 0) return;
    const cell = (n: string) => {
      const ns = median(rounds.map((r) => r.get(n)?.ns ?? 0));
      const runs = median(rounds.map((r) => r.get(n)?.runs ?? 0));
      return `${n} ${(ns / 1000).toFixed(2)} µs (${runs.toFixed(1)} runs)`;
    };
    const total = median(rounds.map((r) => progNames.reduce((a, n) => a + (r.get(n)?.ns ?? 0), 0)));
    lines.push(`  ${name}: ${(total / 1000).toFixed(2)} µs: ${progNames.map(cell).join(", ")}`);
  });
  return lines.length === 0
    ? "\n(cilia's program time per round trip: enable kernel.bpf_stats_enabled=1 to see it)"
    : `\ncilia's programs per RR round trip, both nodes (bpf_stats, medians of the rounds):\n${
      lines.join("\n")
    }`;
}

export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      rounds: { type: "string" },
      reps: { type: "string" }, // the former name of --rounds
    },
  });
  const quick = values.quick ?? false;
  const given = values.rounds ?? values.reps;
  const rounds = Number(given ?? (quick ? 2 : 5));
  if (!Number.isInteger(rounds) || rounds < 1) {
    throw new RangeError(`Invalid --rounds "${given}": expected a positive whole number`);
  }
  const o = { seconds: quick ? 1 : 2, rrSeconds: 1, rounds };
  const pods = quick ? 10 : 50;
  const clusters: Cluster[] = [];
  try {
    progress("starting two clusters (tunnel, native) and the bare underlay");
    const tunnel = await ciliaPath("tunnel");
    clusters.push(tunnel.cluster);
    const native = await ciliaPath("native");
    clusters.push(native.cluster);
    const paths = [
      ...await bareUnderlay(tunnel.cluster),
      tunnel.path,
      tunnelDevicePath(tunnel.cluster, tunnel.path),
      native.path,
    ];
    for (const p of paths.filter((p) => !p.around)) await startServers(p);
    const samples = await measureRounds(paths, o, [tunnel.path, native.path]);
    const rows = paths.map((p, i) => ({
      setup: p.name,
      gbps: median(samples.gbps[i]!),
      rr: median(samples.rr[i]!),
      gbpsRatio: i === 0 ? 1 : median(samples.gbpsRatio[i]!),
      rrRatio: i === 0 ? 1 : median(samples.rrRatio[i]!),
    }));
    progress(`remote policy: ${pods} pods on node-1, native mode, node-2 polled`);
    const lat = await remotePolicy(native.cluster, pods);
    console.log(
      `\nbench multinode: two nodes on one bridge, ${o.rounds} rounds of ${o.seconds} s ` +
        `(throughput) and ${o.rrSeconds} s (RR) per setup, setups alternated, tunnel and ` +
        `native next to a bare run each; figures are medians, ratios medians of per-round ` +
        `ratios\n`,
    );
    console.log(table(rows));
    console.log();
    for (const v of verdicts(rows)) console.log(v);
    console.log(progCosts(paths.map((p) => p.name), samples.progs));
    const ms = (xs: number[]) =>
      `p50 ${Math.round(pct(xs, 50))} ms, p99 ${Math.round(pct(xs, 99))} ms`;
    const judge = (xs: number[]) =>
      `${ms(xs)} (target p99 < ${TARGET.remoteP99Ms} ms: ${
        pct(xs, 99) < TARGET.remoteP99Ms ? "met" : "MISSED"
      })`;
    console.log(
      `\nremote policy in force on node-2 (${pods} pods with new labels, CNI ADD on node-1):\n` +
        `  from the ADD's start:   ${judge(lat.fromAdd)}\n` +
        `  after the ADD returned: ${judge(lat.fromReturn)}\n` +
        `  the ADD itself:         ${ms(lat.add)}`,
    );
  } finally {
    for (const c of clusters) await c.close();
  }
}
