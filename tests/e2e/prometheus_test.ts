// The agent's metrics scraped by a real Prometheus (Debian's `prometheus`): a lab node runs the
// agent with `--metrics-addr`, Prometheus runs inside the same node netns (scrape interval 1 s,
// its TSDB in the lab dir), real packets make a drop and a forward, and the values are read back
// through Prometheus's HTTP API with their labels. A scrape that Prometheus cannot parse shows up
// as the target's lastError. Needs root.
import assert from "node:assert/strict";
import { CiliaNode, POD_CIDR, POD_CIDR_V6, root } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { DASHBOARD, dashboardExprs } from "../agent/_dashboard.ts";

const METRICS = "127.0.0.1:9962";
const PROM = "127.0.0.1:9090";

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`;

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Restarts the node's agent with `--metrics-addr` (same state, socket and bpffs). */
async function agentWithMetrics(n: CiliaNode): Promise<Deno.ChildProcess> {
  await n.stopAgent();
  const argv = n.lab.nodeArgv(n.node, [
    `${root}bin/cilia-agent`,
    ...["--state-dir", `${n.dir}/state`, "--socket", n.socket, "--node-name", "node-1"],
    ...["--pod-cidr", POD_CIDR, "--pod-cidr-v6", POD_CIDR_V6, "--lease-ttl", "5s"],
    ...["--metrics-addr", METRICS],
  ]);
  const child = new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    env: { CILIA_DENO: Deno.execPath() },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  // Generous: a first start on a loaded machine transpiles the agent (a cold cache) slowly.
  for (const deadline = Date.now() + 60_000; Date.now() < deadline;) {
    const up = await n.api.call("GET", "/v1/healthz").then((r) => r.status === 200, () => false);
    if (up) return child;
    await sleep(50);
  }
  child.kill("SIGKILL");
  await child.status;
  throw new Error("The agent with --metrics-addr did not start within 60 s");
}

async function startPrometheus(n: CiliaNode): Promise<Deno.ChildProcess> {
  const dir = `${n.lab.dir}/prometheus`;
  await Deno.mkdir(dir);
  await Deno.writeTextFile(
    `${dir}/prometheus.yml`,
    `global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: cilia
    static_configs: [{targets: ["${METRICS}"]}]
`,
  );
  return new Deno.Command("ip", {
    args: [
      ...["netns", "exec", n.node.netns, "prometheus"],
      `--config.file=${dir}/prometheus.yml`,
      `--storage.tsdb.path=${dir}/data`,
      `--web.listen-address=${PROM}`,
      "--log.level=error",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
}

/** GET on Prometheus's HTTP API from inside the node netns (curl). */
async function promApi(n: CiliaNode, path: string, query?: string): Promise<unknown> {
  const args = ["-sfG", `http://${PROM}${path}`, ...(query ? ["--data-urlencode", query] : [])];
  const r = await n.lab.exec(n.node.netns, ["curl", ...args]);
  if (r.code !== 0) throw new Error(`curl ${path} exited with ${r.code}: ${r.stderr}`);
  const body = JSON.parse(r.stdout) as { status: string; data: unknown };
  if (body.status !== "success") throw new Error(`Prometheus answered ${r.stdout}`);
  return body.data;
}

/** Polls an instant query until `ok` holds for its samples (or fails after 10 s). */
async function query(
  n: CiliaNode,
  promql: string,
  ok: (s: Sample[]) => boolean,
): Promise<Sample[]> {
  let last: unknown;
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(250)) {
    try {
      const data = await promApi(n, "/api/v1/query", `query=${promql}`) as { result: Sample[] };
      last = data.result;
      if (ok(data.result)) return data.result;
    } catch (err) {
      last = err;
    }
  }
  throw new Error(`Prometheus query "${promql}" never matched; last: ${JSON.stringify(last)}`);
}

const positive = (s: Sample) => Number(s.value[1]) > 0;

Deno.test({
  name: "metrics: Prometheus scrapes the agent and reads drops and forwards back",
  ...needsRoot(["prometheus", "curl"]),
  sanitizeResources: false,
}, async () => {
  await using n = await CiliaNode.create();
  let prom: Deno.ChildProcess | undefined;
  let agent: Deno.ChildProcess | undefined;
  try {
    prom = await startPrometheus(n);
    agent = await agentWithMetrics(n);
    const client = await n.addPod("client", { app: "client" });
    const server = await n.addPod("server", { app: "server" });
    for (const port of [8080, 9090]) await n.peer(server.netns).listen("tcp", port);
    await n.policy(POLICY);
    const probe = (port: number, ms: number) =>
      n.peer(client.netns).probe("tcp", server.ipv4, port, ms);
    assert.equal(await probe(8080, 2000), true, "8080 is allowed");
    assert.equal(await probe(9090, 300), false, "9090 is dropped");

    const drops = await query(
      n,
      'cilia_drop_count_total{reason="Policy denied"}',
      (s) => s.some(positive),
    );
    assert.ok(
      drops.some((s) => s.metric.direction === "INGRESS" && s.metric.job === "cilia"),
      JSON.stringify(drops),
    );
    const fwd = await query(n, "cilia_forward_count_total", (s) => s.some(positive));
    assert.ok(fwd.every((s) => ["INGRESS", "EGRESS"].includes(s.metric.direction!)));
    const verdicts = await query(
      n,
      'cilia_policy_verdict_total{direction="INGRESS",action="allow"}',
      (s) => s.some(positive),
    );
    assert.ok(verdicts.some((s) => s.metric.match === "l3-l4"), JSON.stringify(verdicts));
    await query(
      n,
      'cilia_flows_processed_total{type="drop",verdict="DROPPED"}',
      (s) => s.some(positive),
    );
    await query(n, 'cilia_endpoint_state{state="ready"}', (s) => s.some((x) => x.value[1] === "2"));
    await query(n, "cilia_endpoint_regeneration_seconds_count", (s) => s.some(positive));
    const up = await query(n, 'up{job="cilia"}', (s) => s.some((x) => x.value[1] === "1"));
    assert.equal(up.length, 1);
    const targets = await promApi(n, "/api/v1/targets") as {
      activeTargets: { health: string; lastError: string; labels: Record<string, string> }[];
    };
    const t = targets.activeTargets.find((x) => x.labels.job === "cilia");
    assert.equal(t?.health, "up", JSON.stringify(targets));
    assert.equal(t?.lastError, "", "Prometheus parses the exposition without errors");
    // The shipped dashboard's PromQL parses and evaluates on this Prometheus.
    const dash = JSON.parse(
      await Deno.readTextFile(DASHBOARD),
    );
    for (const e of dashboardExprs(dash).filter((x) => !x.startsWith("label_values("))) {
      const promql = e.replaceAll("$instance", ".*").replaceAll("$__rate_interval", "1m");
      await promApi(n, "/api/v1/query", `query=${promql}`);
    }
  } finally {
    for (const p of [prom, agent]) {
      try {
        p?.kill("SIGKILL");
      } catch { /* gone */ }
      await p?.status;
    }
    await prom?.stderr.cancel().catch(() => {});
  }
});
