// Every metric the Grafana dashboard (examples/grafana/cilia-dashboard.json) names is one the
// agent registers, and every label value the agent exports comes from a bounded set (no endpoint
// ids, IPs, pod names or raw URL paths as labels). The names come from an in-process agent's
// scrape plus the datapath metrics a kernel agent registers (fed by a fake metrics map), after
// some work: endpoints, a policy, API calls and monitor events.
import assert from "node:assert/strict";
import { DROP_REASONS } from "@cilia/policy-wasm";
import { VERDICT_NAMES } from "../../agent/datapath/codecs.ts";
import { Metrics } from "../../agent/metrics.ts";
import type { KernelSink } from "../../agent/datapath/kernel_sink.ts";
import { registerDatapathMetrics } from "../../agent/datapath/kernel_sink.ts";
import { FLOW_TYPES, FLOW_VERDICTS } from "../../agent/monitor/flow.ts";
import { endpointBody, POLICY_HTTP, startAgent } from "./_fixture.ts";
import { event, frame } from "../monitor/_events.ts";
import { DASHBOARD, dashboardExprs, metricNames } from "./_dashboard.ts";

/** Registered names from a Prometheus text scrape (histograms also as _bucket/_sum/_count). */
function registered(text: string): Set<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(m[1]!);
    if (m[2] === "histogram") {
      for (const s of ["_bucket", "_sum", "_count"]) names.add(m[1] + s);
    }
  }
  return names;
}

/** Dashboard names the agent does not register. */
function unknownNames(exprs: string[], known: Set<string>): string[] {
  return [...new Set(exprs.flatMap(metricNames))].filter((n) => !known.has(n));
}

interface Sample {
  name: string;
  labels: Record<string, string>;
}

function samples(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    const m = /^([a-z_:][a-z0-9_:]*)(?:\{(.*)\})? \S+$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels });
  }
  return out;
}

const IP = /^(\d{1,3}\.){3}\d{1,3}(\/\d+)?$|^[0-9a-f:]*:[0-9a-f:]+(\/\d+)?$/i;
const reasons = new Set([...DROP_REASONS.values()].map(([, desc]) => desc));

/** Label name → whether a value belongs to its bounded set. */
const BOUNDED: Record<string, (v: string) => boolean> = {
  direction: (v) => v === "INGRESS" || v === "EGRESS",
  reason: (v) => reasons.has(v) || /^reason \d{1,3}$/.test(v),
  state: (v) => ["ready", "not-ready"].includes(v),
  outcome: (v) => ["success", "error", "failure"].includes(v),
  type: (v) => (FLOW_TYPES as readonly string[]).includes(v),
  verdict: (v) => (FLOW_VERDICTS as readonly string[]).includes(v),
  action: (v) => (VERDICT_NAMES as readonly string[]).includes(v) || v === "audit",
  match: (v) => ["none", "l3-only", "l3-l4", "all", "l4-only"].includes(v),
  source: (v) => ["perf", "slow-reader"].includes(v),
  kind: (v) => ["held", "capacity", "full", "incremental"].includes(v),
  map: (v) => /^cilia_[a-z_]+$/.test(v),
  op: (v) => /^[a-z_]+$/.test(v),
  backend: (v) => ["denokv", "etcd"].includes(v),
  // The route pattern (`/v1/endpoint/:id`), never the request's path.
  path: (v) => v === "unmatched" || /^\/\S*$/.test(v) && !/\/\d+(\/|$)/.test(v),
  code: (v) => /^[1-5]\d\d$/.test(v),
  le: (v) => v === "+Inf" || Number.isFinite(Number(v)),
};

Deno.test("the Grafana dashboard uses only metrics the agent registers", async (t) => {
  const exprs = dashboardExprs(JSON.parse(await Deno.readTextFile(DASHBOARD)));
  assert.ok(exprs.length >= 10, `expressions found: ${exprs.length}`);
  const a = await startAgent();
  try {
    const ep = await a.call("PUT", "/v1/endpoint/7", endpointBody("web", { app: "web" }));
    assert.equal(ep.status, 201, JSON.stringify(ep.body));
    assert.equal((await a.call("PUT", "/v1/policy", POLICY_HTTP)).status, 200);
    await a.call("GET", "/v1/endpoint/12345");
    await a.call("GET", "/no/such/route");
    for (const [type, verdict] of [["drop", "deny"], ["policy-verdict", "allow"]] as const) {
      a.agent.monitor.ingest(event({
        type,
        verdict,
        subtype: type === "drop" ? 133 : 0,
        match: 2,
        data: frame("10.200.0.7", "10.200.0.9", { proto: 6, sport: 40000, dport: 80 }),
      }));
    }
    const agentText = await a.agent.metrics.scrape();
    // What a kernel agent adds (agent.ts registers it when the datapath runs).
    const kernel = new Metrics();
    const fake = {
      readMetrics: () =>
        Promise.resolve([
          { reason: 0, dir: "ingress", packets: 7n, bytes: 700n },
          { reason: 133, dir: "ingress", packets: 2n, bytes: 120n },
          { reason: 181, dir: "egress", packets: 1n, bytes: 60n },
          { reason: 250, dir: "egress", packets: 1n, bytes: 60n },
        ]),
    } as unknown as KernelSink;
    registerDatapathMetrics(kernel, fake);
    const text = agentText + await kernel.scrape();
    const known = registered(text);

    await t.step("every dashboard metric exists", () => {
      assert.deepEqual(unknownNames(exprs, known), [], "dashboard metrics the agent lacks");
      const missing = unknownNames(["cilia_no_such_metric_total + cilia_drop_count_total"], known);
      assert.deepEqual(missing, ["cilia_no_such_metric_total"], "the check catches a typo");
    });

    await t.step("the dashboard shows every metric the issue names", () => {
      const used = new Set(exprs.flatMap(metricNames));
      for (
        const name of [
          "cilia_drop_count_total",
          "cilia_forward_count_total",
          "cilia_policy_verdict_total",
          "cilia_endpoint_state",
          "cilia_identity_count",
          "cilia_bpf_map_ops_total",
          "cilia_flows_processed_total",
          "cilia_flows_lost_total",
          "cilia_endpoint_regeneration_seconds_bucket",
        ]
      ) assert.ok(used.has(name), `the dashboard uses ${name}`);
    });

    await t.step("label values come from bounded sets", () => {
      const all = samples(text);
      assert.ok(
        all.some((s) => s.name === "cilia_api_requests_total" && s.labels.path?.includes(":")),
      );
      assert.ok(all.some((s) => s.name === "cilia_drop_count_total" && s.labels.reason));
      assert.ok(all.some((s) => s.name === "cilia_policy_verdict_total"));
      for (const s of all) {
        for (const [k, v] of Object.entries(s.labels)) {
          const where = `${s.name}{${k}="${v}"}`;
          assert.ok(!IP.test(v), `${where}: an address as a label value`);
          const ok = BOUNDED[k];
          assert.ok(ok, `${where}: label "${k}" has no bounded set in this test; add one`);
          assert.ok(ok(v), `${where}: not in the bounded set of "${k}"`);
        }
      }
    });
  } finally {
    await a.close();
  }
});
