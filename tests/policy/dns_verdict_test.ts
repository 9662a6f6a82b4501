// PolicyEngine.judgeDns(), the DNS proxy's per-query path (no explanation, written and read in
// place), against query(): same verdict, cookie and L7 outcome for names that match and do not
// match the DNS rules (patterns, exact names, case, non-ASCII), peers with and without rules,
// ports and protocols.

import assert from "node:assert/strict";
import { compilePolicies, PolicyEngine, SimCluster } from "../../policy-wasm/mod.ts";
import { prng } from "../helpers/prng.ts";

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {app: dns}}]
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns:
              - matchPattern: "*.example.com"
              - matchName: "api.example.net"
              - matchPattern: "db-*.svc.cluster.local"
    - toEndpoints: [{matchLabels: {app: other}}]
      toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`;

const NAMES = [
  "api.example.com.",
  "API.Example.COM.",
  "example.com.",
  "a.b.example.com.",
  "api.example.net.",
  "www.example.net.",
  "db-1.svc.cluster.local.",
  "db.svc.cluster.local.",
  "é.example.com.",
  "",
  ".",
  "x".repeat(200) + ".example.com.",
];

Deno.test("judgeDns() gives query()'s verdict, cookie and L7 outcome", async () => {
  const engine = await PolicyEngine.create();
  const cluster = new SimCluster({
    endpoints: ["client", "dns", "other", "stranger"].map((app) => ({
      name: app,
      labels: { app },
    })),
  });
  cluster.load(engine, compilePolicies({ text: POLICY }).spec, engine.options);
  const client = cluster.endpoint("client")!;
  const peers = ["dns", "other", "stranger"].map((n) => cluster.endpoint(n)!.identity);
  const rnd = prng(0xd25);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const seen = new Set<string>();
  for (let i = 0; i < 1000; i++) {
    const q = {
      endpoint: client.id,
      direction: "egress" as const,
      peer: pick(peers),
      proto: pick([17, 17, 6]),
      port: pick([53, 53, 54]),
      dns: pick(NAMES),
    };
    const want = engine.query(q);
    assert.deepEqual(
      engine.judgeDns(q),
      {
        verdict: want.verdict,
        cookie: want.cookie,
        l7: { status: want.l7.status, entry: want.l7.entry, rule: want.l7.rule },
      },
      JSON.stringify(q),
    );
    seen.add(`${want.verdict}/${want.l7.status}`);
  }
  // Every kind of outcome was exercised: redirect allowed and denied, allow, deny.
  for (const k of ["redirect/allowed", "redirect/denied", "allow/not-evaluated"]) {
    assert.ok(seen.has(k), `${k} not exercised: ${[...seen].join(", ")}`);
  }
  assert.ok([...seen].some((k) => k.startsWith("deny/")), [...seen].join(", "));
  engine.close();
});
