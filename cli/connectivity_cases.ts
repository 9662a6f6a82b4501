// The cases of `cilia connectivity test`, in families like Cilium's: no policy, allow-all,
// ingress and egress default deny, entities (world, host), label selectors and expressions,
// namespaces, ICMP, CIDR with except, deny over allow, audit mode. A family is the policies in
// force; a case is one probe and what must happen: `allow`, or a drop with the kernel's reason and
// the policy the agent's flow must name. Names are `family/case` (`--test REGEX` picks them).
// This module is browser compatible.

/** Where a probe starts: a pod name, the node ("host") or the external host ("world"). */
export type Source = "client" | "client2" | "remote" | "backend" | "host" | "world";
/** Where it goes: a pod name, or an external address (ext0 = 203.0.113.10, ext1 = .11). */
export type Target = "backend" | "ext0" | "ext1";

export interface Case {
  name: string;
  from: Source;
  to: Target;
  proto: "tcp" | "icmp";
  port?: number;
  /** `audit`: the packets pass and the agent's flow says AUDIT, naming the policy. */
  expect: "allow" | { drop: number; policy: string } | { audit: string };
}

export interface Family {
  name: string;
  policies: string[];
  cases: Case[];
  /** Why the family does not run (printed). */
  skip?: string;
}

/** The pods of the lab: name, namespace, labels, TCP servers. */
export const PODS = [
  { name: "client", namespace: "default", labels: { app: "client" }, ports: [] },
  { name: "client2", namespace: "default", labels: { app: "other" }, ports: [] },
  { name: "remote", namespace: "other", labels: { app: "client" }, ports: [] },
  { name: "backend", namespace: "default", labels: { app: "backend" }, ports: [8080, 9090] },
] as const;

const POLICY = 133, DENYLIST = 181;

function cnp(name: string, spec: string, annotations = ""): string {
  return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}, namespace: default${annotations}}
spec:
${spec.trim().split("\n").map((l) => `  ${l}`).join("\n")}
`;
}

const tcp = (name: string, from: Source, to: Target, port: number, expect: Case["expect"]) => ({
  name,
  from,
  to,
  proto: "tcp" as const,
  port,
  expect,
});
const icmp = (name: string, from: Source, to: Target, expect: Case["expect"]) => ({
  name,
  from,
  to,
  proto: "icmp" as const,
  expect,
});
const drop = (policy: string, reason = POLICY) => ({ drop: reason, policy });

const FAMILIES: Family[] = [
  {
    name: "no-policy",
    policies: [],
    cases: [
      tcp("pod-to-pod", "client", "backend", 8080, "allow"),
      icmp("pod-to-pod-icmp", "client", "backend", "allow"),
      tcp("pod-to-world", "client", "ext0", 80, "allow"),
      tcp("other-namespace", "remote", "backend", 9090, "allow"),
    ],
  },
  {
    name: "allow-all",
    policies: [
      cnp("allow-all-ingress", "endpointSelector: {}\ningress: [{fromEntities: [all]}]"),
      cnp("allow-all-egress", "endpointSelector: {}\negress: [{toEntities: [all]}]"),
    ],
    cases: [
      tcp("pod-to-pod", "client", "backend", 8080, "allow"),
      tcp("other-namespace", "remote", "backend", 9090, "allow"),
      tcp("pod-to-world", "client", "ext0", 80, "allow"),
    ],
  },
  {
    name: "ingress-default-deny",
    policies: [
      cnp("backend-deny-ingress", "endpointSelector: {matchLabels: {app: backend}}\ningress: [{}]"),
    ],
    cases: [
      tcp("tcp-denied", "client", "backend", 8080, drop("backend-deny-ingress")),
      icmp("icmp-denied", "client", "backend", drop("backend-deny-ingress")),
      tcp("unselected-egress", "backend", "ext0", 80, "allow"),
    ],
  },
  {
    name: "egress-default-deny",
    policies: [
      cnp("client-deny-egress", "endpointSelector: {matchLabels: {app: client}}\negress: [{}]"),
    ],
    cases: [
      tcp("tcp-denied", "client", "backend", 8080, drop("client-deny-egress")),
      tcp("world-denied", "client", "ext0", 80, drop("client-deny-egress")),
      tcp("unselected-pod", "client2", "backend", 8080, "allow"),
    ],
  },
  {
    name: "entities",
    policies: [
      cnp(
        "backend-from-host",
        "endpointSelector: {matchLabels: {app: backend}}\ningress: [{fromEntities: [host]}]",
      ),
      cnp(
        "client-to-world",
        "endpointSelector: {matchLabels: {app: client}}\negress: [{toEntities: [world]}]",
      ),
    ],
    cases: [
      icmp("host-allowed", "host", "backend", "allow"),
      tcp("pod-not-host", "client2", "backend", 8080, drop("backend-from-host")),
      tcp("world-allowed", "client", "ext0", 80, "allow"),
      tcp("pod-not-world", "client", "backend", 8080, drop("client-to-world")),
    ],
  },
  {
    name: "labels",
    policies: [
      cnp(
        "backend-from-clients",
        `endpointSelector: {matchExpressions: [{key: app, operator: In, values: [backend]}]}
