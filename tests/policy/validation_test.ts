// Policy validation: every error names the field path and its line:column, unknown fields get a
// "did you mean" hint, and Cilium's cross-field rules (rule_validation.go) are enforced.

import assert from "node:assert/strict";
import { compilePolicies, PolicyEngine, PolicyValidationError } from "../../policy-wasm/mod.ts";

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
    message: /Invalid operator the string "in": expected one of In, NotIn, Exists, DoesNotExist/,
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
