// The policy repository through the API: import → revision → map-state; rejected imports leave
// the previous policy in force and store nothing; GET is importable again unchanged; delete by
// name and by labels; local CIDR identities; a policy imported on one agent applies on another
// that shares etcd.

import assert from "node:assert/strict";
import { endpointBody, eventually, POLICY_HTTP, startAgent, type TestAgent } from "./_fixture.ts";
import { startEtcd } from "../helpers/etcd.ts";
import { needs } from "../helpers/root.ts";

const DENY_ALL = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: db-lockdown
  namespace: default
  labels: {team: storage, env: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: backend}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`;

const CIDR = `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: egress-to-dns
  labels: {team: net}
spec:
  endpointSelector: {}
  egress:
    - toCIDR: [192.0.2.0/24]
    - toCIDRSet: [{cidr: 198.51.100.0/24, except: [198.51.100.128/25]}]
`;

async function withEndpoints(t: TestAgent): Promise<Record<string, number>> {
  const ids: Record<string, number> = {};
  for (const [id, app] of [[1, "frontend"], [2, "backend"], [3, "db"]] as const) {
    const r = await t.call(
      "PUT",
      `/v1/endpoint/${id}`,
      endpointBody(app, { app }, { ipv4: `10.200.0.${10 + id}` }),
    );
    assert.equal(r.status, 201, JSON.stringify(r.body));
    ids[app] = r.body.identity;
  }
  return ids;
}

Deno.test("policy import: revision bumps and the endpoint's map-state reflects it", async () => {
  const t = await startAgent();
  try {
    const ids = await withEndpoints(t);
    const before = (await t.call("GET", "/v1/policy/resolved/db")).body;
    assert.equal(before.revision, 1);
    assert.equal(before.defaultDeny.ingress, false);
    const r = await t.call("PUT", "/v1/policy", DENY_ALL);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(r.body.policies, [{
      kind: "CiliumNetworkPolicy",
      namespace: "default",
      name: "db-lockdown",
      labels: { team: "storage", env: "prod" },
    }]);
    assert.equal(r.body.revision, 2);
    const after = (await t.call("GET", "/v1/policy/resolved/db")).body;
    assert.equal(after.revision, 2);
    assert.equal(after.defaultDeny.ingress, true);
    assert.ok(
      after.entries.some((e: Record<string, unknown>) =>
        e.direction === "ingress" && e.identity === ids.backend && e.portLo === 5432 &&
        e.proto === 6 &&
        e.verdict === "allow"
      ),
    );
    assert.ok(!after.entries.some((e: { identity: number }) => e.identity === ids.frontend));
    assert.equal((await t.call("GET", "/v1/endpoint/db")).body.policyRevision, 2);
    // The same documents again: nothing changes, no new revision.
    const same = await t.call("PUT", "/v1/policy", DENY_ALL);
    assert.deepEqual([same.body.changed, same.body.revision], [false, 2]);
  } finally {
    await t.close();
  }
});

Deno.test("policy import: a rejected import is a located 400 and the previous policy stays", async (t) => {
  const a = await startAgent();
  try {
    await withEndpoints(a);
    await a.call("PUT", "/v1/policy", DENY_ALL);
    const resolved = (await a.call("GET", "/v1/policy/resolved/db")).body;
    const stored = await a.agent.store.list("cilia/policies/");
    const cases: [string, string, RegExp, { line?: number; path?: string }][] = [
      [
        "unknown field",
        POLICY_HTTP.replace("toPorts:", "toPort:"),
        /Unknown field "toPort": did you mean "toPorts"\?/,
        { path: "spec.ingress[0].toPort" },
      ],
      ["malformed YAML", "apiVersion: cilium.io/v2\nkind: [unclosed\n", /Invalid YAML/, {
        line: 3,
      }],
      [
        "bad regex",
        POLICY_HTTP.replace('path: "/public/.*"', 'path: "/public/(.*"'),
        /Invalid path regex/,
        {},
      ],
      [
        "one bad document among good ones",
        `${CIDR}---\n${DENY_ALL.replace("db-lockdown", "other").replace("5432", "99999")}`,
        /65535|port/i,
        {},
      ],
      ["no documents", "# nothing here\n", /No policy documents/, {}],
    ];
    for (const [name, text, message, where] of cases) {
      await t.step(name, async () => {
        const r = await a.call("PUT", "/v1/policy?file=mine.yaml", text);
        assert.equal(r.status, 400, JSON.stringify(r.body));
        assert.equal(r.body.error.code, "invalid_policy");
        const issues = r.body.error.details.issues;
        assert.ok(
          issues.some((i: { message: string }) => message.test(i.message)),
          JSON.stringify(issues),
        );
        if (where.line !== undefined) assert.equal(issues[0].line, where.line);
        if (where.path !== undefined) assert.equal(issues[0].path, where.path);
        if (name !== "no documents") assert.equal(issues[0].file, "mine.yaml");
      });
    }
    assert.equal(a.agent.policies.revision, 2);
    assert.deepEqual((await a.call("GET", "/v1/policy/resolved/db")).body, resolved);
    assert.deepEqual(await a.agent.store.list("cilia/policies/"), stored);
    assert.equal(a.agent.counters.policyImportErrors.value(), cases.length);
  } finally {
    await a.close();
  }
});

Deno.test("policy import: another L7 protocol on a port in force fails naming the policy in force", async () => {
  const a = await startAgent();
  try {
    await withEndpoints(a);
    assert.equal((await a.call("PUT", "/v1/policy", POLICY_HTTP)).status, 200);
    const resolved = (await a.call("GET", "/v1/policy/resolved/backend")).body;
    const kafka = POLICY_HTTP.replace("backend-get-public", "backend-kafka")
      .replace(/http:[\s\S]*$/, "kafka: [{topic: orders}]\n");
    const r = await a.call("PUT", "/v1/policy?file=kafka.yaml", kafka);
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.equal(r.body.error.code, "invalid_policy");
    const issues: { message: string }[] = r.body.error.details.issues;
    assert.ok(
      issues.some((i) =>
        /Conflicting L7 protocols on ingress TCP\/80 .*the HTTP rules of CiliumNetworkPolicy default\/backend-get-public/
          .test(i.message) &&
        /the Kafka rules of CiliumNetworkPolicy default\/backend-kafka/.test(i.message)
      ),
      JSON.stringify(issues),
    );
    assert.deepEqual((await a.call("GET", "/v1/policy/resolved/backend")).body, resolved);
    assert.equal(a.agent.policies.size, 1);
  } finally {
    await a.close();
  }
});

Deno.test("policy get: the YAML imports again unchanged; JSON sources import atomically", async () => {
  const t = await startAgent();
  try {
    const r = await t.call("PUT", "/v1/policy", {
      sources: [{ text: POLICY_HTTP, file: "a.yaml" }, {
        text: `${DENY_ALL}---\n${CIDR}`,
        file: "b.yaml",
      }],
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.policies.length, 3);
    const yaml = (await t.call("GET", "/v1/policy")).body as string;
    assert.match(yaml, /# Only HTTP GET \/public/, "comments are kept");
    const spec = JSON.stringify(t.agent.engine.spec.rules);
    assert.equal((await t.call("DELETE", "/v1/policy?all=true")).body.deleted.length, 3);
    assert.equal(t.agent.policies.size, 0);
    const again = await t.call("PUT", "/v1/policy", yaml);
    assert.equal(again.body.changed, true);
    assert.equal(
      (await t.call("GET", "/v1/policy")).body,
      yaml,
      "GET after re-import is identical",
    );
    assert.equal(JSON.stringify(t.agent.engine.spec.rules), spec, "same rules in force");
    // A JSON document, and a v1 List, import too.
    const list = {
      apiVersion: "v1",
      kind: "List",
      items: [JSON.parse(JSON.stringify({
        apiVersion: "networking.k8s.io/v1",
        kind: "NetworkPolicy",
        metadata: { name: "np", namespace: "web" },
        spec: { podSelector: {}, policyTypes: ["Ingress"] },
      }))],
    };
    const j = await t.call("PUT", "/v1/policy", JSON.stringify(list), {
      "content-type": "application/json",
    });
    assert.equal(j.status, 200, JSON.stringify(j.body));
    assert.match(
      (await t.call("GET", "/v1/policy?namespace=web")).body,
      /^apiVersion: networking.k8s.io\/v1\nkind: NetworkPolicy/,
    );
  } finally {
    await t.close();
  }
});

Deno.test("policy delete: by name, by labels, and a 404 when nothing matches", async () => {
  const t = await startAgent();
  try {
    await t.call("PUT", "/v1/policy", `${POLICY_HTTP}---\n${DENY_ALL}---\n${CIDR}`);
    assert.equal(t.agent.policies.size, 3);
    const byLabels = await t.call("DELETE", "/v1/policy?labels=team=storage,env=prod");
    assert.deepEqual(byLabels.body.deleted.map((p: { name: string }) => p.name), ["db-lockdown"]);
    const none = await t.call("DELETE", "/v1/policy?labels=team=nobody");
    assert.equal(none.status, 404);
    assert.match(none.body.error.message, /No policy matches labels "team=nobody"/);
    const wrongNs = await t.call("DELETE", "/v1/policy?name=backend-get-public&namespace=other");
    assert.equal(wrongNs.status, 404);
    const byName = await t.call(
      "DELETE",
      "/v1/policy?name=backend-get-public&kind=CiliumNetworkPolicy",
    );
    assert.equal(byName.status, 200);
    assert.deepEqual(
      (await t.agent.store.list("cilia/policies/")).map((e) => e.key),
      ["cilia/policies/CiliumClusterwideNetworkPolicy/_/egress-to-dns"],
    );
    assert.equal(byName.body.revision, 4);
  } finally {
    await t.close();
  }
});

Deno.test("policy CIDRs get node-local identities from 2^24, in the engine, the sink and the list", async () => {
  const t = await startAgent();
  try {
    await withEndpoints(t);
    await t.call("PUT", "/v1/policy", CIDR);
    const local = (await t.call("GET", "/v1/identity")).body.filter((i: { scope: string }) =>
      i.scope === "local"
    );
    assert.deepEqual(local.map((i: { id: number; cidr: string }) => [i.id, i.cidr]), [
      [16777217, "192.0.2.0/24"],
      [16777218, "198.51.100.0/24"],
      [16777219, "198.51.100.128/25"],
    ]);
    assert.equal(t.sink.ipcache.get("192.0.2.0/24"), 16777217);
    const fe = (await t.call("GET", "/v1/policy/resolved/frontend")).body;
    assert.ok(
      fe.entries.some((e: { identity: number; direction: string }) =>
        e.identity === 16777217 && e.direction === "egress"
      ),
    );
    assert.equal((await t.call("GET", "/v1/status")).body.identities.local, 3);
    await t.call("DELETE", "/v1/policy?name=egress-to-dns");
    assert.equal(
      (await t.call("GET", "/v1/identity")).body.filter((i: { scope: string }) =>
        i.scope === "local"
      ).length,
      0,
    );
    assert.equal(t.sink.ipcache.has("192.0.2.0/24"), false);
  } finally {
    await t.close();
  }
});

Deno.test(
  "a policy imported through agent A applies on agent B (shared etcd), and so does its deletion",
  needs({ binaries: ["etcd"] }),
  async () => {
    const etcd = await startEtcd();
    const a = await startAgent({ config: { kvstore: etcd.url, nodeName: "node-a" } });
    const b = await startAgent({
      config: { kvstore: etcd.url, nodeName: "node-b", podCidr: "10.201.0.0/24" },
    });
    try {
      const db = await b.call(
        "PUT",
        "/v1/endpoint/1",
        endpointBody("db", { app: "db" }, { ipv4: "10.201.0.9" }),
      );
      assert.equal(db.status, 201);
      assert.equal((await a.call("PUT", "/v1/policy", DENY_ALL)).status, 200);
      await eventually(
        "the policy on agent B",
        async () => (await b.call("GET", "/v1/policy")).body.includes("db-lockdown"),
      );
      const resolved = (await b.call("GET", "/v1/policy/resolved/db")).body;
      assert.equal(resolved.defaultDeny.ingress, true);
      assert.equal(b.agent.policies.revision, 2);
      // An identity allocated on A becomes known on B, and B's map-state gains it incrementally.
      const be = await a.call("PUT", "/v1/endpoint/5", endpointBody("backend", { app: "backend" }));
      await eventually(
        "B's db map-state allowing A's backend",
        async () =>
          (await b.call("GET", "/v1/policy/resolved/db")).body.entries.some((
            e: { identity: number },
          ) => e.identity === be.body.identity),
      );
      await a.call("DELETE", "/v1/policy?name=db-lockdown");
      await eventually("the deletion on agent B", () => b.agent.policies.size === 0);
      assert.equal((await b.call("GET", "/v1/policy/resolved/db")).body.defaultDeny.ingress, false);
    } finally {
      await a.close();
      await b.close();
      await etcd.stop();
    }
  },
);