ingress:
  - fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [client]}, {key: role, operator: DoesNotExist}]}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]`,
      ),
    ],
    cases: [
      tcp("expression-allowed", "client", "backend", 8080, "allow"),
      tcp("other-port", "client", "backend", 9090, drop("backend-from-clients")),
      tcp("label-not-matched", "client2", "backend", 8080, drop("backend-from-clients")),
    ],
  },
  {
    name: "namespaces",
    policies: [
      cnp(
        "backend-from-other-ns",
        `endpointSelector: {matchLabels: {app: backend}}
ingress: [{fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: other}}]}]`,
      ),
    ],
    cases: [
      tcp("other-namespace-allowed", "remote", "backend", 8080, "allow"),
      tcp("same-namespace-denied", "client", "backend", 8080, drop("backend-from-other-ns")),
    ],
  },
  {
    name: "icmp",
    policies: [
      cnp(
        "backend-icmp-only",
        `endpointSelector: {matchLabels: {app: backend}}
ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    icmps: [{fields: [{type: 8, family: IPv4}]}]`,
      ),
    ],
    cases: [
      icmp("echo-allowed", "client", "backend", "allow"),
      tcp("tcp-denied", "client", "backend", 8080, drop("backend-icmp-only")),
    ],
  },
  {
    name: "cidr",
    policies: [
      cnp(
        "client-to-cidr",
        `endpointSelector: {matchLabels: {app: client}}
egress: [{toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.11/32]}]}]`,
      ),
    ],
    cases: [
      tcp("cidr-allowed", "client", "ext0", 80, "allow"),
      tcp("except-denied", "client", "ext1", 80, drop("client-to-cidr")),
    ],
  },
  {
    name: "deny-over-allow",
    policies: [
      cnp(
        "backend-deny-9090",
        `endpointSelector: {matchLabels: {app: backend}}
ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]`,
      ),
    ],
    cases: [
      tcp("allowed-port", "client", "backend", 8080, "allow"),
      tcp("denied-port", "client", "backend", 9090, drop("backend-deny-9090", DENYLIST)),
    ],
  },
  {
    name: "audit",
    policies: [
      cnp(
        "backend-audit",
        "endpointSelector: {matchLabels: {app: backend}}\ningress: [{}]",
        ", annotations: {cilia.io/policy-mode: audit}",
      ),
    ],
    cases: [
      tcp("audited-passes", "client", "backend", 8080, { audit: "backend-audit" }),
      icmp("audited-icmp-passes", "client", "backend", { audit: "backend-audit" }),
    ],
  },
];

/**
 * The families with their cases narrowed to those whose `family/case` name matches `test`.
 * `flip` (a case name) inverts one expectation: the suite's own check that failures are reported.
 */
export function selectFamilies(test?: RegExp, flip?: string): Family[] {
  return FAMILIES.map((f) => ({
    ...f,
    cases: f.cases.filter((c) => !test || test.test(`${f.name}/${c.name}`)).map((c) =>
      `${f.name}/${c.name}` !== flip
        ? c
        : { ...c, expect: c.expect === "allow" ? drop("(flipped)") : "allow" as const }
    ),
  })).filter((f) => f.cases.length > 0);
}
