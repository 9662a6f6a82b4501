// Visibility with real packets: the agent's monitor reads the kernel's events and turns them into
// flows with both pods' labels, the drop reason and the policy that decided (a default-deny drop
// names the policy that selected the endpoint, an allowed flow the rule that allowed it);
// `cilia observe` filters them in Hubble's vocabulary (live and from a saved file), `cilia
// monitor` streams raw events, `cilia bpf …` reads the maps through the agent, `policy trace
// --verify-kernel` compares the kernel's map entry with the engine, and `status` and `/metrics`
// report flows and lost events. One lab for the whole file. Needs root.
import assert from "node:assert/strict";
import type { Flow } from "../../agent/monitor/mod.ts";
import { CiliaNode, root } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`;

const dec = new TextDecoder();
type Stats = { followers: number };

async function cli(n: CiliaNode, args: string[], stdin?: string) {
  const out = await new Deno.Command(`${root}bin/cilia`, {
    args: [...args],
    env: { CILIA_DENO: Deno.execPath(), CILIA_HOST: `unix://${n.socket}`, NO_COLOR: "1" },
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/**
 * A streaming CLI child: `text()` is what it printed so far; `ctrlC()` sends SIGINT and returns
 * its exit code, stdout and stderr (SIGKILL if it has not ended in 5 s).
 */
