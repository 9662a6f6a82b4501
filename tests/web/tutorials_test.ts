// The simulator's pure parts, in Deno: every tutorial's expectations hold with the engine; the
// workspace, YAML export and share-link conversions round-trip; and Simulator (what the page runs)
// gives runScenario()'s verdicts and explanations for the tutorials and every example scenario.

import {
  type LoadedScenario,
  loadScenario,
  PolicyEngine,
  runScenario,
} from "../../policy-wasm/mod.ts";
import { EXAMPLES, FOOTGUNS, TUTORIALS } from "../../web/tutorials.ts";
import {
  formatLabels,
  joinPolicies,
  parseHeaders,
  parseLabels,
  scenarioOf,
  splitPolicies,
  workspaceOf,
} from "../../web/app/model.ts";
import { scenarioFromHash, scenarioYaml, shareHash } from "../../web/app/scenario_io.ts";
import { Simulator } from "../../web/app/simulation.ts";
import { assertEquals, exampleScenarios } from "./_assert.ts";

const engine = await PolicyEngine.create();

function tutorialScenario(id: string): LoadedScenario {
  const t = TUTORIALS.find((t) => t.id === id)!;
  return loadScenario(JSON.stringify(t.scenario), `tutorial ${t.id}`);
}

Deno.test("TUTORIALS: the three examples and three footguns, each with passing expectations", async (t) => {
  assertEquals(EXAMPLES.length, 3);
  assertEquals(FOOTGUNS.length, 3);
  assertEquals(new Set(TUTORIALS.map((t) => t.id)).size, TUTORIALS.length);
  for (const tutorial of TUTORIALS) {
    await t.step(tutorial.id, () => {
      const loaded = tutorialScenario(tutorial.id);
      const s = loaded.scenario;
      if (!s.description || s.queries.length === 0) throw new Error("Expected text and queries");
      if (s.queries.some((q) => q.expect === undefined)) throw new Error("Expected expectations");
      const report = runScenario(engine, loaded);
      const failed = report.results.filter((r) => !r.pass).map((r) => `${r.name}: ${r.reason}`);
      assertEquals(failed, []);
      assertEquals(report.passed, s.queries.length);
    });
  }
});

Deno.test("splitPolicies() and joinPolicies() round-trip documents", async (t) => {
  const cases: [string, string, string[]][] = [
    ["one document", "a: 1\n", ["a: 1\n"]],
    ["two documents", "a: 1\n---\nb: 2\n", ["a: 1\n", "b: 2\n"]],
    ["leading separator and blanks", "---\n\na: 1\n\n---  \n\n---\nb: 2", ["a: 1\n", "b: 2\n"]],
    ["comments stay", "# why\na: 1\n--- # next\nb: 2\n", ["# why\na: 1\n", "b: 2\n"]],
    ["nothing", "\n\n", []],
  ];
  for (const [name, text, docs] of cases) {
    await t.step(name, () => {
      assertEquals(splitPolicies(text), docs);
      assertEquals(splitPolicies(joinPolicies(docs)), docs);
    });
  }
});

Deno.test("parseLabels() and parseHeaders() read the table and tester syntax", () => {
  assertEquals(parseLabels("app=web, tier=front ,"), { labels: { app: "web", tier: "front" } });
  assertEquals(parseLabels("k8s:io.kubernetes.pod.namespace=x,empty="), {
    labels: { "k8s:io.kubernetes.pod.namespace": "x", empty: "" },
  });
  assertEquals(parseLabels("app"), { error: 'Invalid label "app": expected key=value' });
  assertEquals(formatLabels({ app: "web", tier: "front" }), "app=web,tier=front");
  assertEquals(parseHeaders("X-Token: 1:2\n\n Accept : */*"), {
    headers: { "X-Token": "1:2", Accept: "*/*" },
  });
  assertEquals(parseHeaders("nocolon"), {
    error: 'Invalid header "nocolon": expected Name: value',
  });
});

Deno.test("workspaceOf(), scenarioYaml() and shareHash() round-trip every scenario", async (t) => {
  const all = [
    ...TUTORIALS.map((t) => tutorialScenario(t.id)),
    ...(await exampleScenarios()).map((e) => e.loaded),
  ];
  for (const loaded of all) {
    await t.step(loaded.file!, () => {
      const s = scenarioOf(workspaceOf(loaded.scenario));
      assertEquals(scenarioOf(workspaceOf(s)), s);
      const fromYaml = loadScenario(scenarioYaml(s), "exported.yaml").scenario;
      assertEquals(fromYaml, s);
      assertEquals(scenarioFromHash(`#${shareHash(s)}`)?.scenario, s);
      const verdicts = (l: LoadedScenario) => runScenario(engine, l).results.map((r) => r.verdict);
      assertEquals(verdicts(loadScenario(scenarioYaml(s))), verdicts(loaded));
    });
  }
});

