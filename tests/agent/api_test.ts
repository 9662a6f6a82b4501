// The agent's API in-process (`app.request()`): every route, the one error shape, the 4xx cases,
// and that a rejected request stores nothing.

import assert from "node:assert/strict";
import { endpointBody, POLICY_HTTP, type Reply, startAgent } from "./_fixture.ts";

function assertError(r: Reply, status: number, code: string, message?: RegExp): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(typeof r.body.error, "object", JSON.stringify(r.body));
  assert.equal(r.body.error.code, code);
  assert.equal(typeof r.body.error.message, "string");
  const extra = Object.keys(r.body.error).filter((k) =>
    !["code", "message", "details", "hint"].includes(k)
  );
  assert.deepEqual(extra, [], "error has only code, message, details, hint");
  if (message) assert.match(r.body.error.message, message);
}

Deno.test("API: health, status, config and node", async () => {
  const t = await startAgent();
  try {
    const h = await t.call("GET", "/v1/healthz");
    assert.equal(h.status, 200);
    assert.equal(h.body.status, "ok");
    const s = await t.call("GET", "/v1/status");
    assert.equal(s.status, 200);
    assert.equal(s.body.healthy, true);
    assert.equal(s.body.node.name, "node-a");
    assert.equal(s.body.kvstore.backend, "denokv");
    assert.equal(s.body.kvstore.reachable, true);
    assert.deepEqual(
      [s.body.identities.global, s.body.identities.range, s.body.endpoints.count],
      [0, "256-65535", 0],
    );
    assert.equal(s.body.policy.revision, 1);
    assert.equal(typeof s.body.uptimeSeconds, "number");
    const c = await t.call("GET", "/v1/config");
    assert.equal(c.body.podCidr, "10.200.0.0/24");
    assert.deepEqual(c.body.ipam, [
      { family: 4, cidr: "10.200.0.0/24", gateway: "10.200.0.1" },
      { family: 6, cidr: "fd00:200::/64", gateway: "fd00:200::1" },
    ]);
    const nodes = await t.call("GET", "/v1/node");
    assert.deepEqual(nodes.body.map((n: { name: string; self: boolean }) => [n.name, n.self]), [
      ["node-a", true],
    ]);
    assert.equal((await t.call("GET", "/v1/node/node-a")).body.podCidrV6, "fd00:200::/64");
    assertError(await t.call("GET", "/v1/node/nope"), 404, "node_not_found", /"nope"/);
    assertError(await t.call("GET", "/v1/nothing"), 404, "not_found", /GET \/v1\/nothing/);
  } finally {
    await t.close();
  }
});

Deno.test("API: endpoints — put, get, list, patch labels, delete", async () => {
  const t = await startAgent();
  try {
    const body = endpointBody("web-1", { app: "web", "pod-template-hash": "5d4f" }, {
      ipv4: "10.200.0.10",
      ipv6: "FD00:200::0a",
      namedPorts: [{ name: "http", port: 8080, protocol: "TCP" }],
    });
    const created = await t.call("PUT", "/v1/endpoint/7", body);
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.equal(created.body.id, 7);
    assert.equal(created.body.ipv6, "fd00:200::a", "addresses are canonical");
    assert.ok(created.body.identity >= 256 && created.body.identity <= 65535);
    assert.ok(!created.body.identityLabels.some((l: string) => l.includes("pod-template-hash")));
    assert.equal(created.body.state, "ready");
    const again = await t.call("PUT", "/v1/endpoint/7", body);
    assert.equal(again.status, 200);
    assert.equal(again.body.identity, created.body.identity);
    assert.equal(again.body.createdAt, created.body.createdAt);

    assert.equal((await t.call("GET", "/v1/endpoint")).body.length, 1);
    for (const ref of ["7", "web-1", "default%2Fweb-1"]) {
      assert.equal((await t.call("GET", `/v1/endpoint/${ref}`)).body.id, 7, ref);
    }
    assertError(await t.call("GET", "/v1/endpoint/8"), 404, "endpoint_not_found", /"8"/);

    const patched = await t.call("PATCH", "/v1/endpoint/7/labels", { add: { tier: "front" } });
    assert.equal(patched.status, 200);
    assert.equal(patched.body.labels.tier, "front");
    assert.notEqual(patched.body.identity, created.body.identity);
    assert.ok(patched.body.identityLabels.includes("k8s:tier=front"));
    const back = await t.call("PATCH", "/v1/endpoint/7/labels", { remove: ["tier"] });
    assert.equal(back.body.identity, created.body.identity, "same labels, same identity");
    assertError(
      await t.call("PATCH", "/v1/endpoint/9/labels", { add: { a: "b" } }),
      404,
      "endpoint_not_found",
    );

    const ipam = (await t.call("GET", "/v1/ipam")).body.allocations.map((a: { ip: string }) =>
      a.ip
    );
    assert.deepEqual(
      ipam,
      ["10.200.0.10", "fd00:200::a"],
      "endpoint addresses are recorded in IPAM",
    );
    const del = await t.call("DELETE", "/v1/endpoint/7");
    assert.equal(del.status, 200);
    assert.deepEqual((await t.call("GET", "/v1/ipam")).body.allocations, [], "released on delete");
    assertError(await t.call("DELETE", "/v1/endpoint/7"), 404, "endpoint_not_found");
    assert.deepEqual(await t.agent.store.list("cilia/endpoints/"), []);
  } finally {
    await t.close();
  }
});

