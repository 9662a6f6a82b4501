// Identities: the same labels get the same number everywhere, the label filter, exhaustion and
// the status warning, index repair, and two agent processes on one etcd that race for the same
// label sets, then one is killed: its references expire and only identities nobody else uses
// are released.

import assert from "node:assert/strict";
import { endpointBody, eventually, sleep, spawnAgent, startAgent } from "./_fixture.ts";
import { startEtcd } from "../helpers/etcd.ts";
import { needs } from "../helpers/root.ts";
import { hashLabels, labelsKey } from "../../agent/identity/keys.ts";

Deno.test("identities: same labels → same number, different → different; volatile labels are left out", async () => {
  const t = await startAgent();
  try {
    const put = async (id: number, labels: Record<string, string>, extra = {}) =>
      (await t.call("PUT", `/v1/endpoint/${id}`, endpointBody(`ep-${id}`, labels, extra))).body;
    const a = await put(1, {
      app: "web",
      "pod-template-hash": "6f7c",
      "controller-revision-hash": "1",
    });
    const b = await put(2, {
      app: "web",
      "pod-template-hash": "9a9a",
      "statefulset.kubernetes.io/pod-name": "web-0",
    });
    const c = await put(3, { app: "db" });
    const d = await put(4, { app: "web" }, { serviceAccount: "other" });
    const e = await put(5, { app: "web" }, { namespaceLabels: { team: "x" } });
    assert.equal(a.identity, b.identity, "volatile labels do not split identities");
    assert.deepEqual(a.identityLabels, [
      "k8s:app=web",
      "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default",
      "k8s:io.cilium.k8s.policy.cluster=default",
      "k8s:io.cilium.k8s.policy.serviceaccount=default",
      "k8s:io.kubernetes.pod.namespace=default",
    ]);
    assert.equal(new Set([a.identity, c.identity, d.identity, e.identity]).size, 4);
    assert.ok(e.identityLabels.includes("k8s:io.cilium.k8s.namespace.labels.team=x"));
    assert.equal(t.agent.allocator.refCount(a.identity), 2);
  } finally {
    await t.close();
  }
});

Deno.test("identities: include/exclude patterns are configurable", async () => {
  const t = await startAgent({
    config: { identityLabels: ["app$", "io\\.kubernetes\\.pod\\.namespace$", "!.*"] },
  });
  try {
    const r = await t.call(
      "PUT",
      "/v1/endpoint/1",
      endpointBody("a", { app: "a", version: "v2", team: "x" }),
    );
    assert.ok(r.body.identityLabels.includes("k8s:app=a"));
    assert.ok(!r.body.identityLabels.some((l: string) => /version|team=/.test(l)));
  } finally {
    await t.close();
  }
  await assert.rejects(
    () => startAgent({ config: { identityLabels: ["(unclosed"] } }),
    /"identity-labels": Invalid label filter pattern "\(unclosed"/,
  );
});

Deno.test("identities: numbers follow from the labels, so fresh stores agree; a stale index is ignored and repaired", async () => {
  const one = await startAgent();
  const two = await startAgent();
  try {
    const labels = { app: "same", tier: "x" };
    const a = await one.call("PUT", "/v1/endpoint/1", endpointBody("a", labels));
    const b = await two.call("PUT", "/v1/endpoint/9", endpointBody("b", labels));
    assert.equal(
      a.body.identity,
      b.body.identity,
      "two separate stores probe the same number first",
    );

    // Crash window: the labels index is missing, or points at a number that is gone.
    const { hex } = await hashLabels(a.body.identityLabels);
    await one.agent.store.delete(labelsKey(hex));
    await one.agent.gc.runOnce();
    assert.ok(await one.agent.store.get(labelsKey(hex)), "the collector repaired the index");
    const fresh = { app: "fresh" };
    const freshLabels = one.agent.endpoints.identityLabels({
      name: "c",
      namespace: "default",
      labels: fresh,
    });
    const freshKey = labelsKey((await hashLabels(freshLabels)).hex);
    await one.agent.store.put(freshKey, new TextEncoder().encode("999"));
    const c = await one.call("PUT", "/v1/endpoint/2", endpointBody("c", fresh));
    assert.notEqual(c.body.identity, 999);
    assert.equal(
      new TextDecoder().decode((await one.agent.store.get(freshKey))!.value),
      String(c.body.identity),
    );
  } finally {
    await one.close();
    await two.close();
  }
});

