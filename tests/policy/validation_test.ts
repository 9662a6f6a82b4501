// Policy validation: every error names the field path and its line:column, unknown fields get a
// "did you mean" hint, and Cilium's cross-field rules (rule_validation.go) are enforced.

import assert from "node:assert/strict";
import {
  compilePolicies,
  lintPolicies,
  PolicyEngine,
  PolicyValidationError,
} from "../../policy-wasm/mod.ts";

const engine = await PolicyEngine.create();
const check = (p: string) => engine.checkRegex(p);

function cnp(spec: string, meta = "name: p\n  namespace: default"): string {
  return `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  ${meta}\nspec:\n${spec}`;
}

function issuesOf(text: string) {
  try {
    compilePolicies({ text, file: "p.yaml" }, { regexCheck: check });
  } catch (e) {
    if (e instanceof PolicyValidationError) return e.issues;
    throw e;
  }
  return [];
}

interface Case {
  name: string;
  text: string;
  message: RegExp;
  path?: string;
  line?: number;
  column?: number;
}

const INGRESS = `  endpointSelector: {matchLabels: {app: b}}\n  ingress:\n`;

const CASES: Case[] = [
  {
    name: "unknown field with a hint",
    text: cnp(
      `${INGRESS}    - fromEndpoints: [{matchLabels: {app: a}}]\n      toPort:\n        - ports: [{port: "80"}]\n`,
    ),
    message: /Unknown field "toPort": did you mean "toPorts"\?/,
    path: "spec.ingress[0].toPort",
    line: 10,
    column: 7,
  },
  {
    name: "unknown top-level spec field",
    text: cnp(`  endpointSelecter: {}\n`),
    message: /Unknown field "endpointSelecter": did you mean "endpointSelector"\?/,
    path: "spec.endpointSelecter",
    line: 7,
    column: 3,
  },
  {
    name: "wrong type",
    text: cnp(`${INGRESS}    - fromEndpoints: {matchLabels: {app: a}}\n`),
    message: /Expected array, received object|expected array/i,
    path: "spec.ingress[0].fromEndpoints",
    line: 9,
  },
  {
    name: "operator is case-sensitive",
    text: cnp(
      `${INGRESS}    - fromEndpoints: [{matchExpressions: [{key: app, operator: in, values: [a]}]}]\n`,
    ),
    message:
      /Invalid operator "in": expected In, NotIn, Exists or DoesNotExist \(case-sensitive\): did you mean "In"\?/,
    path: "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator",
  },
  {
    name: "In needs values",
    text: cnp(`${INGRESS}    - fromEndpoints: [{matchExpressions: [{key: app, operator: In}]}]\n`),
    message: /Operator "In" needs at least one value/,
  },
  {
    name: "numeric label value must be quoted",
    text: cnp(`${INGRESS}    - fromEndpoints: [{matchLabels: {version: 1}}]\n`),
    message: /Expected a string label value, got number 1: quote it/,
  },
  {
    name: "HTTP rules need protocol TCP",
    text: cnp(
      `${INGRESS}    - toPorts:\n        - ports: [{port: "80"}]\n          rules: {http: [{method: GET}]}\n`,
    ),
    message: /L7 HTTP rules need protocol TCP, got none \(ANY\)/,
    path: "spec.ingress[0].toPorts[0].ports[0].protocol",
  },
  {
    name: "L7 on port 0 is rejected",
    text: cnp(
      `${INGRESS}    - toPorts:\n        - ports: [{port: "0", protocol: TCP}]\n          rules: {http: [{method: GET}]}\n`,
    ),
    message: /L7 rules cannot apply to port 0/,
  },
  {
    name: "DNS rules are egress only",
    text: cnp(
      `${INGRESS}    - toPorts:\n        - ports: [{port: "53", protocol: UDP}]\n          rules: {dns: [{matchName: a.com}]}\n`,
    ),
    message: /DNS rules are only allowed in egress rules/,
  },
  {
    name: "one L7 family per port rule",
    text: cnp(
      `${INGRESS}    - toPorts:\n        - ports: [{port: "80", protocol: TCP}]\n          rules: {http: [{}], kafka: [{topic: t}]}\n`,
    ),
    message: /Only one L7 protocol per port rule: found http and kafka/,
  },
  {
    name: "kafka role and apiKey are exclusive",
    text: cnp(
      `${INGRESS}    - toPorts:\n        - ports: [{port: "9092", protocol: TCP}]\n          rules: {kafka: [{role: produce, apiKey: fetch}]}\n`,
    ),
    message: /"role" and "apiKey" are mutually exclusive/,
  },
  {
    name: "kafka apiKey name with hint",
    text: cnp(
      `${INGRESS}    - toPorts:\n        - ports: [{port: "9092", protocol: TCP}]\n          rules: {kafka: [{apiKey: produc}]}\n`,
    ),
    message: /Unknown Kafka apiKey "produc": did you mean "produce"\?/,
  },
  {
    name: "kafka topic syntax",
    text: cnp(
      `${INGRESS}    - toPorts:\n        - ports: [{port: "9092", protocol: TCP}]\n          rules: {kafka: [{topic: "a b"}]}\n`,
    ),
    message: /Invalid Kafka topic "a b"/,
  },
  {
    name: "kafka apiVersion is int16",
    text: cnp(
      `${INGRESS}    - toPorts:\n        - ports: [{port: "9092", protocol: TCP}]\n          rules: {kafka: [{apiVersion: "70000"}]}\n`,
    ),
    message: /Invalid Kafka apiVersion "70000": expected a 16-bit integer/,
  },
  {
    name: "path regex must compile (RE2)",
    text: cnp(
      `${INGRESS}    - toPorts:\n        - ports: [{port: "80", protocol: TCP}]\n          rules: {http: [{path: "/a(b"}]}\n`,
    ),
    message: /Invalid path regex "\/a\(b": missing closing \)/,
    path: "spec.ingress[0].toPorts[0].rules.http[0].path",
  },
  {
    name: "backreferences are not RE2",
    text: cnp(
      `${INGRESS}    - toPorts:\n        - ports: [{port: "80", protocol: TCP}]\n          rules: {http: [{path: "(a)\\\\1"}]}\n`,
    ),
    message: /unsupported Perl syntax/,
  },
  {
    name: "except must lie inside the cidr",
    text: cnp(`${INGRESS}    - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]\n`),
    message: /Except "192.168.0.0\/16" is not inside "10.0.0.0\/8"/,
  },
  {
    name: "bad CIDR",
    text: cnp(`${INGRESS}    - fromCIDR: [10.0.0.0/33]\n`),
    message: /Invalid CIDR "10.0.0.0\/33"/,
  },
  {
    name: "unknown entity with a hint",
    text: cnp(`${INGRESS}    - fromEntities: [wrld]\n`),
    message: /Unknown entity "wrld": did you mean "world"\?/,
  },
  {
    name: "port out of range",
    text: cnp(`${INGRESS}    - toPorts: [{ports: [{port: "70000"}]}]\n`),
    message: /Invalid port 70000: expected 0-65535/,
  },
  {
    name: "endPort below port",
    text: cnp(`${INGRESS}    - toPorts: [{ports: [{port: "80", endPort: 70}]}]\n`),
    message: /Invalid endPort 70: expected 80-65535/,
  },
  {
    name: "more than 40 ports",
    text: cnp(
      `${INGRESS}    - toPorts: [{ports: [${
        Array.from({ length: 41 }, (_, i) => `{port: "${i + 1}"}`).join(", ")
      }]}]\n`,
    ),
    message: /Too many ports: 41, at most 40/,
  },
  {
    name: "deny rules cannot carry L7",
    text: cnp(
      `  endpointSelector: {}\n  ingressDeny:\n    - toPorts:\n        - ports: [{port: "80", protocol: TCP}]\n          rules: {http: [{}]}\n`,
    ),
    message: /L7 rules are not allowed in deny rules/,
  },
  {
    name: "toFQDNs cannot be mixed with other L3",
    text: cnp(
      `  endpointSelector: {}\n  egress:\n    - toFQDNs: [{matchName: a.com}]\n      toCIDR: [1.2.3.4]\n`,
    ),
    message: /toFQDNs cannot be combined with toCIDR/,
  },
  {
    name: "toPorts and icmps cannot be combined",
    text: cnp(
      `${INGRESS}    - toPorts: [{ports: [{port: "80"}]}]\n      icmps: [{fields: [{type: 8}]}]\n`,
    ),
    message: /toPorts and icmps cannot be combined/,
  },
  {
    name: "ICMP type names",
    text: cnp(`${INGRESS}    - icmps: [{fields: [{type: EchoRequst}]}]\n`),
    message: /Invalid ICMP type "EchoRequst": did you mean "EchoRequest"\?/,
  },
  {
    name: "nodeSelector only in a clusterwide policy",
    text: cnp(`  nodeSelector: {}\n`),
    message: /nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy/,
  },
  {
    name: "unsupported features are refused, not ignored",
    text: cnp(
      `${INGRESS}    - toPorts: [{ports: [{port: "443", protocol: TCP}], serverNames: [a.com]}]\n`,
    ),
    message: /"serverNames" is not supported by cilia: it would not be enforced/,
  },
  {
    name: "unknown kind with a hint",
    text: `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicie\nmetadata: {name: p}\nspec: {}\n`,
    message: /Unsupported kind "CiliumNetworkPolicie": did you mean "CiliumNetworkPolicy"\?/,
    line: 2,
    column: 1,
  },
  {
    name: "wrong apiVersion",
    text:
      `apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}}\n`,
    message:
      /Expected apiVersion "cilium.io\/v2" for kind CiliumNetworkPolicy, got "cilium.io\/v1"/,
  },
  {
    name: "YAML syntax errors are located",
    text: `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p\n`,
    message: /Invalid YAML: Flow map/,
    line: 4,
  },
  {
    name: "KNP peers: ipBlock alone",
    text:
      `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n  podSelector: {}\n  ingress:\n    - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]\n`,
    message: /ipBlock cannot be combined with podSelector or namespaceSelector/,
  },
  {
    name: "toCIDR together with toEndpoints in one egress rule",
    text: cnp(
      `  endpointSelector: {}\n  egress:\n    - toEndpoints: [{matchLabels: {app: a}}]\n      toCIDR: [192.0.2.0/24]\n`,
    ),
    message: /toCIDR cannot be combined with toEndpoints in one egress rule/,
    path: "spec.egress[0].toCIDR",
    line: 10,
  },
  {
    name: "toCIDRSet together with toEndpoints in one egress deny rule",
    text: cnp(
      `  endpointSelector: {}\n  egressDeny:\n    - toEndpoints: [{}]\n      toCIDRSet: [{cidr: 192.0.2.0/24}]\n`,
    ),
    message: /toCIDRSet cannot be combined with toEndpoints/,
    path: "spec.egressDeny[0].toCIDRSet",
  },
  {
    name: "a DNS rule names its port",
    text: cnp(
      `  endpointSelector: {}\n  egress:\n    - toEndpoints: [{}]\n      toPorts:\n        - rules: {dns: [{matchPattern: "*"}]}\n`,
    ),
    message: /DNS rules need their port/,
    path: "spec.egress[0].toPorts[0].ports",
  },
  {
    name: "a bare address in fromCIDRSet[].cidr",
    text: cnp(`${INGRESS}    - fromCIDRSet: [{cidr: 192.0.2.1}]\n`),
    message: /Invalid prefix "192.0.2.1" in fromCIDRSet: .*"192.0.2.1\/32"/,
    path: "spec.ingress[0].fromCIDRSet[0].cidr",
    line: 9,
  },
  {
    name: "a bare address in toCIDRSet[].cidr",
    text: cnp(`  endpointSelector: {}\n  egress:\n    - toCIDRSet: [{cidr: "2001:db8::1"}]\n`),
    message: /Invalid prefix "2001:db8::1" in toCIDRSet: .*"2001:db8::1\/128"/,
    path: "spec.egress[0].toCIDRSet[0].cidr",
  },
  {
    name: "a bare address in a CIDR set's except",
    text: cnp(`${INGRESS}    - fromCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.1]}]\n`),
    message: /Invalid prefix "192.0.2.1" in fromCIDRSet/,
    path: "spec.ingress[0].fromCIDRSet[0].except[0]",
  },
  {
    name: "HTTP rules in a host policy",
    text:
      `apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: h}\nspec:\n  nodeSelector: {}\n  ingress:\n    - toPorts:\n        - ports: [{port: "80", protocol: TCP}]\n          rules: {http: [{method: GET}]}\n`,
    message: /L7 HTTP rules are not allowed in a host policy \(nodeSelector\)/,
    path: "spec.ingress[0].toPorts[0].rules.http",
    line: 9,
  },
  {
    name: "Kafka rules in a host policy",
    text:
      `apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: h}\nspecs:\n  - nodeSelector: {}\n    egress:\n      - toPorts:\n          - ports: [{port: "9092", protocol: TCP}]\n            rules: {kafka: [{topic: t}]}\n`,
    message: /L7 KAFKA rules are not allowed in a host policy/,
    path: "specs[0].egress[0].toPorts[0].rules.kafka",
  },
  {
    name: "more than 40 ICMP fields in one ICMP rule",
    text: cnp(
      `${INGRESS}    - icmps: [{fields: [${
        Array.from({ length: 41 }, () => `{type: 8}`).join(", ")
      }]}]\n`,
    ),
    message: /Too many ICMP fields: 41, at most 40/,
    path: "spec.ingress[0].icmps[0].fields",
  },
  {
    name: "two L7 protocols on one port for the same peers (two rules)",
    text: cnp(
      `${INGRESS}    - toPorts:\n        - ports: [{port: "80", protocol: TCP}]\n          rules: {kafka: [{topic: foo}]}\n    - toPorts:\n        - ports: [{port: "80", protocol: TCP}]\n          rules: {http: [{method: GET, path: /}]}\n`,
    ),
    message:
      /Conflicting L7 protocols on ingress TCP\/80 for the same peers: the HTTP rules of CiliumNetworkPolicy default\/p spec\.ingress\[1\]\.toPorts\[0\] and the Kafka rules of CiliumNetworkPolicy default\/p spec\.ingress\[0\]\.toPorts\[0\]; one proxy cannot enforce both \(Cilium: "cannot merge conflicting L7 parsers"\)/,
    path: "spec.ingress[1].toPorts[0]",
    line: 13,
  },
  {
    name: "two L7 protocols on one port across policies name the first policy",
    text: cnp(
      `${INGRESS}    - fromEndpoints: [{matchLabels: {app: a}}]\n      toPorts:\n        - ports: [{port: "9092", protocol: TCP}]\n          rules: {kafka: [{topic: foo}]}\n`,
      "name: first\n  namespace: default",
    ) + "\n---\n" +
      cnp(
        `  endpointSelector: {}\n  ingress:\n    - fromEndpoints: [{matchExpressions: [{key: app, operator: Exists}]}]\n      toPorts:\n        - ports: [{port: "9000", endPort: 9100, protocol: TCP}]\n          rules: {http: [{}]}\n`,
        "name: second\n  namespace: default",
      ),
    message:
      /on ingress TCP\/9000-9100 for the same peers: the HTTP rules of CiliumNetworkPolicy default\/second spec\.ingress\[0\]\.toPorts\[0\] and the Kafka rules of CiliumNetworkPolicy default\/first spec\.ingress\[0\]\.toPorts\[0\]/,
    path: "spec.ingress[0].toPorts[0]",
  },
  {
    name: "metadata.name must be a DNS-1123 subdomain",
    text: cnp(`  endpointSelector: {}\n`, "name: My_Policy\n  namespace: default"),
    message: /Invalid metadata.name "My_Policy": expected a DNS-1123 subdomain/,
    path: "metadata.name",
    line: 4,
  },
  {
    name: "metadata.name at most 253 characters",
    text: cnp(`  endpointSelector: {}\n`, `name: ${"a".repeat(254)}`),
    message: /Invalid metadata.name "a{254}"/,
    path: "metadata.name",
  },
  {
    name: "metadata.namespace must be a DNS-1123 label",
    text: cnp(`  endpointSelector: {}\n`, "name: p\n  namespace: team.prod"),
    message: /Invalid metadata.namespace "team.prod": expected a DNS-1123 label/,
    path: "metadata.namespace",
    line: 5,
  },
  {
    name: "metadata.namespace at most 63 characters",
    text: `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: ${
      "n".repeat(64)
    }}\nspec:\n  podSelector: {}\n`,
    message: /Invalid metadata.namespace "n{64}"/,
    path: "metadata.namespace",
  },
  {
    name: "KNP podSelector stays required",
    text:
      `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n  ingress: []\n`,
    message: /Missing required field "podSelector"/,
    path: "spec.podSelector",
  },
  {
    name: "duplicate policy names",
    text: cnp(`  endpointSelector: {}\n`) + "\n---\n" + cnp(`  endpointSelector: {}\n`),
    message: /Duplicate policy "default\/p" \(CiliumNetworkPolicy\)/,
  },
];

