// The agent's live trace and `cilia policy trace` offline report a flow in the same words and
// fields: traceFlow() finds its peers among the agent's endpoints through a PeerLookup and reports
// with renderFlow(), so for the same engine state both reports are equal.

import assert from "node:assert/strict";
import {
  evaluateFlow,
  loadScenario,
  PolicyEngine,
  prepareScenario,
  renderFlow,
} from "../../policy-wasm/mod.ts";
import { traceFlow } from "../../agent/policy/trace.ts";

type Records = Parameters<typeof traceFlow>[1];

Deno.test("traceFlow() reports a live flow exactly as the offline trace does", async (t) => {
  const engine = await PolicyEngine.create();
  try {
    const loaded = loadScenario(`
policies:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: db-from-api, namespace: prod}
    spec:
      endpointSelector: {matchLabels: {app: db}}
      ingress: [{fromEndpoints: [{matchLabels: {app: api}}], toPorts: [{ports: [{port: "5432"}]}]}]
endpoints:
  - {name: api, namespace: prod, labels: {app: api}, ip: 10.0.0.1}
  - {name: db, namespace: prod, labels: {app: db}, ip: 10.0.0.2}
`);
    const { cluster } = prepareScenario(engine, loaded);
    // The agent's records of the same endpoints (same ids, identities and addresses).
    const records = cluster.endpoints.map((e) => ({
      id: e.id,
      name: e.name,
      namespace: e.namespace,
      labels: {},
      identity: e.identity,
      identityLabels: e.labels,
      ipv4: e.ips[0],
      namedPorts: e.ports,
    })) as unknown as Records;
    const db = String(cluster.endpoint("db")!.id);
    // [name, live from, live to, offline from, offline to, port]
    const cases = [
      ["by name", "api", "db", "api", "db", 5432],
      ["by namespace/name and id", { endpoint: "prod/api" }, db, "prod/api", "prod/db", 80],
      ["from an IP", { ip: "203.0.113.7" }, "db", { cidr: "203.0.113.7" }, "db", 5432],
    ] as const;
    for (const [name, from, to, offFrom, offTo, port] of cases) {
      await t.step(name, () => {
        const live = traceFlow(engine, records, { from, to, port, protocol: "TCP" });
        const offline = renderFlow(
          engine,
          evaluateFlow(cluster, engine, { from: offFrom, to: offTo, port, protocol: "TCP" }),
        );
        assert.deepEqual(live, offline);
        assert.equal(live.ingress?.endpoint, "prod/db");
        assert.equal(live.ingress?.endpointId, cluster.endpoint("db")!.id);
      });
    }
  } finally {
    engine.close();
  }
});
