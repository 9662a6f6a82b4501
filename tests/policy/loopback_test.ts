// A pod talking to itself never reaches the datapath (loopback inside the pod): allowed even when
// its policy denies everything, while another pod with the same identity is still judged.

import assert from "node:assert/strict";
import { loadScenario, PolicyEngine, runScenario } from "../../policy-wasm/mod.ts";

Deno.test("loopback is allowed; the same identity on another pod is judged by policy", async () => {
  const engine = await PolicyEngine.create();
  const loaded = loadScenario(`
name: loopback
policies:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: deny-all, namespace: default}
    spec:
      endpointSelector: {matchLabels: {app: web}}
      ingress: [{}]
      egress: [{}]
endpoints:
  - {name: web-1, labels: {app: web}, ip: 10.0.0.1}
  - {name: web-2, labels: {app: web}, ip: 10.0.0.2}
queries:
  - {name: self, from: web-1, to: web-1, port: 80, expect: allowed}
  - {name: self by IP, from: {cidr: 10.0.0.1}, to: web-1, port: 80, expect: allowed}
  - {name: same identity, from: web-1, to: web-2, port: 80, expect: denied}
`);
  const r = runScenario(engine, loaded);
  assert.deepEqual(r.results.map((q) => q.verdict), ["allowed", "allowed", "denied"]);
  assert.match(r.results[0]!.trace[1]!, /^Loopback: default\/web-1 talks to itself/);
  assert.equal(r.results[2]!.flow.ingress?.result.dropReason, 133);
  engine.close();
});
