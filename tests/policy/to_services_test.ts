// toServices (policy-wasm/src/translate_services.ts): resolved against the services given to the
// compile with Cilium's semantics — a service with a selector becomes an endpoint selector scoped
// to its namespace, a selector-less one its backends' /32s; an unresolved entry selects no peer
// (never "any peer"); offline a warning says it needs a live cluster; bad shapes are errors with
// their field path. Also the agent's side: records → ServiceRefs, and the Kubernetes import
// keeping a Service's selector and labels.

import assert from "node:assert/strict";
import {
  compilePolicies,
  type PeerSpec,
  PolicyValidationError,
  type ServiceRef,
} from "../../policy-wasm/mod.ts";
import { policyServiceRefs } from "../../agent/service/policy_refs.ts";
import { importKubernetesServices } from "../../agent/service/k8s_import.ts";
import { normaliseService, ServiceInputSchema } from "../../agent/service/spec.ts";

const SERVICES: ServiceRef[] = [
  { name: "web", namespace: "default", selector: { app: "web" }, backends: ["10.0.0.5"] },
  { name: "web", namespace: "other", selector: { app: "web2" }, backends: ["10.0.1.5"] },
  {
    name: "db",
    namespace: "ext",
    labels: { tier: "external" },
    backends: ["192.0.2.8", "192.0.2.7"],
  },
];

