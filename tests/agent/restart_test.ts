// Restart and restore: an agent process on its default Deno KV store gets policies, endpoints
// and addresses, stops cleanly on SIGTERM, and a new process on the same state dir comes back
// with identical identities, IPAM, policies, endpoints and map-states. Its log is JSON lines.

import assert from "node:assert/strict";
import { type AgentProcess, endpointBody, POLICY_HTTP, spawnAgent } from "./_fixture.ts";
import { type KvStore, openKvStore } from "../../agent/kvstore/kvstore.ts";

const CIDR = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-cidr, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
    - toCIDR: [203.0.113.0/24]
    - toEndpoints: [{matchLabels: {app: backend}}]
`;

/** This node's identity references: key → lease. */
async function references(kv: KvStore) {
  const refs = await kv.list("cilia/identities/refs/");
  return new Map(refs.filter((e) => e.key.endsWith("/node-r")).map((e) => [e.key, e.lease]));
}

async function snapshot(agent: AgentProcess) {
  const get = async (path: string) => (await agent.api.call("GET", path)).body;
  const endpoints = (await get("/v1/endpoint")) as Record<string, unknown>[];
  const resolved = [];
  for (const e of endpoints) {
    const { revision: _r, ...rest } = await get(`/v1/policy/resolved/${e.id}`);
    resolved.push(rest);
  }
  return {
    identities: await get("/v1/identity"),
    ipam: await get("/v1/ipam"),
    policies: await get("/v1/policy"),
    endpoints: endpoints.map(({ policyRevision: _p, ...e }) => e),
    resolved,
  };
}

Deno.test("restart: a SIGTERM'd agent comes back with identical identities, IPAM, policies, endpoints, map-states", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-restart-" });
  const args = ["--pod-cidr", "10.210.0.0/24", "--pod-cidr-v6", "fd00:210::/64"];
  let agent: AgentProcess | undefined;
  let kv: KvStore | undefined;
  try {
    agent = await spawnAgent({ node: "node-r", dir, args });
    const call = (m: string, p: string, b?: unknown) => agent!.api.call(m, p, b);
    assert.equal((await call("PUT", "/v1/policy", `${POLICY_HTTP}---\n${CIDR}`)).status, 200);
    const fe = await call("POST", "/v1/ipam", { owner: "frontend" });
    await call(
      "PUT",
      "/v1/endpoint/11",
      endpointBody("frontend", { app: "frontend" }, { ipv4: fe.body.ip }),
    );
    await call(
      "PUT",
      "/v1/endpoint/12",
      endpointBody("backend", { app: "backend" }, { ipv4: "10.210.0.50", ipv6: "fd00:210::50" }),
    );
    await call("PUT", "/v1/endpoint/13", endpointBody("backend-2", { app: "backend" }));
    await call("POST", "/v1/ipam", { owner: "spare", family: 6 });
    const before = await snapshot(agent);
    assert.equal(before.endpoints.length, 3);
    assert.ok((before.identities as { scope: string }[]).some((i) => i.scope === "local"));
    kv = await openKvStore(`denokv://${dir}/state/kv.sqlite`);
    const refs = [...new Set(before.endpoints.map((e) => e.identity))]
      .map((id) => `cilia/identities/refs/${id}/node-r`).sort();
    assert.equal(refs.length, 2);
    const refsBefore = await references(kv);
    assert.deepEqual([...refsBefore.keys()].sort(), refs);

    assert.equal(await agent.kill("SIGTERM"), 0, agent.log());
    const lines = agent.log().trim().split("\n");
    for (const line of lines) {
      const entry = JSON.parse(line);
      assert.ok(entry.time && entry.level && entry.msg, line);
    }
    assert.ok(lines.some((l) => JSON.parse(l).msg === "agent stopped"), "clean shutdown");
    await assert.rejects(
      () => Deno.lstat(`${dir}/cilia.sock`),
      Deno.errors.NotFound,
      "socket removed",
    );
    await agent.stop();

    agent = await spawnAgent({ node: "node-r", dir, args });
    const after = await snapshot(agent);
    assert.deepEqual(after, before);
    // The restore took the references again (one batch), under the new agent's lease.
    const refsAfter = await references(kv);
    assert.deepEqual([...refsAfter.keys()].sort(), refs);
    const leases = new Set(refsAfter.values());
    assert.equal(leases.size, 1);
    assert.ok(!leases.has(refsBefore.get(refs[0]!)), "the new agent's lease, not the old one");
    const status = (await agent.api.call("GET", "/v1/status")).body;
    assert.deepEqual([status.endpoints.count, status.policy.count, status.identities.local], [
      3,
      2,
      1,
    ]);
    // The restored agent keeps allocating where it left off, without duplicates.
    const next = await agent.api.call("POST", "/v1/ipam", { owner: "new" });
    const taken = (before.ipam as { allocations: { ip: string }[] }).allocations.map((a) => a.ip);
    assert.ok(!taken.includes(next.body.ip), `${next.body.ip} not in ${taken}`);
  } finally {
    await kv?.close();
    await agent?.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