Deno.test("compilePolicies() rejects bad documents with located, explained errors", async (t) => {
  for (const c of CASES) {
    await t.step(c.name, () => {
      const issues = issuesOf(c.text);
      const hit = issues.find((i) => c.message.test(i.message));
      assert.ok(
        hit,
        `no issue matching ${c.message}; got ${JSON.stringify(issues.map((i) => i.message))}`,
      );
      if (c.path !== undefined) assert.equal(hit.path, c.path);
      if (c.line !== undefined) assert.equal(hit.line, c.line, `line of ${JSON.stringify(hit)}`);
      if (c.column !== undefined) {
        assert.equal(hit.column, c.column, `column of ${JSON.stringify(hit)}`);
      }
      assert.equal(hit.file, "p.yaml");
    });
  }
});

Deno.test("compilePolicies() accepts every policy kind and field the issue lists", () => {
  const text = [
    cnp(`  endpointSelector: {matchLabels: {"k8s:app": b}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: a}, matchExpressions: [{key: env, operator: NotIn, values: [dev]}, {key: tier, operator: Exists}]}]
      fromRequires: [{matchLabels: {env: prod}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}, {port: http, protocol: TCP}]
          rules:
            http:
              - {method: "GET|HEAD", path: "/public/.*", host: "api\\\\.local", headers: ["X-Token: [0-9]+", "X-Present"], headerMatches: [{name: X-A, value: b}, {name: X-S, secret: {name: s}, mismatch: LOG}]}
    - fromEntities: [host, world, cluster, remote-node, init, health, unmanaged, kube-apiserver, ingress, all]
    - fromCIDR: [192.0.2.1, 198.51.100.0/24]
      fromCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]
      toPorts: [{ports: [{port: "8000", endPort: 8080, protocol: ANY}]}]
    - icmps: [{fields: [{type: 8}, {family: IPv6, type: EchoRequest}]}]
  ingressDeny:
    - fromEntities: [world]
      toPorts: [{ports: [{port: "22", protocol: TCP}]}]
  egress:
    - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules: {dns: [{matchName: api.example.com}, {matchPattern: "*.example.com"}]}
    - toFQDNs: [{matchName: api.example.com}]
    - toPorts:
        - ports: [{port: "9092", protocol: TCP}]
          rules: {kafka: [{role: produce, topic: t1, clientID: c}, {apiKey: fetch, apiVersion: "3"}]}
  egressDeny:
    - toCIDR: [10.0.0.0/8]
  enableDefaultDeny: {ingress: true, egress: false}`),
    `apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cc}\nspecs:\n  - endpointSelector: {}\n    ingress: [{fromEndpoints: [{}]}]\n  - nodeSelector: {matchLabels: {role: worker}}\n    ingress: [{fromEntities: [cluster]}]\n`,
    `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: prod}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n    - from: [{podSelector: {matchLabels: {app: api}}, namespaceSelector: {matchLabels: {team: x}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n      ports: [{port: 5432}, {port: 6000, endPort: 6010, protocol: UDP}, {port: metrics}]\n  egress: [{}]\n`,
  ].join("\n---\n");
  const r = compilePolicies({ text }, { regexCheck: check });
  assert.equal(r.spec.policies.length, 3);
  assert.equal(r.spec.rules.length, 4);
  engine.setPolicy(r.spec);
});