Deno.test("API: bad endpoint input is a 4xx naming the problem, and nothing is stored", async (t) => {
  const a = await startAgent();
  try {
    await a.call(
      "PUT",
      "/v1/endpoint/1",
      endpointBody("db", { app: "db" }, { ipv4: "10.200.0.20" }),
    );
    const before = {
      endpoints: (await a.agent.store.list("cilia/endpoints/")).length,
      identities: (await a.agent.store.list("cilia/identities/")).length,
      ipam: (await a.agent.store.list("cilia/ipam/")).length,
    };
    const cases: [string, string, unknown, number, string, RegExp][] = [
      ["malformed JSON", "/v1/endpoint/2", "{name: ", 400, "invalid_json", /not JSON/],
      ["empty body", "/v1/endpoint/2", "", 400, "invalid_request", /empty/],
      ["bad id", "/v1/endpoint/0", endpointBody("x", {}), 400, "invalid_request", /"0"/],
      [
        "non-numeric id",
        "/v1/endpoint/abc",
        endpointBody("x", {}),
        400,
        "invalid_request",
        /"abc"/,
      ],
      [
        "invalid label key",
        "/v1/endpoint/2",
        endpointBody("x", { "bad key": "v" }),
        400,
        "invalid_request",
        /label key "bad key"/,
      ],
      [
        "invalid label value",
        "/v1/endpoint/2",
        endpointBody("x", { app: "-x-" }),
        400,
        "invalid_request",
        /value "-x-" of label "app"/,
      ],
      [
        "reserved label",
        "/v1/endpoint/2",
        endpointBody("x", { "reserved:host": "" }),
        400,
        "invalid_request",
        /reserved labels/,
      ],
      [
        "unknown field",
        "/v1/endpoint/2",
        { ...endpointBody("x", {}), colour: "red" },
        400,
        "invalid_request",
        /"colour"/,
      ],
      [
        "bad name",
        "/v1/endpoint/2",
        endpointBody("Not A Name", {}),
        400,
        "invalid_request",
        /name: Expected a lower-case DNS name/,
      ],
      [
        "bad IPv4",
        "/v1/endpoint/2",
        endpointBody("x", {}, { ipv4: "10.200.0.300" }),
        400,
        "invalid_request",
        /ipv4: Expected an IPv4 address/,
      ],
      [
        "address in use",
        "/v1/endpoint/2",
        endpointBody("x", {}, { ipv4: "10.200.0.20" }),
        409,
        "endpoint_conflict",
        /"10.200.0.20" is already used by endpoint 1/,
      ],
    ];
    for (const [name, path, body, status, code, message] of cases) {
      await t.step(name, async () => {
        const r = await a.call("PUT", path, body);
        assertError(r, status, code, message);
        if (status === 400 && code === "invalid_request" && !/empty|id$/.test(name)) {
          assert.ok(Array.isArray(r.body.error.details.issues));
        }
      });
    }
    const after = {
      endpoints: (await a.agent.store.list("cilia/endpoints/")).length,
      identities: (await a.agent.store.list("cilia/identities/")).length,
      ipam: (await a.agent.store.list("cilia/ipam/")).length,
    };
    assert.deepEqual(after, before, "nothing stored by rejected requests");
    assert.equal(a.agent.endpoints.size, 1);
  } finally {
    await a.close();
  }
});

