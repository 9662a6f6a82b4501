// The synthetic cluster the policy benches resolve: identities with app, namespace, tier and pod
// labels, and rules whose subjects and peers select by app, namespace and tier (ingress with
// optional L7 and deny entries, namespace-wide egress). Deterministic for a given seed.

import type { IdentitySpec, PolicySpec, RuleSpec, SelectorSpec } from "../../policy-wasm/mod.ts";
import { RESERVED_IDENTITIES } from "../../policy-wasm/src/labels.ts";

const NS = 50;
const APPS = 400;

const sel = (reqs: [string, string][]): SelectorSpec => ({
  kind: "labels",
  requirements: reqs.map(([k, v]) => ({ source: "k8s", key: k, op: "In", values: [v] })),
});

export function identities(n: number, r: () => number): IdentitySpec[] {
  const out: IdentitySpec[] = [...RESERVED_IDENTITIES];
  for (let i = 0; i < n; i++) {
    out.push({
      id: 256 + i,
      labels: [
        `k8s:app=app${Math.floor(r() * APPS)}`,
        `k8s:io.kubernetes.pod.namespace=ns${Math.floor(r() * NS)}`,
        `k8s:tier=${["web", "api", "db"][Math.floor(r() * 3)]}`,
        `k8s:pod=${i}`,
      ],
    });
  }
  return out;
}

export function rules(n: number, r: () => number): PolicySpec {
  const out: RuleSpec[] = [];
  for (let i = 0; i < n; i++) {
    const ns = `ns${Math.floor(r() * NS)}`;
    const peerNs = r() < 0.7 ? ns : `ns${Math.floor(r() * NS)}`;
    const l7 = r() < 0.2;
    out.push({
      policy: 0,
      path: `specs[${i}]`,
      subject: sel([["app", `app${Math.floor(r() * APPS)}`], ["io.kubernetes.pod.namespace", ns]]),
      subjectKind: "endpoint",
      defaultDeny: { ingress: true, egress: r() < 0.3 },
      requires: { ingress: [], egress: [] },
      labels: [],
      entries: [
        {
          direction: "ingress",
          deny: false,
          peers: [{
            selector: r() < 0.3
              ? sel([["io.kubernetes.pod.namespace", peerNs]])
              : sel([["tier", ["web", "api", "db"][Math.floor(r() * 3)]!], [
                "io.kubernetes.pod.namespace",
                peerNs,
              ]]),
            requiresApply: true,
          }],
          ports: [{ proto: 6, port: [80, 443, 8080, 5432][Math.floor(r() * 4)]!, endPort: 0 }].map((
            p,
          ) => ({ ...p, endPort: p.port })),
          ...(l7
            ? {
              l7: {
                kind: "http" as const,
                rules: [{ method: "GET", path: "/api/v[0-9]+/.*", headers: [], headerMatches: [] }],
              },
            }
            : {}),
          cookie: i * 4 + 1,
          path: `specs[${i}].ingress[0]`,
        },
        ...(r() < 0.2
          ? [{
            direction: "ingress" as const,
            deny: true,
            peers: [{ selector: sel([["tier", "db"]]), requiresApply: true }],
            ports: [{ proto: 6, port: 22, endPort: 22 }],
            cookie: i * 4 + 2,
            path: `specs[${i}].ingressDeny[0]`,
          }]
          : []),
        {
          direction: "egress",
          deny: false,
          peers: [{ selector: sel([["io.kubernetes.pod.namespace", ns]]), requiresApply: true }],
          ports: [],
          cookie: i * 4 + 3,
          path: `specs[${i}].egress[0]`,
        },
      ],
    });
  }
  return { policies: [{ kind: "CiliumClusterwideNetworkPolicy", name: "bench" }], rules: out };
}
