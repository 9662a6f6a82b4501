// Audit mode per policy (annotation `cilia.io/policy-mode: audit`): the annotation is validated,
// the engine's map-state carries AUDIT entries where only an audit-mode policy would drop (its
// deny rule's cookie, or cookie 0 for its default deny), its allows grant nothing, queries and
// traces say AUDIT with the would-be reason, and the same resolution feeds both.

import assert from "node:assert/strict";
import {
  compilePolicies,
  evaluateFlow,
  explainFlow,
  flowOf,
  loadScenario,
  PolicyEngine,
  PolicyValidationError,
  prepareScenario,
} from "../../policy-wasm/mod.ts";

const policy = (name: string, mode: string | undefined, spec: string) =>
  `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: ${name}
  namespace: default
${mode !== undefined ? `  annotations: {cilia.io/policy-mode: ${mode}}\n` : ""}spec:
${spec}`;

const SCENARIO = `name: audit
policies:
  - |
${
  policy(
    "lockdown",
    "audit",
    `  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  egressDeny:
    - toEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  enableDefaultDeny: {egress: false}`,
  ).replace(/^/gm, "      ")
}
endpoints:
  - { name: client, labels: { app: client }, ip: 10.0.91.1 }
  - { name: server, labels: { app: server }, ip: 10.0.91.2 }
queries:
  - { from: client, to: server, port: 8080 }
  - { from: server, to: client, port: 53, protocol: UDP }
`;

Deno.test("the cilia.io/policy-mode annotation accepts enforce and audit, and names the field otherwise", () => {
  const spec = `  endpointSelector: {}\n  ingress: [{}]`;
  assert.equal(
    compilePolicies({ text: policy("a", "audit", spec) }).spec.policies[0]?.mode,
    "audit",
  );
  assert.equal(
    compilePolicies({ text: policy("e", "enforce", spec) }).spec.policies[0]?.mode,
    undefined,
  );
  assert.throws(
    () => compilePolicies({ text: policy("x", "Audit", spec), file: "p.yaml" }),
    (e: unknown) => {
      assert.ok(e instanceof PolicyValidationError);
      const issue = e.issues[0]!;
      assert.match(
        issue.message,
        /cilia\.io\/policy-mode "Audit": expected one of "enforce", "audit"/,
      );
      assert.match(issue.path, /metadata\.annotations/);
      assert.ok(issue.line !== undefined && issue.line > 0);
      return true;
    },
  );
});

Deno.test("audit mode: map-state AUDIT entries, queries and traces agree", async () => {
  const engine = await PolicyEngine.create();
  try {
    const loaded = loadScenario(SCENARIO, "audit.yaml");
    const { cluster } = prepareScenario(engine, loaded);
    const server = cluster.endpoints.find((e) => e.name === "server")!;
    const client = cluster.endpoints.find((e) => e.name === "client")!;
    const ms = engine.computeMapState(server.id);
    // Not enforced: the kernel's default stays allow, the audit policy's default deny is an entry.
    assert.deepEqual(ms.defaultDeny, { ingress: false, egress: false });
    assert.deepEqual(ms.audit, {
      ingress: { rules: true, defaultDeny: true },
      egress: { rules: true, defaultDeny: false },
    });
    const any = ms.entries.find((e) => e.direction === "ingress" && e.identity === 0);
    assert.deepEqual(any, {
      direction: "ingress",
      identity: 0,
      proto: 0,
      portLo: 0,
      portHi: 65535,
      verdict: "audit",
      cookie: 0,
    });
    const denyAudit = ms.entries.find((e) => e.direction === "egress" && e.proto === 17);
    assert.equal(denyAudit?.verdict, "audit");
    assert.notEqual(denyAudit?.cookie, 0);

    const q = engine.query({
      endpoint: server.id,
      direction: "ingress",
      peer: client.identity,
      proto: 6,
      port: 8080,
    });
    assert.equal(q.verdict, "audit");
    assert.equal(q.decision, "audit-default-deny");
    assert.equal(q.dropReason, 133);
    assert.equal(q.defaultDeny, false);
    assert.equal(q.auditDefaultDeny, true);
    const allowed = engine.query({
      endpoint: server.id,
      direction: "ingress",
      peer: client.identity,
      proto: 6,
      port: 80,
    });
    assert.equal(allowed.verdict, "allow");

    const [ingress, egress] = loaded.scenario.queries.map((x) =>
      explainFlow(engine, evaluateFlow(cluster, engine, flowOf(x)))
    );
    assert.match(ingress!.join("\n"), /=> AUDIT \(would-be drop reason 133/);
    assert.match(
      ingress!.join("\n"),
      /ingress would be default-deny .*lockdown \(spec, audit mode\)/,
    );
    assert.equal(ingress!.at(-1), "Final verdict: AUDIT");
    assert.match(
      egress!.join("\n"),
      /would be denied by CiliumNetworkPolicy default\/lockdown spec\.egressDeny\[0\]\.toPorts\[0\] \(audit mode\)/,
    );
    assert.match(egress!.join("\n"), /would-be drop reason 181/);
  } finally {
    engine.close();
  }
});