Deno.test("API: oversized bodies get 413 and store nothing", async () => {
  const t = await startAgent({ config: { apiBodyLimit: 4096 } });
  try {
    const big = POLICY_HTTP + `#${"x".repeat(5000)}\n`;
    assertError(await t.call("PUT", "/v1/policy", big), 413, "body_too_large", /4096 bytes/);
    assert.equal(t.agent.policies.size, 0);
    const ep = endpointBody("x", { pad: "y" }, {
      containerId: "c".repeat(256),
      netns: "n".repeat(4096),
    });
    assertError(await t.call("PUT", "/v1/endpoint/1", ep), 413, "body_too_large");
    assert.equal(t.agent.endpoints.size, 0);
    // Without Content-Length (a stream), the limit holds too.
    const stream = new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode(big));
        c.close();
      },
    });
    const res = await t.app.request(
      "/v1/policy",
      { method: "PUT", body: stream, duplex: "half" } as RequestInit,
    );
    assert.equal(res.status, 413);
    await res.body?.cancel();
    assert.deepEqual(await t.agent.store.list("cilia/policies/"), []);
  } finally {
    await t.close();
  }
});

Deno.test("API: identities — list, get, 404, 400", async () => {
  const t = await startAgent();
  try {
    const ep = await t.call("PUT", "/v1/endpoint/1", endpointBody("a", { app: "a" }));
    const list = (await t.call("GET", "/v1/identity")).body as {
      id: number;
      scope: string;
      refs?: number;
    }[];
    assert.deepEqual(list.filter((i) => i.scope === "reserved").map((i) => i.id), [
      1,
      2,
      3,
      4,
      5,
      6,
      7,
      8,
    ]);
    const mine = list.find((i) => i.id === ep.body.identity);
    assert.equal(mine?.scope, "global");
    assert.equal(mine?.refs, 1);
    const one = await t.call("GET", `/v1/identity/${ep.body.identity}`);
    assert.deepEqual(one.body.labels, ep.body.identityLabels);
    assert.deepEqual((await t.call("GET", "/v1/identity/1")).body.labels, ["reserved:host"]);
    assertError(await t.call("GET", "/v1/identity/77"), 404, "identity_not_found", /77/);
    assertError(await t.call("GET", "/v1/identity/x"), 400, "invalid_request", /"x"/);
  } finally {
    await t.close();
  }
});

Deno.test("API: IPAM — allocate, list, release, errors", async () => {
  const t = await startAgent({ config: { podCidr: "10.9.0.0/30" } });
  try {
    const a = await t.call("POST", "/v1/ipam", { owner: "c1" });
    assert.equal(a.status, 201);
    assert.deepEqual([a.body.ip, a.body.cidr, a.body.gateway], [
      "10.9.0.2",
      "10.9.0.0/30",
      "10.9.0.1",
    ]);
    const v6 = await t.call("POST", "/v1/ipam", { owner: "c1", family: 6 });
    assert.equal(v6.body.ip, "fd00:200::2");
    assertError(
      await t.call("POST", "/v1/ipam", { owner: "c2" }),
      503,
      "ipam_exhausted",
      /pod CIDR "10.9.0.0\/30": all 1 addresses are in use/,
    );
    assertError(await t.call("POST", "/v1/ipam", { family: 4 }), 400, "invalid_request", /owner/);
    assertError(
      await t.call("POST", "/v1/ipam", { owner: "x", family: 5 }),
      400,
      "invalid_request",
    );
    assert.equal((await t.call("GET", "/v1/ipam")).body.allocations.length, 2);
    assert.equal((await t.call("DELETE", "/v1/ipam/10.9.0.2")).body.owner, "c1");
    assertError(
      await t.call("DELETE", "/v1/ipam/10.9.0.2"),
      404,
      "address_not_found",
      /"10.9.0.2"/,
    );
    assert.equal((await t.call("POST", "/v1/ipam", { owner: "c3" })).body.ip, "10.9.0.2");
  } finally {
    await t.close();
  }
});