Deno.test("identities: the range runs out with a clear error, and status warns above 90%", async () => {
  const t = await startAgent({ config: { identityRange: { min: 256, max: 259 } } });
  try {
    for (let i = 1; i <= 3; i++) {
      assert.equal(
        (await t.call("PUT", `/v1/endpoint/${i}`, endpointBody(`e${i}`, { n: `${i}` }))).status,
        201,
      );
    }
    assert.equal((await t.call("GET", "/v1/status")).body.identities.warning, undefined);
    assert.equal(
      (await t.call("PUT", "/v1/endpoint/4", endpointBody("e4", { n: "4" }))).status,
      201,
    );
    const s = (await t.call("GET", "/v1/status")).body;
    assert.match(
      s.identities.warning,
      /4 of 4 identities \(100%\) are in use: the range 256-259 is running out/,
    );
    assert.deepEqual(s.warnings, [s.identities.warning]);
    const full = await t.call("PUT", "/v1/endpoint/5", endpointBody("e5", { n: "5" }));
    assert.equal(full.status, 503);
    assert.equal(full.body.error.code, "identity_exhausted");
    assert.match(full.body.error.message, /all 4 identities 256-259 are in use/);
    assert.equal(t.agent.endpoints.size, 4);
  } finally {
    await t.close();
  }
});

Deno.test(
  "two agent processes on one etcd agree on every identity; a killed agent's unshared identities are released",
  needs({ binaries: ["etcd"] }),
  async () => {
    const etcd = await startEtcd();
    const args = [
      "--kvstore",
      etcd.url,
      "--lease-ttl",
      "2s",
      "--identity-gc-grace",
      "1s",
      "--identity-gc-interval",
      "250ms",
      "--log-level",
      "warn",
    ];
    const agents = await Promise.all([
      spawnAgent({ node: "node-a", args: [...args, "--pod-cidr", "10.200.0.0/24"] }),
      spawnAgent({ node: "node-b", args: [...args, "--pod-cidr", "10.201.0.0/24"] }),
    ]);
    const [a, b] = agents;
    try {
      // Both create 16 endpoints with the same 8 label sets (each twice) at the same time.
      const sets = Array.from({ length: 16 }, (_, i) => ({ app: `app-${i % 8}`, tier: "t" }));
      await Promise.all(agents.flatMap((agent) =>
        sets.map(async (labels, i) => {
          const r = await agent.api.call(
            "PUT",
            `/v1/endpoint/${i + 1}`,
            endpointBody(`ep-${i}`, labels),
          );
          assert.equal(r.status, 201, JSON.stringify(r.body));
        })
      ));
      const ids = async (agent: typeof a) =>
        ((await agent.api.call("GET", "/v1/endpoint")).body as { id: number; identity: number }[])
          .map((e) => [e.id, e.identity]);
      assert.deepEqual(await ids(a), await ids(b), "both agents agree on every identity");
      assert.equal(new Set((await ids(a)).map(([, n]) => n)).size, 8);

      // An identity only A uses; one both use.
      const onlyA =
        (await a.api.call("PUT", "/v1/endpoint/100", endpointBody("solo", { app: "solo" }))).body
          .identity;
      const shared = (await a.api.call("GET", "/v1/endpoint/1")).body.identity;
      const known = async (agent: typeof b, id: number) =>
        (await agent.api.call("GET", `/v1/identity/${id}`)).status === 200;
      await eventually("B to learn A's identity", () => known(b, onlyA));
      await sleep(1600); // longer than grace + interval: a used identity is never released
      assert.ok(await known(b, onlyA), "still in use by A: not released");

      assert.equal(await a.kill("SIGKILL"), 137);
      await eventually(
        "A's references to expire and its identity to be released",
        async () => !(await known(b, onlyA)),
        15_000,
      );
      assert.ok(await known(b, shared), "an identity B still uses stays");
      assert.equal((await b.api.call("GET", "/v1/endpoint/1")).body.identity, shared);
    } finally {
      await Promise.all(agents.map((x) => x.stop()));
      await etcd.stop();
    }
  },
);