Deno.test("JSON documents and v1 List are accepted", () => {
  const policy = {
    apiVersion: "cilium.io/v2",
    kind: "CiliumNetworkPolicy",
    metadata: { name: "j" },
    spec: { endpointSelector: {} },
  };
  assert.equal(compilePolicies({ text: JSON.stringify(policy) }).spec.rules.length, 1);
  const list = {
    apiVersion: "v1",
    kind: "List",
    items: [policy, { ...policy, metadata: { name: "k" } }],
  };
  assert.equal(compilePolicies({ text: JSON.stringify(list) }).spec.policies.length, 2);
});

Deno.test("a rejected policy never replaces the engine's current one", async () => {
  const e = await PolicyEngine.create();
  const good = compilePolicies({
    text: cnp(`  endpointSelector: {}\n  ingress: [{fromEntities: [world]}]\n`),
  });
  e.setPolicy(good.spec);
  const badSpec = structuredClone(good.spec);
  badSpec.rules[0]!.entries[0]!.l7 = {
    kind: "http",
    rules: [{ path: "(", headers: [], headerMatches: [] }],
  };
  assert.throws(
    () => e.setPolicy(badSpec),
    (err: Error) => err instanceof PolicyValidationError && /path regex/.test(err.message),
  );
  assert.equal(e.spec, good.spec);
  e.close();
});

