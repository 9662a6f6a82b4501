// Suggest (policy-wasm/src/suggest_flows.ts, suggest_scenario.ts): least-privilege policies from
// observed flows — valid, lint-clean, peers by identity labels — and the scenario that comes with
// them: every observed connection allowed, near misses and dropped connections denied, all of it
// judged by the engine.

import assert from "node:assert/strict";
import { parse } from "yaml";
import {
  compilePolicies,
  lintPolicies,
  loadScenario,
  observeFlows,
  policiesYaml,
  PolicyEngine,
  replayTraffic,
  runScenario,
  scenarioYaml,
  suggestPolicies,
  suggestScenario,
} from "@cilia/policy-wasm";
import { threeTierFlows } from "./_flows.ts";

const root = new URL("../../", import.meta.url).pathname;
const hubble = Deno.readTextFileSync(`${root}tests/policy/fixtures/flows/hubble_starwars.ndjson`);

for (const [name, text] of [["cilia", threeTierFlows()], ["Hubble", hubble]] as const) {
  Deno.test(`suggestPolicies() from ${name} flows: valid, lint-clean, and its scenario passes in the engine`, async () => {
    const engine = await PolicyEngine.create();
    try {
      const traffic = observeFlows(text);
      const s = suggestPolicies(traffic);
      const yaml = policiesYaml(s.policies);
      const compiled = compilePolicies({ text: yaml, file: "suggested.yaml" }, {
        regexCheck: (p) => engine.checkRegex(p),
      });
      assert.deepEqual(lintPolicies(compiled), []);
      assert.doesNotMatch(yaml, /pod-template-hash|controller-revision-hash/);
      const scenario = loadScenario(scenarioYaml(suggestScenario(s, traffic)), "s.scenario.yaml");
      const r = runScenario(engine, scenario);
      assert.deepEqual(r.errors, []);
      const failed = r.results.filter((q) => !q.pass).map((q) => `${q.name}: ${q.reason}`);
      assert.deepEqual(failed, []);
      const expects = r.results.map((q) => q.expect);
      assert.ok(expects.filter((e) => e === "allowed").length >= 4);
      assert.ok(expects.filter((e) => e === "denied").length >= 5);
      // The suggestion replays clean against the traffic it came from: nothing allowed is cut —
      // but addresses written as toFQDNs, which offline (no DNS proxy) match no IP.
      const replay = replayTraffic(engine, traffic, [{ text: yaml }]);
      assert.deepEqual(
        replay.changes.filter((c) => !s.fqdnIps.has(c.to)).map((c) => c.connection),
        [],
      );
    } finally {
      engine.close();
    }
  });
}

Deno.test("suggestPolicies(): one policy per workload, peers by labels and namespace, L7 and CIDR", () => {
  const s = suggestPolicies(observeFlows(threeTierFlows()));
  const byName = Object.fromEntries(s.policies.map((p) => [p.metadata.name, p.spec]));
  assert.deepEqual(Object.keys(byName).sort(), [
    "backend-from-traffic",
    "db-from-traffic",
    "frontend-from-traffic",
  ]);
  assert.deepEqual(byName["backend-from-traffic"].ingress, [{
    fromEndpoints: [{ matchLabels: { app: "frontend" } }],
    toPorts: [{
      ports: [{ port: "8080", protocol: "TCP" }],
      rules: { http: [{ method: "GET", path: "^/api/orders$" }] },
    }],
  }]);
  // The dropped 9090 and the world → db connection are not allowed.
  assert.deepEqual(byName["db-from-traffic"].ingress.length, 1);
  assert.deepEqual(byName["frontend-from-traffic"].egress[1], {
    toCIDR: ["203.0.113.10/32"],
    toPorts: [{ ports: [{ port: "80", protocol: "TCP" }] }],
  });
});

Deno.test("suggestPolicies() from Hubble: toFQDNs from DNS answers with a DNS rule to kube-dns, other namespaces by label", () => {
  const s = suggestPolicies(observeFlows(hubble));
  const tie = s.policies.find((p) => p.metadata.name === "tiefighter-from-traffic")!;
  const egress = tie.spec.egress as Record<string, unknown>[];
  assert.deepEqual(egress[0], {
    toEndpoints: [{
      matchLabels: { "k8s-app": "kube-dns", "k8s:io.kubernetes.pod.namespace": "kube-system" },
    }],
    toPorts: [{
      ports: [{ port: "53", protocol: "UDP" }, { port: "53", protocol: "TCP" }],
      rules: { dns: [{ matchName: "api.github.com" }] },
    }],
  });
  assert.ok(egress.some((e) => JSON.stringify(e.toFQDNs) === '[{"matchName":"api.github.com"}]'));
  const host =
    s.policies.find((p) => p.metadata.name === "deathstar-from-traffic")!.spec.ingress[1];
  assert.deepEqual(host.fromEntities, ["host"]);
  // The YAML is applicable as is: one document per policy.
  assert.equal(parse(policiesYaml(s.policies).split("\n---\n")[0]!).kind, "CiliumNetworkPolicy");
});