Deno.test("API: policy routes and resolved map-state, trace, metrics counters", async () => {
  const t = await startAgent({ config: { metricsAddr: "127.0.0.1:0" } });
  try {
    await t.call(
      "PUT",
      "/v1/endpoint/1",
      endpointBody("frontend", { app: "frontend" }, { ipv4: "10.200.0.5" }),
    );
    await t.call(
      "PUT",
      "/v1/endpoint/2",
      endpointBody("backend", { app: "backend" }, { ipv4: "10.200.0.6" }),
    );
    const imp = await t.call("PUT", "/v1/policy?file=http.yaml", POLICY_HTTP);
    assert.equal(imp.status, 200, JSON.stringify(imp.body));
    assert.equal(imp.body.revision, 2);
    const yaml = await t.call("GET", "/v1/policy");
    assert.equal(yaml.headers.get("x-cilia-policy-revision"), "2");
    assert.match(yaml.body, /name: backend-get-public/);
    const json = await t.call("GET", "/v1/policy", undefined, { accept: "application/json" });
    assert.equal(json.body.policies[0].name, "backend-get-public");
    const resolved = await t.call("GET", "/v1/policy/resolved/backend");
    assert.equal(resolved.body.revision, 2);
    assert.equal(resolved.body.defaultDeny.ingress, true);
    const frontend = (await t.call("GET", "/v1/endpoint/1")).body.identity;
    assert.ok(
      resolved.body.entries.some((e: { identity: number; verdict: string; portLo: number }) =>
        e.identity === frontend && e.verdict === "redirect" && e.portLo === 80
      ),
    );
    assertError(await t.call("GET", "/v1/policy/resolved/99"), 404, "endpoint_not_found");
    const trace = await t.call("POST", "/v1/policy/trace", {
      from: "frontend",
      to: { endpoint: "default/backend" },
      port: 80,
      protocol: "TCP",
      http: { method: "GET", path: "/public/a" },
    });
    assert.equal(trace.status, 200, JSON.stringify(trace.body));
    assert.equal(trace.body.verdict, "allowed");
    assert.equal(trace.body.trace.at(-1), "Final verdict: ALLOWED");
    const ipTrace = await t.call("POST", "/v1/policy/trace", {
      from: { ip: "10.200.0.5" },
      to: "2",
      port: 443,
    });
    assert.equal(ipTrace.body.verdict, "denied");
    assertError(
      await t.call("POST", "/v1/policy/trace", { from: "nope", to: "2", port: 80 }),
      404,
      "endpoint_not_found",
      /"nope"/,
    );
    assertError(
      await t.call("POST", "/v1/policy/trace", { from: "1", to: "2" }),
      400,
      "invalid_request",
      /port/,
    );
    assertError(
      await t.call("POST", "/v1/policy/trace", { from: { entity: "moon" }, to: "2", port: 1 }),
      400,
      "invalid_request",
      /"moon"/,
    );
    assertError(await t.call("DELETE", "/v1/policy"), 400, "invalid_request", /selection/);
    assertError(
      await t.call("DELETE", "/v1/policy?kind=Nope&name=x"),
      400,
      "invalid_request",
      /kind/,
    );
    assert.equal((await t.call("DELETE", "/v1/policy?name=backend-get-public")).body.revision, 3);

    const counters = t.agent.counters;
    assert.ok(counters.apiRequests.value({ path: "/v1/endpoint/:id", code: 201 }) >= 2);
    assert.ok(counters.kvstoreOps.value({ backend: "denokv", op: "put", outcome: "success" }) > 0);
    const res = await fetch(`http://${t.agent.metricsServer!.addr}/metrics`);
    const text = await res.text();
    for (
      const name of [
        "cilia_identity_count 2",
        "cilia_endpoint_count 2",
        "cilia_policy_revision 3",
        "cilia_policy_import_errors_total 0",
        'cilia_kvstore_operations_total{backend="denokv",op="put",outcome="success"}',
        'cilia_api_requests_total{code="201",path="/v1/endpoint/:id"} 2',
      ]
    ) assert.ok(text.includes(name), `${name} in\n${text}`);
  } finally {
    await t.close();
  }
});

Deno.test("API: a RangeError or TypeError from a bug in a handler is a 500, not a 400", async () => {
  const t = await startAgent();
  try {
    const agent = t.agent as unknown as {
      identityList: () => unknown;
      ipam: { list: () => unknown };
    };
    agent.identityList = () => {
      throw new RangeError("Invalid array length");
    };
    assertError(await t.call("GET", "/v1/identity"), 500, "internal", /Invalid array length/);
    agent.ipam.list = () => {
      throw new TypeError("Cannot read properties of undefined (reading 'ip')");
    };
    assertError(await t.call("GET", "/v1/ipam"), 500, "internal", /reading 'ip'/);
    assertError(await t.call("GET", "/v1/endpoint/8"), 404, "endpoint_not_found");
  } finally {
    await t.close();
  }
});

Deno.test("API: CNI answers carry the agent's time as Server-Timing, errors too", async () => {
  const t = await startAgent();
  try {
    const r = await t.call("POST", "/v1/cni/add", { containerId: "c1" });
    assertError(r, 400, "invalid_request");
    assert.match(r.headers.get("server-timing") ?? "", /^agent;dur=\d+\.\d\d$/);
    const del = await t.call("POST", "/v1/cni/del", {
      containerId: "c1",
      ifname: "eth0",
      network: "n",
    });
    assert.equal(del.status, 200, JSON.stringify(del.body));
    assert.match(del.headers.get("server-timing") ?? "", /^agent;dur=/);
  } finally {
    await t.close();
  }
});
