// `deno task demo --nodes 2 [--routing-mode tunnel|native] [--once]`: the demo across nodes.
// Two (or more) node namespaces on an underlay bridge with one real etcd, `bin/cilia-agent` on
// each (tests/helpers/cluster.ts, the cluster the multi-node tests run), pods added on both
// nodes through `bin/cilia-cni`, examples/policies/three-tier.yaml imported on node 1 and in
// force on every node through the kvstore. It sends allowed and denied connections across
// nodes and tells each verdict as the receiving node saw it, from that agent's flows API (the
// sender's identity and labels: in the VNI in tunnel mode, from the ipcache by source address in
// native mode). Everything lives in one lab (`cl<tag>-` namespaces, /tmp/cilia-lab-<tag>) that
// close() removes, also after errors; a killed demo's lab is swept by the next one.
import { Cluster, type ClusterNode } from "../../tests/helpers/cluster.ts";
import type { TestPod } from "../../tests/cni/_fixture.ts";
import type { Flow as FlowRecord } from "../../agent/monitor/mod.ts";
import { shortLabels } from "./_traffic.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const POLICY = "examples/policies/three-tier.yaml";
const color = Deno.stdout.isTerminal() && !Deno.env.get("NO_COLOR");
const paint = (code: string) => (s: string) => color ? `\x1b[${code}m${s}\x1b[0m` : s;
const [green, red, dim, bold] = [paint("32"), paint("31"), paint("2"), paint("1")];
const say = (s = "") => console.log(s);
const row = (k: string, v: string) => say(`  ${k.padEnd(11)}${v}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface MultinodeOptions {
  /** `--nodes` as given. */
  nodes: string | undefined;
  /** `--routing-mode` as given. */
  routingMode: string | undefined;
  once: boolean;
  /** Root, bpffs and tools (the single-node demo's check); returns what it found. */
  preflight(): Promise<string>;
}

/** Where each pod runs: the frontend and the db on node 1, the backend on the last node. */
const PODS = [
  { name: "frontend", node: 0 },
  { name: "db", node: 0 },
  { name: "backend", node: -1 },
] as const;

interface CrossFlow {
  from: string;
  to: string;
  proto: "tcp" | "icmp";
  port: number;
  expect: "allowed" | "denied";
}

/** Every flow crosses nodes; the drops happen at the receiver (node 2's backend ingress). */
const FLOWS: readonly CrossFlow[] = [
  { from: "frontend", to: "backend", proto: "tcp", port: 8080, expect: "allowed" },
  { from: "frontend", to: "backend", proto: "tcp", port: 9090, expect: "denied" },
  { from: "frontend", to: "backend", proto: "icmp", port: 0, expect: "denied" },
  { from: "backend", to: "db", proto: "tcp", port: 5432, expect: "allowed" },
];
const LISTEN: Record<string, number[]> = { backend: [8080, 9090], db: [5432] };

/** Validated options: a clear error for each bad value. */
export function parseMultinode(
  o: { nodes?: string | undefined; routingMode?: string | undefined },
) {
  const nodes = Number(o.nodes ?? "2");
  if (!/^\d+$/.test(o.nodes ?? "2") || nodes < 2 || nodes > 4) {
    throw new RangeError(`Invalid --nodes "${o.nodes}": expected a number from 2 to 4`);
  }
  const mode = o.routingMode ?? "tunnel";
  if (mode !== "tunnel" && mode !== "native") {
    throw new RangeError(`Invalid --routing-mode "${mode}": expected "tunnel" or "native"`);
  }
  return { nodes, routingMode: mode as "tunnel" | "native" };
}

interface Placed extends TestPod {
  node: ClusterNode;
  identity: number;
}

class Interrupted extends Error {}

/** Runs the demo across nodes; returns the exit code. */
export async function runMultinode(opts: MultinodeOptions): Promise<number> {
  let cluster: Cluster | undefined;
  let interrupted = false;
  const stop = Promise.withResolvers<void>();
  const onSignal = () => {
    interrupted = true;
    stop.resolve();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const check = () => {
    if (interrupted) throw new Interrupted();
  };
  let code = 1;
  try {
    const { nodes, routingMode } = parseMultinode(opts);
    say(bold(`cilia demo: ${nodes} nodes on an underlay, one etcd, pods on every node`));
    say();
    row("preflight", await opts.preflight());
    if (!await exists("etcd")) throw new Error(`"etcd" is missing: run scripts/setup first`);
    const t = performance.now();
    cluster = await Cluster.create({ nodes, routingMode });
    check();
    row(
      "underlay",
      `bridge 192.0.2.254/24 in ${cluster.underlay}, etcd at 192.0.2.254:2379 (ready in ${
        ((performance.now() - t) / 1000).toFixed(1)
      } s)`,
    );
    for (const n of cluster.nodes) {
      row(n === cluster.nodes[0] ? "nodes" : "", `${n.name}  ${n.ip.padEnd(10)} pods ${n.podCidr}`);
    }
    row("", dim(`bin/cilia-agent on each, --routing-mode ${routingMode}${modeText(routingMode)}`));
    code = await scene(cluster, routingMode, check, opts.once ? undefined : stop.promise);
  } catch (err) {
    if (err instanceof Interrupted) code = 130;
    else {
      console.error(red(`\ndemo: ${err instanceof Error ? err.message : err}`));
      for (const n of cluster?.nodes ?? []) {
        console.error(dim(`${n.name} agent log (last lines):\n${tail(n.log)}`));
      }
    }
  } finally {
    if (cluster) {
      say();
      say(dim("  cleaning up: the agents, etcd, the namespaces, the bpffs…"));
      await cluster.close();
      say(dim(`  removed everything the demo made (${cluster.lab.dir}, ${cluster.lab.prefix}*)`));
    }
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
  return code;
}

const modeText = (m: string) =>
  m === "tunnel"
    ? " (VXLAN on cilia_vxlan, the sender's identity in the VNI)"
    : " (routes via the node IP, the receiver looks the source address up in its ipcache)";

/** Pods, policy, traffic and the receiving node's flows; then the live wait, given `stopped`. */
async function scene(
  cluster: Cluster,
  mode: string,
  check: () => void,
  stopped: Promise<void> | undefined,
): Promise<number> {
  const pods = new Map<string, Placed>();
  for (const [i, p] of PODS.entries()) {
    const node = cluster.nodes.at(p.node)!;
    const t = performance.now();
    const pod = await node.addPod(p.name, { app: p.name });
    const ms = Math.round(performance.now() - t);
    const ep = (await node.call("GET", `/v1/endpoint/default/${p.name}`)).body as {
      identity: number;
    };
    pods.set(p.name, { ...pod, node, identity: ep.identity });
    row(
      i === 0 ? "pods (CNI)" : "",
      `${p.name.padEnd(9)}${pod.ipv4.padEnd(12)}on ${node.name}  app=${p.name.padEnd(9)}` +
        `identity ${String(ep.identity).padEnd(6)}${dim(`CNI ADD ${ms} ms`)}`,
    );
    check();
  }
  const first = cluster.nodes[0]!;
  row("policy", `bin/cilia policy import ${POLICY} on ${first.name}: ${await importPolicy(first)}`);
  const t = performance.now();
  await inForce(cluster, [...pods.values()]);
  row("", dim(`in force on every node through etcd after ${Math.round(performance.now() - t)} ms`));
  check();
  const frontend = pods.get("frontend")!, backend = pods.get("backend")!;
  const seen = (await backend.node.ipcache()).find((e) => e.prefix === `${frontend.ipv4}/32`);
  row(
    "ipcache",
    `${backend.node.name} knows frontend ${frontend.ipv4} as identity ${seen?.identity}` +
      (seen?.tunnelEndpoint ? `, tunnel endpoint ${seen.tunnelEndpoint}` : ""),
  );
  for (const [name, ports] of Object.entries(LISTEN)) {
    for (const port of ports) await cluster.lab.peer(pods.get(name)!.netns).listen("tcp", port);
  }
  const wrong = await traffic(cluster, pods, check);
  await observe(backend.node);
  if (stopped) await live(cluster, pods, mode, stopped);
  return wrong === 0 ? 0 : 1;
}

async function traffic(cluster: Cluster, pods: Map<string, Placed>, check: () => void) {
  say();
  say(
    bold(
      "  traffic across nodes                        result    why (the receiving node's flows)",
    ),
  );
  let wrong = 0, allowedCount = 0;
  for (const f of FLOWS) {
    check();
    const from = pods.get(f.from)!, to = pods.get(f.to)!;
    const since = new Date().toISOString();
    const allowed = f.proto === "icmp"
      ? await cluster.lab.ping(from.netns, to.ipv4, { timeoutSec: 1 })
      : await cluster.lab.peer(from.netns).probe(
        "tcp",
        to.ipv4,
        f.port,
        f.expect === "allowed" ? 3000 : 700,
      );
    if (allowed) allowedCount++;
    const as = (allowed ? "allowed" : "denied") === f.expect;
    if (!as) wrong++;
    const flow = await receiverFlow(to, f, allowed, since);
    const why = flow ? flowLine(flow, to.node.name) : allowed ? "" : "no drop flow seen";
    const what = `${f.from}@${from.node.name} → ${f.to}@${to.node.name}`.padEnd(34) +
      (f.proto === "tcp" ? `TCP ${f.port}` : "ping").padEnd(10);
    say(
      `  ${what}${allowed ? green("allowed ") : red("dropped ")}  ${allowed ? dim(why) : why}${
        as ? "" : red("  UNEXPECTED")
      }`,
    );
  }
  say();
  const verdicts = wrong === 0
    ? green("every verdict as the policy says")
    : red(`${wrong} unexpected`);
  say(
    `  ${FLOWS.length} flows: ${allowedCount} allowed, ${
      FLOWS.length - allowedCount
    } dropped — ${verdicts}`,
  );
  return wrong;
}

/** The flow the receiving node recorded for a probe: its drop, or its allowed verdict. */
async function receiverFlow(
  to: Placed,
  f: CrossFlow,
  allowed: boolean,
  since: string,
): Promise<FlowRecord | undefined> {
  const q: Record<string, string> = {
    since,
    "to-pod": `default/${f.to}`,
    verdict: allowed ? "FORWARDED" : "DROPPED",
    protocol: f.proto,
    ...(f.proto === "tcp" ? { port: String(f.port) } : {}),
  };
  for (let i = 0; i < 10; i++) {
    const flows = await to.node.flows(q);
    const hit = flows.find((x) => x.traffic_direction === "INGRESS" && (!allowed || x.policy));
    if (hit) return hit;
    await sleep(100);
  }
  return undefined;
}

/** "POLICY_DENIED (133) at backend ingress on node-2: 1234 (app=frontend) → 5678 (app=backend)" */
function flowLine(f: FlowRecord, node: string): string {
  const side = (e: FlowRecord["source"]) => `${e.identity} (${shortLabels(e.labels)})`;
  const peers = `${side(f.source)} → ${side(f.destination)}`;
  if (f.verdict === "DROPPED") {
    return `${f.drop_reason_desc} (${f.drop_reason}) at ${f.destination.pod_name} ingress on ${node}: ${peers}`;
  }
  return `${f.destination.pod_name} ingress on ${node}: ${
    f.policy?.decision ?? "allowed"
  }, ${peers}`;
}

/** `cilia observe` against the receiving node: the drops with both sides' labels and the policy. */
async function observe(node: ClusterNode): Promise<void> {
  const args = ["observe", "--type", "drop", "--to-pod", "default/backend", "--last", "2"];
  say();
  say(bold(`  $ cilia -H unix://${node.socket} ${args.join(" ")}`));
  const out = await new Deno.Command(`${ROOT}bin/cilia`, {
    args: [...args, "-H", `unix://${node.socket}`],
    env: { CILIA_DENO: Deno.execPath() },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.code === 0 ? out.stdout : out.stderr);
  for (const l of text.trimEnd().split("\n")) say(`  ${l}`);
}

async function live(
  cluster: Cluster,
  pods: Map<string, Placed>,
  mode: string,
  stopped: Promise<void>,
): Promise<void> {
  const f = pods.get("frontend")!, b = pods.get("backend")!;
  say();
  say(bold(`  The cluster runs (${mode} mode) until Ctrl-C, which removes everything. Try:`));
  say(`    ip netns exec ${f.netns} ping -c1 ${b.ipv4}`);
  for (const n of cluster.nodes) say(`    bin/cilia -H unix://${n.socket} node list`);
  say(`    bin/cilia -H unix://${b.node.socket} observe --follow --to-pod default/backend`);
  await stopped;
}

async function importPolicy(node: ClusterNode): Promise<string> {
  const o = await new Deno.Command(`${ROOT}bin/cilia`, {
    args: ["policy", "import", `${ROOT}${POLICY}`, "-H", `unix://${node.socket}`],
    env: { CILIA_DENO: Deno.execPath() },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  if (o.code !== 0) throw new Error(`cilia policy import failed: ${dec.decode(o.stderr).trim()}`);
  return dec.decode(o.stdout).trim();
}

/** Every node holds the policy's 3 documents, realised, and knows every other node's pods. */
async function inForce(cluster: Cluster, pods: Placed[]): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (const n of cluster.nodes) {
    for (;;) {
      const s = (await n.call("GET", "/v1/status")).body as {
        realised: boolean;
        policy: { count: number; revision: number; realisedRevision: number };
      };
      const known = new Set((await n.ipcache()).map((e) => e.prefix));
      const remote = pods.filter((p) => p.node !== n).every((p) => known.has(`${p.ipv4}/32`));
      if (s.policy.count === 3 && s.realised && remote) break;
      if (Date.now() > deadline) {
        throw new Error(`${n.name} did not get the policy and the other nodes' pods within 15 s`);
      }
      await sleep(100);
    }
  }
}

async function exists(bin: string): Promise<boolean> {
  try {
    const o = await new Deno.Command(bin, { args: ["--version"], stdout: "null", stderr: "null" })
      .output();
    return o.code === 0;
  } catch {
    return false;
  }
}

const tail = (log: string, lines = 10) => log.trim().split("\n").slice(-lines).join("\n");