function policy(egress: string, kind = "egress"): string {
  return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ${kind}:
${egress}`;
}

function peersOf(text: string, services: ServiceRef[] | null = SERVICES) {
  const r = compilePolicies({ text, file: "p.yaml" }, services ? { services } : {});
  const entries = r.spec.rules.flatMap((x) => x.entries);
  return { peers: entries.flatMap((e) => e.peers), entries, warnings: r.warnings };
}

const texts = (peers: PeerSpec[]) =>
  peers.map((p) =>
    p.selector.kind === "cidr"
      ? p.selector.cidr
      : p.selector.kind === "labels"
      ? p.selector.requirements.map((r) => `${r.source}:${r.key}=${r.values.join(",")}`).join(" ")
      : p.selector.kind
  );

function issuesOf(text: string) {
  try {
    compilePolicies({ text, file: "p.yaml" }, { services: SERVICES });
  } catch (e) {
    if (e instanceof PolicyValidationError) return e.issues;
    throw e;
  }
  return [];
}

Deno.test("toServices resolves against the given services", async (t) => {
  await t.step("k8sService with a selector → the selector, scoped to its namespace", () => {
    const { peers, entries } = peersOf(policy(`  - toServices:
    - k8sService: {serviceName: web, namespace: default}
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]`));
    assert.deepEqual(texts(peers), ["any:app=web k8s:io.kubernetes.pod.namespace=default"]);
    assert.equal(peers[0]!.requiresApply, true);
    assert.deepEqual(entries[0]!.ports, [{ proto: 6, port: 80, endPort: 80 }]);
  });
  await t.step("no namespace matches the service in every namespace (Cilium)", () => {
    const { peers } = peersOf(policy(`  - toServices: [{k8sService: {serviceName: web}}]`));
    assert.deepEqual(texts(peers), [
      "any:app=web k8s:io.kubernetes.pod.namespace=default",
      "any:app=web2 k8s:io.kubernetes.pod.namespace=other",
    ]);
  });
  await t.step("a selector-less service → its backends as /32 CIDRs", () => {
    const { peers } = peersOf(policy(`  - toServices:
    - k8sServiceSelector: {selector: {matchLabels: {tier: external}}, namespace: ext}`));
    assert.deepEqual(texts(peers), ["192.0.2.8/32", "192.0.2.7/32"]);
    assert.ok(peers.every((p) => !p.requiresApply));
  });
  await t.step("k8sServiceSelector matches the service's labels, not its pod selector", () => {
    const { peers } = peersOf(policy(`  - toServices:
    - k8sServiceSelector: {selector: {matchLabels: {app: web}}}`));
    assert.deepEqual(texts(peers), ["none"]);
  });
  await t.step("matchExpressions on service labels", () => {
    const { peers } = peersOf(policy(`  - toServices:
    - k8sServiceSelector:
        selector: {matchExpressions: [{key: tier, operator: In, values: [external, x]}]}`));
    assert.deepEqual(texts(peers), ["192.0.2.8/32", "192.0.2.7/32"]);
  });
  await t.step("an unknown service selects no peer, even with toPorts (never any peer)", () => {
    const { peers } = peersOf(policy(`  - toServices: [{k8sService: {serviceName: nope}}]
    toPorts: [{ports: [{port: "80"}]}]`));
    assert.deepEqual(texts(peers), ["none"]);
  });
  await t.step("a service in another namespace than named is not selected", () => {
    const { peers } = peersOf(policy(`  - toServices:
    - k8sService: {serviceName: db, namespace: default}`));
    assert.deepEqual(texts(peers), ["none"]);
  });
  await t.step("offline (no services given): no peer and a warning naming the entry", () => {
    const { peers, warnings } = peersOf(
      policy(`  - toServices: [{k8sService: {serviceName: web}}]`),
      null,
    );
    assert.deepEqual(texts(peers), ["none"]);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]!.path, "spec.egress[0].toServices[0]");
    assert.match(warnings[0]!.message, /toServices needs a live cluster/);
  });
});

Deno.test("toServices: bad shapes are errors with their field path", async (t) => {
  const cases: [string, string, RegExp, string][] = [
    [
      "both kinds in one entry",
      policy(`  - toServices:
    - k8sService: {serviceName: web}
      k8sServiceSelector: {selector: {matchLabels: {a: b}}}`),
      /exactly one of k8sService and k8sServiceSelector/,
      "spec.egress[0].toServices[0].k8sServiceSelector",
    ],
    [
      "neither kind",
      policy(`  - toServices: [{}]`),
      /Expected "k8sService" or "k8sServiceSelector"/,
      "spec.egress[0].toServices[0]",
    ],
    [
      "empty serviceName",
      policy(`  - toServices: [{k8sService: {serviceName: ""}}]`),
      /non-empty serviceName/,
      "spec.egress[0].toServices[0].k8sService.serviceName",
    ],
    [
      "serviceName missing",
      policy(`  - toServices: [{k8sService: {namespace: default}}]`),
      /serviceName/,
      "spec.egress[0].toServices[0].k8sService",
    ],
    [
      "a bad label value in the selector",
      policy(`  - toServices:
    - k8sServiceSelector: {selector: {matchLabels: {a: "b c"}}}`),
      /Invalid label value "b c"/,
      "spec.egress[0].toServices[0].k8sServiceSelector.selector.matchLabels.a",
    ],
    [
      "toServices in egressDeny",
      policy(`  - toServices: [{k8sService: {serviceName: web}}]`, "egressDeny"),
      /"toServices" is not supported in egressDeny/,
      "spec.egressDeny[0].toServices",
    ],
  ];
  for (const [name, text, message, path] of cases) {
    await t.step(name, () => {
      const issues = issuesOf(text);
      assert.ok(issues.length > 0, `no issue for ${name}`);
      const hit = issues.find((i) => message.test(i.message));
      assert.ok(hit, `${name}: ${JSON.stringify(issues)}`);
      assert.ok(hit.path.startsWith(path), `${name}: path ${hit.path}, expected ${path}`);
      assert.ok(hit.line !== undefined && hit.line > 0);
    });
  }
});

Deno.test("policyServiceRefs() merges a service's port records, skips unnamed ones", () => {
  const rec = (id: number, name: string | undefined, port: number, ips: string[], extra = {}) =>
    normaliseService({
      ...ServiceInputSchema.parse({
        ...(name ? { name } : {}),
        frontend: { ip: "10.96.0.10", port },
        backends: ips.map((ip) => ({ ip, port: 8080 })),
        ...extra,
      }),
      id,
    });
  const refs = policyServiceRefs([
    rec(1, "default/web", 80, ["10.0.0.9", "10.0.0.5"], { selector: { app: "web" } }),
    rec(2, "default/web", 443, ["10.0.0.5", "10.0.0.10"], { selector: { app: "web" } }),
    rec(3, undefined, 81, ["10.0.0.7"]),
    rec(4, "ext/db", 5432, ["192.0.2.7"], { labels: { tier: "external" } }),
  ]);
  assert.deepEqual(
    refs,
    [
      {
        name: "web",
        namespace: "default",
        selector: { app: "web" },
        backends: ["10.0.0.5", "10.0.0.9", "10.0.0.10"],
      },
      { name: "db", namespace: "ext", labels: { tier: "external" }, backends: ["192.0.2.7"] },
    ].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`)),
  );
  assert.throws(
    () =>
      ServiceInputSchema.parse({
        frontend: { ip: "10.96.0.1", port: 1 },
        backends: [],
        selector: { "": "x" },
      }),
    /Invalid selector: empty label key/,
  );
});

Deno.test("importKubernetesServices() keeps the Service's selector and labels", () => {
  const [withSel, without] = importKubernetesServices(`apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {tier: front}}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: ext}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 5432}]
`);
  assert.deepEqual(withSel!.selector, { app: "web" });
  assert.deepEqual(withSel!.labels, { tier: "front" });
  assert.equal(without!.selector, undefined);
  assert.equal(without!.labels, undefined);
});
