// L7 matching through the engine: HTTP (full-match regexes, path normalisation including the
// query string, host, header presence and value regexes, headerMatches), Kafka (roles, API keys,
// versions, client ids, multi-topic requests) and DNS names and patterns.

import assert from "node:assert/strict";
import {
  compilePolicies,
  evaluateFlow,
  explainFlow,
  flowOf,
  loadScenario,
  PolicyEngine,
  prepareScenario,
  SimCluster,
} from "../../policy-wasm/mod.ts";

async function setup(rules: string, dir: "ingress" | "egress" = "ingress") {
  const engine = await PolicyEngine.create();
  const text = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: ${dir === "ingress" ? "server" : "client"}}}
  ${dir}:
    - ${dir === "ingress" ? "fromEndpoints" : "toEndpoints"}: [{matchLabels: {app: ${
    dir === "ingress" ? "client" : "server"
  }}}]
      toPorts:
${rules}`;
  const c = compilePolicies({ text }, { regexCheck: (p) => engine.checkRegex(p) });
  const cluster = new SimCluster({
    endpoints: [{ name: "client", labels: { app: "client" } }, {
      name: "server",
      labels: { app: "server" },
    }],
  });
  cluster.load(engine, c.spec, engine.options);
  const server = cluster.endpoint("server")!;
  const client = cluster.endpoint("client")!;
  return { engine, server, client };
}

Deno.test("HTTP: method and path are full-match regexes on the normalised path with its query", async (t) => {
  const { engine, server, client } = await setup(`        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
              - {method: "GET|HEAD", path: "/public/.*"}
              - {method: POST, path: "/api/v[0-9]+/items"}`);
  const ask = (method: string, path: string) =>
    engine.query({
      endpoint: server.id,
      direction: "ingress",
      peer: client.identity,
      proto: 6,
      port: 80,
      http: { method, path },
    }).l7.status;
  const cases: [string, string, string][] = [
    ["GET", "/public/a", "allowed"],
    ["HEAD", "/public/", "allowed"],
    ["GET", "/public/a?x=1&y=2", "allowed"],
    ["get", "/public/a", "denied"],
    ["GET", "/public", "denied"],
    ["GET", "/publicx", "denied"],
    ["GET", "/x/../public/a", "allowed"],
    ["GET", "/public/../private", "denied"],
    ["GET", "//public//a", "allowed"],
    ["GET", "/%70ublic/a", "allowed"],
    ["GET", "/public%2F..%2Fprivate", "denied"],
    ["POST", "/api/v2/items", "allowed"],
    ["POST", "/api/v2/items?debug=1", "denied"],
    ["POST", "/api/vX/items", "denied"],
    ["PUT", "/api/v2/items", "denied"],
  ];
  for (const [m, p, want] of cases) {
    await t.step(`${m} ${p} → ${want}`, () => assert.equal(ask(m, p), want));
  }
  engine.close();
});

Deno.test("HTTP: host regex, header presence, header value regex, headerMatches", async (t) => {
  const { engine, server, client } = await setup(`        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
              - {host: "api\\\\.example\\\\.com(:80)?", headers: ["X-Token: [0-9]+", "X-Present"]}
              - {path: "/exact", headerMatches: [{name: X-Env, value: prod}, {name: X-Log, value: yes, mismatch: LOG}]}`);
  const ask = (path: string, host: string, headers: Record<string, string>) =>
    engine.query({
      endpoint: server.id,
      direction: "ingress",
      peer: client.identity,
      proto: 6,
      port: 80,
      http: { method: "GET", path, host, headers },
    }).l7.status;
  const cases: [string, string, Record<string, string>, string][] = [
    ["/", "api.example.com", { "X-Token": "123", "X-Present": "" }, "allowed"],
    ["/", "api.example.com:80", { "x-token": "9", "x-present": "1" }, "allowed"],
    ["/", "apiXexample.com", { "X-Token": "123", "X-Present": "" }, "denied"],
    ["/", "api.example.com", { "X-Token": "12a", "X-Present": "" }, "denied"],
    ["/", "api.example.com", { "X-Token": "123" }, "denied"],
    ["/exact", "any", { "X-Env": "prod" }, "allowed"],
    ["/exact", "any", { "X-Env": "prod", "X-Log": "no" }, "allowed"],
    ["/exact", "any", { "X-Env": "production" }, "denied"],
    ["/exact", "any", {}, "denied"],
  ];
  for (const [p, h, hd, want] of cases) {
    await t.step(
      `${p} ${h} ${JSON.stringify(hd)} → ${want}`,
      () => assert.equal(ask(p, h, hd), want),
    );
  }
  engine.close();
});

Deno.test("Kafka: roles, keys, versions, client ids and all-topics-covered", async (t) => {
  const { engine, server, client } = await setup(`        - ports: [{port: "9092", protocol: TCP}]
          rules:
            kafka:
              - {role: produce, topic: t1}
              - {apiKey: fetch, topic: t2, clientID: c2}
              - {apiKey: produce, topic: t3, apiVersion: "5"}`);
  const ask = (apiKey: number, topics: string[], clientID = "", apiVersion = 0) =>
    engine.query({
      endpoint: server.id,
      direction: "ingress",
      peer: client.identity,
      proto: 6,
      port: 9092,
      kafka: { apiKey, topics, clientID, apiVersion },
    }).l7;
  const cases: [string, number, string[], string, number, string][] = [
    ["produce t1", 0, ["t1"], "", 0, "allowed"],
    ["metadata t1 (produce role)", 3, ["t1"], "", 0, "allowed"],
    ["apiversions (topic-less)", 18, [], "", 0, "allowed"],
    ["produce t2", 0, ["t2"], "", 0, "denied"],
    ["produce t1+t2: every topic must be allowed", 0, ["t1", "t2"], "", 0, "denied"],
    ["produce t1+t3 at v5: both covered by different rules", 0, ["t1", "t3"], "", 5, "allowed"],
    ["produce t3 at v4", 0, ["t3"], "", 4, "denied"],
    ["fetch t2 as c2", 1, ["t2"], "c2", 0, "allowed"],
    ["fetch t2 as c3", 1, ["t2"], "c3", 0, "denied"],
    ["fetch t1", 1, ["t1"], "", 0, "denied"],
    ["heartbeat (not in produce role)", 12, [], "", 0, "denied"],
    ["createtopics t1 (topics not decoded)", 19, ["t1"], "", 0, "denied"],
    ["metadata for all topics", 3, [], "", 0, "denied"],
  ];
  for (const [name, key, topics, cid, ver, want] of cases) {
    await t.step(`${name} → ${want}`, () => {
      const r = ask(key, topics, cid, ver);
      assert.equal(r.status, want);
      if (want === "denied") assert.equal(r.detail, 29);
    });
  }
  engine.close();
});

Deno.test("DNS: matchName is exact and case-insensitive, matchPattern wildcards stop at dots", async (t) => {
  const { engine, client, server } = await setup(
    `        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns:
              - matchName: api.example.com
              - matchPattern: "*.cilium.io"
              - matchPattern: "part*ial.com"
              - matchPattern: "**.deep.org"`,
    "egress",
  );
  const ask = (name: string) =>
    engine.query({
      endpoint: client.id,
      direction: "egress",
      peer: server.identity,
      proto: 17,
      port: 53,
      dns: name,
    }).l7;
  const cases: [string, string][] = [
    ["api.example.com", "allowed"],
    ["API.Example.COM.", "allowed"],
    ["www.example.com", "denied"],
    ["sub.cilium.io", "allowed"],
    ["cilium.io", "denied"],
    ["a.b.cilium.io", "denied"],
    ["partial.com", "allowed"],
    ["part-extra-ial.com", "allowed"],
    ["a.deep.org", "allowed"],
    ["a.b.deep.org", "allowed"],
    ["deep.org", "denied"],
  ];
  for (const [name, want] of cases) {
    await t.step(`${name} → ${want}`, () => {
      const r = ask(name);
      assert.equal(r.status, want);
      if (want === "denied") assert.equal(r.detail, 5);
    });
  }
  engine.close();
});

Deno.test("DNS: `**` is one or more whole labels anywhere; no pattern matches an empty label", async (t) => {
  const table: { pattern: string; accept: string[]; reject: string[] }[] = [
    {
      pattern: "1.**.cilium.io.",
      accept: ["1._foobar._tcp.cilium.io.", "1.2._foobar._tcp.cilium.io."],
      reject: ["1.cilium.io.", "2._foobar._tcp.cilium.io.", "1..cilium.io.", "_tcp.cilium.io."],
    },
    {
      pattern: "*.**.cilium.io.",
      accept: ["_foobar._tcp.cilium.io.", "2._foobar._tcp.cilium.io."],
      reject: ["_tcp.cilium.io.", "_foobar.._tcp.cilium.io.", ".x.cilium.io."],
    },
    {
      pattern: "*.**.io.",
      accept: ["anysub.cilium.io.", "service.namespace.svc.cluster.io."],
      reject: ["io.", "cilium.io", "..cilium.io.", "service.namespace.svc..cluster.io."],
    },
    {
      pattern: "subdomain.**.*ili*.io.",
      accept: ["subdomain._foobar._tcp.cilium.io.", "subdomain.1.2.x.cili.io."],
      reject: ["subdomain.cilium.trio.", ".subdomain.a.cilium.io.", "subdomain.1..2.cili.io."],
    },
    {
      pattern: "*.1.**.cilium.io.",
      accept: ["_sub.1._foobar._tcp.cilium.io.", "_sub.1.2._foobar._tcp.cilium.io."],
      reject: ["_sub._tcp.1.cilium.io.", "2._foobar.1._tcp.cilium.io."],
    },
    {
      pattern: "*",
      accept: ["io.", "cilium.io", "_foobar._tcp.cilium.io.", "svc.cluster.local."],
      reject: [".io.", ".cilium.io.", "cilium..io.", "a b.io."],
    },
    {
      pattern: "**",
      accept: ["io.", "service.namespace.svc.cluster.local."],
      reject: ["..io.", "cilium..io"],
    },
    { pattern: "*.cilium.io", accept: ["sub.cilium.io"], reject: [".cilium.io.", "cilium.io."] },
  ];
  for (const { pattern, accept, reject } of table) {
    const { engine, client, server } = await setup(
      `        - ports: [{port: "53", protocol: UDP}]
          rules: {dns: [{matchPattern: "${pattern}"}]}`,
      "egress",
    );
    const ask = (name: string) =>
      engine.query({
        endpoint: client.id,
        direction: "egress",
        peer: server.identity,
        proto: 17,
        port: 53,
        dns: name,
      }).l7.status;
    await t.step(pattern, () => {
      for (const name of accept) {
        assert.equal(ask(name), "allowed", `${pattern} must accept ${name}`);
      }
      for (const name of reject) {
        assert.equal(ask(name), "denied", `${pattern} must refuse ${name}`);
      }
    });
    engine.close();
  }
});

Deno.test("L7 rules of a default-allow direction observe only, for HTTP, Kafka and DNS", async (t) => {
  const engine = await PolicyEngine.create();
  const text = (dd: boolean) =>
    `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: observe, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  enableDefaultDeny: {ingress: ${dd}, egress: ${dd}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules: {http: [{method: GET, path: /api}]}
        - ports: [{port: "9092", protocol: TCP}]
          rules: {kafka: [{role: produce, topic: foo}]}
  egress:
    - toEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
          rules: {dns: [{matchName: cilium.io}]}
`;
  const cluster = new SimCluster({
    endpoints: [{ name: "client", labels: { app: "client" } }, {
      name: "server",
      labels: { app: "server" },
    }],
  });
  for (const [dd, want] of [[false, "allowed"], [true, "denied"]] as const) {
    await t.step(`enableDefaultDeny ${dd}: unlisted requests are ${want}`, () => {
      const c = compilePolicies({ text: text(dd) });
      const entries = c.spec.rules[0]!.entries;
      assert.equal(entries.every((e) => (e.observeOnly ?? false) === !dd), true);
      cluster.load(engine, c.spec, engine.options);
      const server = cluster.endpoint("server")!;
      const client = cluster.endpoint("client")!;
      const base = { endpoint: server.id, peer: client.identity, proto: 6 } as const;
      const http = engine.query({
        ...base,
        direction: "ingress",
        port: 80,
        http: { method: "POST", path: "/other" },
      });
      assert.equal(http.verdict, "redirect");
      assert.equal(http.l7.status, want);
      const kafka = engine.query({
        ...base,
        direction: "ingress",
        port: 9092,
        kafka: { apiKey: 0, apiVersion: 0, clientID: "", topics: ["bar"] },
      });
      assert.equal(kafka.l7.status, want);
      const dns = engine.query({
        ...base,
        direction: "egress",
        proto: 17,
        port: 53,
        dns: "example.org",
      });
      assert.equal(dns.l7.status, want);
    });
  }
  engine.close();
});

Deno.test("traces say when default-allow L7 rules only observe", async () => {
  const engine = await PolicyEngine.create();
  const file = new URL("../policy_cases/l7-default-allow-observe.yaml", import.meta.url);
  const loaded = loadScenario(await Deno.readTextFile(file), "l7-default-allow-observe.yaml");
  const { cluster } = prepareScenario(engine, loaded);
  const trace = (name: string) => {
    const q = loaded.scenario.queries.find((q) => q.name === name)!;
    return explainFlow(engine, evaluateFlow(cluster, engine, flowOf(q))).join("\n");
  };
  assert.match(
    trace("HTTP, default-allow: another request passes too (observed only)"),
    /L7 HTTP: default-allow: L7 rules observe only: CiliumNetworkPolicy default\/http-observe spec\.ingress\[0\]\.toPorts\[0\] is in a rule that is not default-deny for ingress, so the request POST \/other passes/,
  );
  assert.match(
    trace("HTTP, default-allow: the listed request passes"),
    /L7 HTTP: the request GET \/api matches CiliumNetworkPolicy default\/http-observe spec\.ingress\[0\]\.toPorts\[0\] rules\.http\[0\]/,
  );
  assert.match(
    trace("DNS, default-allow: another name resolves too (observed only)"),
    /L7 DNS: default-allow: L7 rules observe only: .* not default-deny for egress, so the DNS query for example\.org passes/,
  );
  assert.doesNotMatch(trace("HTTP, default-deny: the same rule restricts"), /observe only/);
  engine.close();
});