Deno.test("namespace in a CNP endpointSelector is overridden with a warning", () => {
  const r = compilePolicies({
    text: cnp(`  endpointSelector: {matchLabels: {"k8s:io.kubernetes.pod.namespace": other}}\n`),
  });
  assert.match(r.warnings[0]!.message, /namespace in endpointSelector is ignored/);
  const subj = r.spec.rules[0]!.subject;
  assert.deepEqual(subj.kind === "labels" ? subj.requirements : [], [{
    source: "k8s",
    key: "io.kubernetes.pod.namespace",
    op: "In",
    values: ["default"],
  }]);
});

Deno.test("compilePolicies() accepts what Cilium accepts around those checks", async (t) => {
  const ok: [string, string][] = [
    [
      "toCIDR and toEndpoints in separate egress rules; toEntities with toCIDR; ingress lists",
      cnp(
        `  endpointSelector: {}\n  egress:\n    - toEndpoints: [{}]\n    - toCIDR: [192.0.2.0/24]\n      toEntities: [world]\n  ingress:\n    - fromEndpoints: [{}]\n      fromCIDR: [192.0.2.1]\n`,
      ),
    ],
    [
      "an empty list next to toEndpoints is not a combination",
      cnp(`  endpointSelector: {}\n  egress:\n    - toEndpoints: [{}]\n      toCIDR: []\n`),
    ],
    [
      "DNS rules in a host policy",
      `apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: h}\nspec:\n  nodeSelector: {}\n  egress:\n    - toPorts:\n        - ports: [{port: "53", protocol: ANY}]\n          rules: {dns: [{matchPattern: "*"}]}\n`,
    ],
    [
      "40 ICMP fields",
      cnp(
        `${INGRESS}    - icmps: [{fields: [${
          Array.from({ length: 40 }, () => `{type: 8}`).join(", ")
        }]}]\n`,
      ),
    ],
    [
      "HTTP and Kafka on one port for different peers, subjects, directions or protocols",
      [
        cnp(
          `${INGRESS}    - fromEndpoints: [{matchLabels: {app: x}}]\n      toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {kafka: [{topic: t}]}}]\n    - fromEndpoints: [{matchLabels: {app: y}}]\n      toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]\n    - fromCIDR: [192.0.2.0/24]\n      toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]\n`,
          "name: peers\n  namespace: default",
        ),
        cnp(
          `  endpointSelector: {matchLabels: {app: c}}\n  ingress:\n    - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]\n  egress:\n    - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {kafka: [{}]}}]\n`,
          "name: subject-c\n  namespace: default",
        ),
        cnp(
          `  endpointSelector: {matchLabels: {app: b}}\n  ingress:\n    - toPorts: [{ports: [{port: "81", protocol: TCP}], rules: {kafka: [{}]}}]\n`,
          "name: other-port\n  namespace: default",
        ),
        cnp(
          `  endpointSelector: {matchLabels: {app: d}}\n  ingress:\n    - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]\n`,
          "name: other-namespace\n  namespace: prod",
        ),
        cnp(
          `  endpointSelector: {matchLabels: {app: d}}\n  ingress:\n    - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {kafka: [{}]}}]\n`,
          "name: other-namespace\n  namespace: default",
        ),
      ].join("\n---\n"),
    ],
    [
      "HTTP rules of two policies on one port are unioned, not a conflict",
      [
        cnp(
          `${INGRESS}    - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]\n`,
        ),
        cnp(
          `${INGRESS}    - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]\n`,
          "name: q\n  namespace: default",
        ),
      ].join("\n---\n"),
    ],
    [
      "Kubernetes names: dots and dashes in names, a 63-character namespace",
      cnp(`  endpointSelector: {}\n`, `name: allow.dns-1\n  namespace: ${"n".repeat(63)}`),
    ],
  ];
  for (const [name, text] of ok) {
    await t.step(name, () => {
      assert.deepEqual(issuesOf(text).map((i) => i.message), []);
    });
  }
});