function streaming(args: string[], env: Record<string, string>) {
  const child = new Deno.Command(`${root}bin/cilia`, {
    args,
    env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const stdout = (async () => {
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) text += chunk;
  })();
  const stderr = new Response(child.stderr).text();
  return {
    text: () => text,
    async ctrlC() {
      try {
        child.kill("SIGINT");
      } catch { /* it has ended: its status says how */ }
      const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
      try {
        const { code } = await child.status;
        await stdout;
        return { code, stdout: text, stderr: await stderr };
      } finally {
        clearTimeout(killer);
      }
    },
  };
}

/** Runs act (a denied probe, which takes its own time) until done() or 15 s have passed. */
async function repeatUntil(act: () => Promise<unknown>, done: () => boolean): Promise<void> {
  for (const deadline = Date.now() + 15_000; !done() && Date.now() < deadline;) await act();
}

const json = (text: string) =>
  text.split("\n").filter(Boolean).map((l) => JSON.parse(l) as { flow?: Flow });

Deno.test({
  name: "observe: flows from real packets with labels, reasons and the deciding policy",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  await using n = await CiliaNode.create();
  const frontend = await n.addPod("frontend", { app: "frontend" });
  const backend = await n.addPod("backend", { app: "backend" });
  for (const port of [8080, 9090]) await n.peer(backend.netns).listen("tcp", port);
  await n.policy(POLICY);
  const probe = (port: number, ms: number) =>
    n.peer(frontend.netns).probe("tcp", backend.ipv4, port, ms);

  await t.step("a denied connection is a DROPPED flow naming the policy", async () => {
    assert.equal(await probe(9090, 400), false);
    let drop: Flow | undefined;
    for (let i = 0; i < 200 && !drop; i++) { // up to 10 s: the monitor may lag
      drop = (await n.flows({ verdict: "DROPPED", port: "9090", type: "drop" })).flows[0];
      if (!drop) await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(drop, "a drop flow for port 9090");
    assert.equal(drop.drop_reason, 133);
    assert.equal(drop.drop_reason_desc, "POLICY_DENIED");
    assert.equal(drop.source.pod_name, "frontend");
    assert.equal(drop.destination.pod_name, "backend");
    assert.ok(drop.source.labels.includes("k8s:app=frontend"), drop.source.labels.join());
    assert.ok(drop.destination.labels.includes("k8s:app=backend"));
    assert.equal(drop.IP?.source, frontend.ipv4);
    assert.equal(drop.traffic_direction, "INGRESS");
    assert.equal(drop.policy?.name, "backend-ingress");
    assert.equal(drop.policy?.decision, "default-deny");
    assert.match(drop.policy!.text, /endpoint default\/backend is selected by .*backend-ingress/);
  });

  await t.step("an allowed connection names the rule that allowed it", async () => {
    assert.equal(await probe(8080, 3000), true);
    const ingress = (f: Flow) =>
      f.cilia_type === "policy-verdict" && f.traffic_direction === "INGRESS";
    let flows: Flow[] = [];
    for (let i = 0; i < 100; i++) { // the monitor may lag behind on a loaded machine
      flows = (await n.flows({ pod: "default/backend", port: "8080" })).flows;
      if (flows.some(ingress) && flows.some((f) => f.is_reply)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const verdict = flows.find(ingress);
    assert.ok(verdict, JSON.stringify(flows.map((f) => f.cilia_type)));
    assert.equal(verdict.verdict, "FORWARDED");
    assert.equal(verdict.policy?.decision, "allow-rule");
    assert.equal(verdict.policy?.rule, "spec.ingress[0].toPorts[0]");
    assert.ok(flows.some((f) => f.is_reply), "the reply is traced");
  });

  await t.step("cilia observe: filters, --not, -o json, and --input-file", async () => {
    const r = await cli(n, [
      "observe",
      "--to-pod",
      "default/backend",
      "--verdict",
      "DROPPED",
      "-o",
      "json",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const lines = json(r.stdout);
    assert.ok(lines.length > 0 && lines.every((l) => l.flow?.verdict === "DROPPED"));
    const not = await cli(n, ["observe", "--not", "--verdict", "DROPPED", "-o", "json"]);
    assert.ok(json(not.stdout).every((l) => l.flow?.verdict !== "DROPPED"));
    assert.ok(json(not.stdout).length > 0);
    const compact = await cli(n, ["observe", "--type", "drop", "--last", "1"]);
    assert.match(
      compact.stdout,
      /default\/frontend:\d+ \(app=frontend.*-> default\/backend:9090 \(app=backend.*DROPPED POLICY_DENIED \(133\)/,
    );
    assert.match(compact.stdout, /selected by CiliumNetworkPolicy default\/backend-ingress/);
    const all = await cli(n, ["observe", "-o", "json"]);
    const file = await Deno.makeTempFile({ suffix: ".json" });
    try {
      await Deno.writeTextFile(file, all.stdout);
      const f = await cli(n, ["observe", "--input-file", file, "--port", "9090", "-o", "json"]);
      assert.equal(f.code, 0, f.stderr);
      const saved = json(f.stdout);
      assert.ok(saved.length > 0 && saved.every((l) => l.flow?.l4 && "TCP" in l.flow.l4));
    } finally {
      await Deno.remove(file);
    }
    const bad = await cli(n, ["observe", "--verdict", "LOST"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /expected one of FORWARDED, DROPPED, AUDIT/);
  });

  await t.step("cilia monitor streams raw events; the API follows flows", async () => {
    // The drop line shows once the monitor is connected (a loaded machine starts it slowly).
    const DROP_LINE = /^drop \(Policy denied, 133\) ep=\d+ ingress identity \d+->\d+ TCP /m;
    const mon = streaming(["monitor", "--type", "drop"], {
      CILIA_DENO: Deno.execPath(),
      CILIA_HOST: `unix://${n.socket}`,
    });
    await repeatUntil(() => probe(9090, 300), () => DROP_LINE.test(mon.text()));
    const o = await mon.ctrlC();
    const out = o.stdout;
    assert.equal(o.code, 0, `cilia monitor exits 0 on Ctrl-C: ${o.stderr}`);
    assert.match(out, DROP_LINE);
  });

  await t.step("cilia observe --follow -o json streams new flows as they happen", async () => {
    const followers = async () => ((await n.flows({ last: "0" })).stats as Stats).followers;
    const before = await followers();
    const follow = streaming(["observe", "--follow", "-o", "json"], {
      CILIA_DENO: Deno.execPath(),
      CILIA_HOST: `unix://${n.socket}`,
      NO_COLOR: "1",
    });
    for (let i = 0; i < 100 && (await followers()) <= before; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const newDrops = (text: string) =>
      json(text.slice(0, text.lastIndexOf("\n") + 1)).filter((l) =>
        l.flow?.verdict === "DROPPED" && l.flow.l4 && "TCP" in l.flow.l4 &&
        l.flow.l4.TCP.destination_port === 9090
      );
    await repeatUntil(() => probe(9090, 300), () => newDrops(follow.text()).length > 0);
    const o = await follow.ctrlC();
    assert.equal(o.code, 0, `cilia observe exits 0 on Ctrl-C: ${o.stderr}`);
    const drops = newDrops(o.stdout);
    assert.ok(drops.length > 0, "the new drop reached the follower");
    assert.equal(drops[0]!.flow!.destination?.pod_name, "backend");
  });

  await t.step("cilia bpf policy get, ct list, ipcache list", async () => {
    const pol = await cli(n, ["bpf", "policy", "get", "default/backend", "-o", "json"]);
    assert.equal(pol.code, 0, pol.stderr);
    const rows = JSON.parse(pol.stdout) as { portLo: number; verdict: string; rule?: string }[];
    const allow = rows.find((r) => r.portLo === 8080);
    assert.equal(allow?.verdict, "allow");
    assert.match(allow?.rule ?? "", /backend-ingress spec\.ingress\[0\]\.toPorts\[0\]/);
    const ct = await cli(n, ["bpf", "ct", "list"]);
    assert.match(ct.stdout, new RegExp(`${backend.ipv4.replaceAll(".", "\\.")}:8080`));
    const ipc = await cli(n, ["bpf", "ipcache", "list", "-o", "yaml"]);
    assert.match(ipc.stdout, new RegExp(`prefix: ${frontend.ipv4}/32`));
  });

  await t.step("policy trace --verify-kernel: kernel and engine agree", async () => {
    for (const port of ["8080", "9090"]) {
      const r = await cli(n, [
        "policy",
        "trace",
        "--live",
        "--verify-kernel",
        "--src-endpoint",
        "default/frontend",
        "--dst-endpoint",
        "default/backend",
        "--dport",
        `${port}/TCP`,
      ]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /Kernel ingress \(default\/backend\): .*kernel and engine agree/);
    }
  });

  await t.step("status and metrics report flows and lost events", async () => {
    const s = await cli(n, ["status"]);
    assert.match(s.stdout, /Flows: +recording, buffer \d+\/4095 flows/);
    assert.match(s.stdout, /Lost events: 0/);
    const m = await n.metrics();
    assert.match(m, /cilia_flows_processed_total\{type="drop",verdict="DROPPED"\} [1-9]/);
    assert.match(
      m,
      /cilia_policy_verdict_total\{action="allow",direction="INGRESS",match="l3-l4"\} [1-9]/,
    );
    assert.match(
      m,
      /cilia_bpf_map_ops_total\{map="cilia_policy",op="update",outcome="success"\} [1-9]/,
    );
    assert.match(m, /cilia_endpoint_regeneration_seconds_count [1-9]/);
    assert.match(m, /cilia_flows_lost_total\{source="perf"\} 0/);
  });
});
