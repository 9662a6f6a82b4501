// L7 matching through the engine: HTTP (full-match regexes, path normalisation including the
// query string, host, header presence and value regexes, headerMatches), Kafka (roles, API keys,
// versions, client ids, multi-topic requests) and DNS names and patterns.

import assert from "node:assert/strict";
import { compilePolicies, PolicyEngine, SimCluster } from "../../policy-wasm/mod.ts";

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
