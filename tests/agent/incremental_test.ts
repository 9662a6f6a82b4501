// Incremental regeneration: a new identity updates the other endpoints' map-states by diffs for
// that identity only (no full recomputation), a released identity by deletes only; new rules
// recompute in full; a failing datapath sink is retried. The incremental result always equals
// a full recomputation.

import assert from "node:assert/strict";
import type { MapStateEntry } from "@cilia/policy-wasm";
import { endpointBody, eventually, startAgent, type TestAgent } from "./_fixture.ts";
import { sortEntries } from "../../agent/endpoint/mapstate_diff.ts";
import type { PolicyChange } from "../../agent/endpoint/datapath_sink.ts";

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {tier: api}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
  egress:
    - toEndpoints: [{matchLabels: {tier: cache}}]
`;

/** Counts the engine's full and per-identity computations. */
function countComputations(t: TestAgent): { full: number[]; incremental: number[] } {
  const seen = { full: [] as number[], incremental: [] as number[] };
  const engine = t.agent.engine;
  const full = engine.computeMapState.bind(engine);
  const inc = engine.mapStateForIdentity.bind(engine);
  engine.computeMapState = (ep) => (seen.full.push(ep), full(ep));
  engine.mapStateForIdentity = (ep, id) => (seen.incremental.push(ep), inc(ep, id));
  return seen;
}

function policyCalls(t: TestAgent, endpoint: number): PolicyChange[] {
  return t.sink.calls.flatMap((c) =>
    c.op === "applyPolicy" && c.endpoint === endpoint ? [c.change] : []
  );
}

/** The sink's state of `ep` equals the agent's, and both equal a full computation now. */
function assertConsistent(t: TestAgent, ep: number): void {
  const full = sortEntries(t.agent.engine.computeMapState(ep).entries);
  const realized = sortEntries(t.sink.policy.get(ep)?.values() ?? []);
  const resolved = t.agent.regen.resolved(ep)!.entries;
  assert.deepEqual(realized, full, `sink state of endpoint ${ep} equals a full computation`);
  assert.deepEqual(resolved, full, `agent state of endpoint ${ep} equals a full computation`);
}

Deno.test("a new identity reaches other endpoints as adds for that identity only", async () => {
  const t = await startAgent();
  try {
    await t.call("PUT", "/v1/policy", POLICY);
    await t.call(
      "PUT",
      "/v1/endpoint/1",
      endpointBody("db", { app: "db" }, { ipv4: "10.200.0.11" }),
    );
    await t.call(
      "PUT",
      "/v1/endpoint/2",
      endpointBody("web", { app: "web" }, { ipv4: "10.200.0.12" }),
    );
    t.sink.calls.length = 0;
    const seen = countComputations(t);

    const api = await t.call(
      "PUT",
      "/v1/endpoint/3",
      endpointBody("api", { app: "api", tier: "api" }),
    );
    const id = api.body.identity;
    assert.deepEqual(seen.full, [3], "only the new endpoint is computed in full");
    // Only the endpoints whose policy the new identity changes (the engine finds them from the
    // selectors that select it): endpoint 2's rules do not relate to it, so it is not computed.
    assert.deepEqual(seen.incremental, [1], "the endpoints it concerns get its entries");
    const [change, ...more] = policyCalls(t, 1);
    assert.equal(more.length, 0);
    assert.equal(change!.full, false);
    assert.deepEqual(change!.deletes, []);
    assert.ok(change!.adds.length > 0);
    assert.ok(change!.adds.every((e: MapStateEntry) => e.identity === id), JSON.stringify(change));
    assert.ok(change!.adds.some((e) => e.direction === "ingress" && e.portLo === 5432));
    assert.deepEqual(
      policyCalls(t, 2),
      [],
      "an endpoint no rule relates to the identity gets no call",
    );
    for (const ep of [1, 2, 3]) assertConsistent(t, ep);

    // A second endpoint with the same identity changes nobody else's map-state.
    t.sink.calls.length = 0;
    seen.full.length = 0;
    seen.incremental.length = 0;
    const api2 = await t.call(
      "PUT",
      "/v1/endpoint/4",
      endpointBody("api-2", { app: "api", tier: "api" }),
    );
    assert.equal(api2.body.identity, id);
    assert.deepEqual(seen, { full: [4], incremental: [] });
    assert.deepEqual([policyCalls(t, 1), policyCalls(t, 2)], [[], []]);
  } finally {
    await t.close();
  }
});

Deno.test("a released identity leaves by deletes only; new rules recompute in full", async () => {
  const t = await startAgent({ config: { identityGcGrace: 1 } });
  try {
    await t.call("PUT", "/v1/policy", POLICY);
    await t.call("PUT", "/v1/endpoint/1", endpointBody("db", { app: "db" }));
    const cache = await t.call(
      "PUT",
      "/v1/endpoint/2",
      endpointBody("cache", { app: "redis", tier: "cache" }),
    );
    const id = cache.body.identity;
    await t.call("DELETE", "/v1/endpoint/2");
    t.sink.calls.length = 0;
    const seen = countComputations(t);
    const now = Date.now();
    assert.deepEqual(await t.agent.gc.runOnce(now), [], "not before the grace period");
    assert.deepEqual(await t.agent.gc.runOnce(now + 1001), [id]);
    await eventually("the identity's removal", () => t.agent.identities.get(id) === undefined);
    await t.agent.serial.idle();
    const [change] = policyCalls(t, 1);
    assert.equal(change?.full, false);
    assert.deepEqual(change?.adds, []);
    assert.ok(change!.deletes.length > 0 && change!.deletes.every((e) => e.identity === id));
    assert.deepEqual(seen.full, []);
    assertConsistent(t, 1);

    t.sink.calls.length = 0;
    seen.full.length = 0; // assertConsistent() computed too
    await t.call("PUT", "/v1/policy", POLICY.replace("5432", "5433"));
    assert.deepEqual(seen.full, [1]);
    const [full] = policyCalls(t, 1);
    assert.equal(full?.full, true);
    assert.equal(full?.revision, 3);
    assertConsistent(t, 1);
  } finally {
    await t.close();
  }
});

Deno.test("a failing datapath sink leaves the endpoint not ready and is retried in full", async () => {
  const t = await startAgent();
  try {
    await t.call("PUT", "/v1/policy", POLICY);
    await t.call("PUT", "/v1/endpoint/1", endpointBody("db", { app: "db" }));
    t.sink.failWith = new Error("map update failed");
    // A new endpoint cannot be written: refused, not kept. Its new identity still reaches db,
    // whose write fails too: db is not ready.
    const api = await t.call("PUT", "/v1/endpoint/2", endpointBody("api", { tier: "api" }));
    assert.equal(api.status, 503);
    const db = (await t.call("GET", "/v1/endpoint/1")).body;
    assert.equal(db.state, "not-ready");
    assert.match(db.error, /map update failed/);
    assert.equal((await t.call("GET", "/v1/status")).body.endpoints.notReady, 1);
    t.sink.failWith = undefined;
    await eventually(
      "db ready again",
      async () => (await t.call("GET", "/v1/endpoint/1")).body.state === "ready",
    );
    const full = policyCalls(t, 1).at(-1)!;
    assert.equal(full.full, true, "the retry is a full write");
    await t.call("PUT", "/v1/endpoint/2", endpointBody("api", { tier: "api" }));
    await t.call("PUT", "/v1/endpoint/3", endpointBody("other", { app: "other" }));
    for (const ep of [1, 2, 3]) assertConsistent(t, ep);
  } finally {
    await t.close();
  }
});
