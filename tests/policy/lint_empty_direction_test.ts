// The empty-direction lint: `ingress: []` / `egress: []` without enableDefaultDeny is not
// default-deny under Cilium's semantics (the engine agrees: the flow stays allowed), and the
// warning is silenced by enableDefaultDeny, deny entries, --disable and the lint-ignore annotation.

import assert from "node:assert/strict";
import {
  compilePolicies,
  evaluateFlow,
  lintPolicies,
  PolicyEngine,
  prepareScenario,
} from "../../policy-wasm/mod.ts";

const cnp = (spec: string, annotations = "") =>
  `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: default\n${annotations}spec:\n  endpointSelector: {matchLabels: {app: db}}\n${spec}`;

const lint = (text: string, disable: string[] = []) =>
  lintPolicies(compilePolicies({ text, file: "p.yaml" }), { disable })
    .filter((w) => w.code === "empty-direction").map((w) => `${w.path}@${w.line}`);

Deno.test("empty-direction: ingress: [] and egress: [] are not default-deny, and lint says so", async (t) => {
  await t.step("warns at each empty list, with its line", () => {
    assert.deepEqual(lint(cnp("  ingress: []\n  egress: []\n")), [
      "spec.ingress@8",
      "spec.egress@9",
    ]);
    const [w] = lintPolicies(compilePolicies({ text: cnp("  ingress: []\n") }));
    assert.match(w!.message, /does not make the endpoint default-deny for ingress/);
    assert.match(w!.message, /enableDefaultDeny: \{ingress: true\}/);
  });
  await t.step("silent where the intent is explicit or the direction has entries", () => {
    for (
      const spec of [
        "  ingress: []\n  enableDefaultDeny: {ingress: true}\n",
        "  ingress: []\n  enableDefaultDeny: {ingress: false}\n",
        "  ingress: []\n  ingressDeny: [{fromEntities: [world]}]\n",
        "  ingress: [{}]\n",
        "  egress: [{toEntities: [world]}]\n",
      ]
    ) assert.deepEqual(lint(cnp(spec)), [], spec);
  });
  await t.step("silenced by --disable and by the lint-ignore annotation", () => {
    assert.deepEqual(lint(cnp("  ingress: []\n"), ["empty-direction"]), []);
    const ann = "  annotations: {cilia.io/lint-ignore: empty-direction}\n";
    assert.deepEqual(lint(cnp("  ingress: []\n", ann)), []);
  });
  await t.step("a NetworkPolicy's ingress: [] is default-deny: no warning", () => {
    const knp =
      `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: default}\nspec:\n  podSelector: {}\n  ingress: []\n`;
    assert.deepEqual(lint(knp), []);
  });
  await t.step("the engine agrees: the flow the user meant to deny is allowed", async () => {
    const engine = await PolicyEngine.create();
    try {
      const text = cnp("  ingress: []\n");
      const { cluster } = prepareScenario(engine, {
        sources: [{ text }],
        scenario: {
          policies: [text],
          endpoints: [
            { name: "web", labels: { app: "web" }, ip: "10.0.0.1" },
            { name: "db", labels: { app: "db" }, ip: "10.0.0.2" },
          ],
          queries: [],
        },
      });
      const f = evaluateFlow(cluster, engine, {
        from: "web",
        to: "db",
        port: 5432,
        protocol: "TCP",
      });
      assert.equal(f.allowed, true);
      assert.equal(f.ingress?.result.decision, "default-allow");
    } finally {
      engine.close();
    }
  });
});
