// Fail closed in the agent (issue 18): a datapath write that fails never leaves more allowed
// than the policy the agent reports. Faults are injected into the recording sink (the kernel
// variant with real packets is tests/e2e/fail_closed_test.ts) and into the kvstore: a new
// endpoint that cannot be written is refused and leaves nothing; a policy change that cannot be
// written everywhere says so (202, `unrealised`), shows in status, endpoint list and metrics,
// and is retried with backoff until it is in force, without any other event; a store failure
// leaves the engine and the datapath untouched; store keys cannot collide; a document too large
// for the store is refused before anything changes; the policy revision survives a restart.

import assert from "node:assert/strict";
import { endpointBody, eventually, startAgent, type TestAgent } from "./_fixture.ts";
import { sortEntries } from "../../agent/endpoint/mapstate_diff.ts";
import { policyKey } from "../../agent/policy/documents.ts";
import { kvError } from "../../agent/kvstore/errors.ts";

const WIDE = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {tier: api}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}, {port: "9000", protocol: TCP}]}]
`;
const NARROW = WIDE.replace(`, {port: "9000", protocol: TCP}`, "");

/** The sink's (the datapath's) entries for endpoint `ep`, and a full computation now. */
function kernelAndEngine(t: TestAgent, ep: number) {
  return {
    kernel: sortEntries(t.sink.policy.get(ep)?.values() ?? []),
    engine: sortEntries(t.agent.engine.computeMapState(ep).entries),
  };
}

Deno.test("a new endpoint whose datapath write fails is refused and leaves nothing behind", async () => {
  const t = await startAgent();
  try {
    await t.call("PUT", "/v1/policy", WIDE);
    t.sink.failWith = new Error("No space left on device");
    t.sink.failOps = new Set(["attach", "applyPolicy"]);
    const r = await t.call(
      "PUT",
      "/v1/endpoint/7",
      endpointBody("db", { app: "db" }, { ipv4: "10.200.0.77" }),
    );
    assert.equal(r.status, 503, JSON.stringify(r.body));
    assert.equal(r.body.error.code, "endpoint_not_realised");
    assert.match(r.body.error.message, /endpoint 7 \(default\/db\).*No space left on device/);
    assert.equal((await t.call("GET", "/v1/endpoint/7")).status, 404, "not kept");
    assert.equal(t.agent.regen.resolved(7), undefined, "not in the regenerator");
    assert.equal(t.sink.ipcache.get("10.200.0.77"), undefined, "its address is not in the ipcache");
    const ids = (await t.call("GET", "/v1/identity")).body as {
      labels: string[];
      refs?: number;
    }[];
    const db = ids.filter((i) => i.labels.includes("k8s:app=db"));
    assert.ok(db.every((i) => !i.refs), `identity released: ${JSON.stringify(db)}`);
    assert.equal((await t.call("GET", "/v1/status")).body.endpoints.notReady, 0);
    t.sink.failWith = undefined;
    assert.equal(
      (await t.call(
        "PUT",
        "/v1/endpoint/7",
        endpointBody("db", { app: "db" }, { ipv4: "10.200.0.77" }),
      ))
        .status,
      201,
      "the same endpoint is created once the fault clears",
    );
  } finally {
    await t.close();
  }
});

Deno.test("a policy change that cannot be written is reported, visible, and retried until in force", async (tt) => {
  const t = await startAgent();
  try {
    assert.equal((await t.call("PUT", "/v1/policy", WIDE)).status, 200);
    await t.call("PUT", "/v1/endpoint/1", endpointBody("db", { app: "db" }));
    await t.call("PUT", "/v1/endpoint/2", endpointBody("api", { tier: "api" }));
    const wide = kernelAndEngine(t, 1).kernel;

    t.sink.failWith = new Error("No space left on device");
    t.sink.failOps = new Set(["applyPolicy"]);
    const r = await t.call("PUT", "/v1/policy", NARROW);

    await tt.step("the API says the change is stored but not in force", () => {
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body.changed, true);
      assert.equal(r.body.realised, false);
      const ids = r.body.unrealised.map((u: { endpoint: number }) => u.endpoint);
      assert.ok(ids.includes(1), `endpoint 1 named: ${JSON.stringify(r.body.unrealised)}`);
      assert.match(r.body.unrealised[0].error, /No space left on device/);
    });

    await tt.step("nothing is recorded as written: the datapath still has the wide policy", () => {
      assert.deepEqual(kernelAndEngine(t, 1).kernel, wide);
      assert.equal(t.agent.regen.resolved(1)!.entries.length, wide.length);
    });

    await tt.step("status, endpoint list and metrics show the gap", async () => {
      const s = (await t.call("GET", "/v1/status")).body;
      assert.equal(s.realised, false);
      assert.ok(s.endpoints.notReady >= 1);
      assert.ok(s.policy.realisedRevision < s.policy.revision, JSON.stringify(s.policy));
      assert.ok(s.endpoints.problems.some((p: { id: number }) => p.id === 1));
      assert.ok(s.warnings.some((w: string) => /endpoint 1 .*not ready/.test(w)), s.warnings);
      const ep = (await t.call("GET", "/v1/endpoint/1")).body;
      assert.equal(ep.state, "not-ready");
      assert.ok(ep.policyRevision < s.policy.revision);
      const m = (await t.call("GET", "/v1/metrics")).body as string;
      assert.match(m, /cilia_endpoint_state\{state="not-ready"\} [1-9]/);
      assert.match(m, /cilia_policy_unrealised_endpoints [1-9]/);
    });

    await tt.step("re-importing while the fault lasts still says so", async () => {
      const again = await t.call("PUT", "/v1/policy", NARROW);
      assert.equal(again.status, 202);
      assert.equal(again.body.changed, false);
      assert.equal(again.body.realised, false);
    });

    await tt.step(
      "once the fault clears the retry loop writes it, with no other event",
      async () => {
        t.sink.failWith = undefined;
        await eventually(
          "endpoint 1 ready",
          async () => (await t.call("GET", "/v1/endpoint/1")).body.state === "ready",
          15_000,
        );
        const { kernel, engine } = kernelAndEngine(t, 1);
        assert.deepEqual(kernel, engine, "the datapath holds exactly the narrow policy");
        assert.ok(kernel.length < wide.length);
        const s = (await t.call("GET", "/v1/status")).body;
        assert.equal(s.realised, true);
        assert.equal(s.policy.realisedRevision, s.policy.revision);
        assert.match(
          (await t.call("GET", "/v1/metrics")).body,
          /cilia_endpoint_state\{state="not-ready"\} 0/,
        );
      },
    );
  } finally {
    await t.close();
  }
});

Deno.test("a kvstore failure during import changes neither the engine nor the datapath", async () => {
  const t = await startAgent();
  try {
    await t.call("PUT", "/v1/policy", WIDE);
    await t.call("PUT", "/v1/endpoint/1", endpointBody("db", { app: "db" }));
    const before = kernelAndEngine(t, 1);
    const calls = t.sink.calls.length;
    const revision = t.agent.policies.revision;
    const store = t.agent.store;
    const put = store.put;
    store.put = (key) =>
      Promise.reject(kvError("put", key, store.name, new Error("disk I/O error")));
    try {
      const r = await t.call("PUT", "/v1/policy", NARROW);
      assert.equal(r.status, 503, JSON.stringify(r.body));
    } finally {
      store.put = put;
    }
    assert.equal(t.sink.calls.length, calls, "no datapath write for a change the store refused");
    assert.deepEqual(kernelAndEngine(t, 1), before, "engine and datapath keep the wide policy");
    assert.equal(t.agent.policies.revision, revision);
    assert.match(
      (await t.call("GET", "/v1/policy")).body,
      /"9000"/,
      "policy get shows the old one",
    );
  } finally {
    await t.close();
  }
});

Deno.test("policyKey() keeps names and namespaces apart whatever they contain", () => {
  const a = policyKey({ kind: "CiliumNetworkPolicy", namespace: "default/deny", name: "1" });
  const b = policyKey({ kind: "CiliumNetworkPolicy", namespace: "default", name: "deny/1" });
  assert.notEqual(a, b);
  assert.equal(
    policyKey({ kind: "CiliumNetworkPolicy", namespace: "default", name: "allow-dns" }),
    "cilia/policies/CiliumNetworkPolicy/default/allow-dns",
    "valid names are unchanged",
  );
});

Deno.test("an import with a name or namespace Kubernetes refuses cannot replace another policy", async () => {
  const t = await startAgent();
  try {
    const deny = WIDE.replace("name: db, namespace: default", "name: deny-1, namespace: default");
    assert.equal((await t.call("PUT", "/v1/policy", deny)).status, 200);
    const odd = WIDE.replace(
      "name: db, namespace: default",
      `name: "1", namespace: "default/deny"`,
    );
    const r = await t.call("PUT", "/v1/policy", odd);
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.match(JSON.stringify(r.body), /metadata\.namespace/);
    const slash = WIDE.replace(
      "name: db, namespace: default",
      `name: "deny/1", namespace: default`,
    );
    assert.equal((await t.call("PUT", "/v1/policy", slash)).status, 400);
    assert.equal(t.agent.policies.size, 1, "the deny policy is still the only one");
  } finally {
    await t.close();
  }
});

Deno.test("a policy document larger than the kvstore holds is refused before anything changes", async () => {
  const t = await startAgent();
  try {
    await t.call("PUT", "/v1/policy", WIDE);
    const revision = t.agent.policies.revision;
    const rules = Array.from(
      { length: 1500 },
      (_, i) =>
        `    - fromEndpoints: [{matchLabels: {tier: api, n: "${i}"}}]\n` +
        `      toPorts: [{ports: [{port: "${1000 + i}", protocol: TCP}]}]\n`,
    ).join("");
    const big = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: big, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
${rules}`;
    assert.ok(big.length > 70_000 && big.length < 1_000_000);
    const r = await t.call("PUT", "/v1/policy", big);
    assert.equal(r.status, 413, JSON.stringify(r.body).slice(0, 300));
    assert.equal(r.body.error.code, "policy_too_large");
    assert.match(r.body.error.message, /"default\/big" is \d+ bytes.*at most \d+ bytes/);
    assert.doesNotMatch(r.body.error.message, /unreachable/);
    assert.equal(t.agent.policies.revision, revision);
    assert.equal(t.agent.policies.size, 1);
  } finally {
    await t.close();
  }
});

Deno.test("the policy revision never goes back across a restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-revision-" });
  try {
    let t = await startAgent({ dir });
    await t.call("PUT", "/v1/policy", WIDE);
    await t.call("PUT", "/v1/policy", NARROW);
    const revision = t.agent.policies.revision;
    assert.ok(revision >= 2);
    await t.stop();
    t = await startAgent({ dir });
    assert.equal(t.agent.policies.revision, revision, "same documents, same revision");
    const r = await t.call("PUT", "/v1/policy", WIDE);
    assert.equal(r.body.revision, revision + 1);
    await t.close();
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