Deno.test("scenarioFromHash() ignores other hashes and rejects broken links", () => {
  assertEquals(scenarioFromHash(""), undefined);
  assertEquals(scenarioFromHash("#tutorial=x"), undefined);
  let threw = false;
  try {
    scenarioFromHash("#scenario=!!!");
  } catch (e) {
    threw = e instanceof SyntaxError;
  }
  assertEquals(threw, true);
});

Deno.test("Simulator gives runScenario()'s verdicts and explanations", async (t) => {
  const sim = await Simulator.create();
  const all = [
    ...TUTORIALS.map((t) => tutorialScenario(t.id)),
    ...(await exampleScenarios()).map((e) => e.loaded),
  ];
  for (const loaded of all) {
    await t.step(loaded.file!, () => {
      const expected = runScenario(engine, loaded).results;
      const r = sim.run(workspaceOf(loaded.scenario), { port: 80, protocol: "TCP" });
      assertEquals(r.errors, 0);
      assertEquals(r.setupError, undefined);
      assertEquals(
        r.queries.map((q) => [q.name, q.outcome?.verdict, q.outcome?.trace]),
        expected.map((q) => [q.name, q.verdict, q.trace]),
      );
      // Rows and columns: the endpoints, then the named CIDRs, world and host.
      const n = loaded.scenario.endpoints.length;
      const peers = r.peers.length;
      assertEquals(
        r.peers.slice(0, n).map((p) => p.name),
        loaded.scenario.endpoints.map((e) => e.name),
      );
      assertEquals(r.peers.slice(-2).map((p) => p.name), ["world", "host"]);
      assertEquals(r.matrix?.flat().length, peers * peers);
      // Between two peers that are not endpoints no cilia policy applies: not judged.
      assertEquals(r.matrix?.flat().filter((c) => c.na).length, (peers - n) * (peers - n));
    });
  }
  sim.close();
});

Deno.test("Simulator places validation errors and lint warnings at their lines", async () => {
  const sim = await Simulator.create();
  const probe = { port: 80, protocol: "TCP" } as const;
  const w = workspaceOf(tutorialScenario("http-get-public").scenario);
  w.policies = w.policies.replace("kind: CiliumNetworkPolicy", "kind: CiliumNetworkPolicyy");
  const r = sim.run(w, probe);
  assertEquals(r.errors, 1);
  assertEquals(r.matrix, undefined);
  assertEquals(r.diagnostics.map((d) => [d.severity, d.line]), [["error", 2]]);
  const split = workspaceOf(tutorialScenario("footgun-or-split").scenario);
  const line = split.policies.split("\n").findIndex((l) => l.includes("- toPorts:")) + 1;
  assertEquals(sim.run(split, probe).diagnostics.map((d) => [d.severity, d.line]), [
    ["warning", line],
  ]);
  sim.close();
});

Deno.test("Simulator marks conflicting L7 protocols on one port as an error at its line", async () => {
  const sim = await Simulator.create();
  try {
    const policy = (name: string, rules: string) =>
      `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: ${name}, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {id: a}}\n  ingress:\n    - toPorts:\n        - ports: [{port: "80", protocol: TCP}]\n          rules: ${rules}\n`;
    const result = sim.run({
      policies: joinPolicies([
        policy("kafka-80", "{kafka: [{topic: foo}]}"),
        policy("http-80", "{http: [{method: GET, path: /}]}"),
      ]),
      endpoints: [],
      queries: [],
    }, { port: 80, protocol: "TCP" });
    assertEquals(result.matrix, undefined);
    assertEquals(result.errors, 1);
    const d = result.diagnostics.find((d) => d.severity === "error")!;
    assertEquals(d.path, "spec.ingress[0].toPorts[0]");
    assertEquals(d.line, 18);
    assertEquals(
      /the HTTP rules of CiliumNetworkPolicy default\/http-80 .* and the Kafka rules of CiliumNetworkPolicy default\/kafka-80 .*cannot merge conflicting L7 parsers/
        .test(d.message),
      true,
    );
  } finally {
    sim.close();
  }
});