Deno.test("KNP podSelector: null selects every pod of the namespace, like {}", () => {
  const knp = (sel: string) =>
    `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: prod}\nspec:\n  podSelector: ${sel}\n  ingress: []\n`;
  const subject = (sel: string) => compilePolicies({ text: knp(sel) }).spec.rules[0]!.subject;
  assert.deepEqual(subject("null"), subject("{}"));
  assert.deepEqual(subject("null"), {
    kind: "labels",
    requirements: [{
      source: "k8s",
      key: "io.kubernetes.pod.namespace",
      op: "In",
      values: ["prod"],
    }],
  });
});

Deno.test("an empty peer list selects no peer and lint says the rule grants nothing", () => {
  const text = cnp(`  endpointSelector: {matchLabels: {id: a}}
  ingress:
    - fromEndpoints: []
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    - toPorts: [{ports: [{port: "81", protocol: TCP}]}]
  egressDeny:
    - toCIDR: []
      toEntities: [world]
`);
  const c = compilePolicies({ text, file: "p.yaml" });
  const [empty, l4only, deny] = c.spec.rules[0]!.entries;
  assert.equal(empty!.emptyPeers, "fromEndpoints");
  assert.deepEqual(empty!.peers.map((p) => p.selector.kind), ["none"]);
  assert.equal(l4only!.emptyPeers, undefined);
  assert.deepEqual(l4only!.peers.map((p) => p.selector.kind), ["all"]);
  assert.equal(deny!.emptyPeers, "toCIDR");
  assert.deepEqual(deny!.peers.map((p) => p.selector.kind), ["none"]);
  const lint = lintPolicies(c).filter((w) => w.code === "empty-peers");
  assert.deepEqual(lint.map((w) => [w.path, w.line]), [["spec.ingress[0]", 9], [
    "spec.egressDeny[0]",
    13,
  ]]);
  assert.match(
    lint[0]!.message,
    /^This rule grants nothing: its peer list is empty \(fromEndpoints: \[\]\)/,
  );
  assert.match(
    lint[1]!.message,
    /^This rule denies nothing: its peer list is empty \(toCIDR: \[\]\)/,
  );
});
