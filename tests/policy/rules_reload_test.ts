// Reloading rules in the engine (policy-wasm/assembly/load.ts): compiled HTTP regexes are shared
// between entries and between one rules message and the next, so a reload must judge requests
// exactly as a fresh engine does, a changed pattern must take effect, and a message with a bad
// pattern must leave the rules in force. Map-states after a reload equal a fresh engine's.

import assert from "node:assert/strict";
import { compilePolicies, PolicyEngine, SimCluster } from "../../policy-wasm/mod.ts";

function policy(paths: string[]): string {
  return paths.map((path, i) =>
    `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p${i}, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client${i % 2}}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "${path}"}]
`
  ).join("---\n");
}

Deno.test("setPolicy() again with shared, unchanged and changed HTTP regexes judges as a fresh engine", async () => {
  const cluster = new SimCluster({
    endpoints: [
      { name: "server", labels: { app: "server" } },
      { name: "c0", labels: { app: "client0" } },
      { name: "c1", labels: { app: "client1" } },
    ],
  });
  const engine = await PolicyEngine.create();
  const server = () => cluster.endpoint("server")!;
  const ask = (e: PolicyEngine, client: string, path: string) =>
    e.query({
      endpoint: server().id,
      direction: "ingress",
      peer: cluster.endpoint(client)!.identity,
      proto: 6,
      port: 80,
      http: { method: "GET", path },
    }).l7.status;
  const requests: [string, string][] = [
    ["c0", "/a/1"],
    ["c0", "/b/1"],
    ["c1", "/a/1"],
    ["c1", "/b/22"],
    ["c0", "/c"],
  ];
  // Four policies with one pattern twice (shared in one message), then the same message again
  // (shared across messages), then patterns changed and swapped between the two clients.
  const versions = [
    ["/a/[0-9]+", "/b/[0-9]", "/a/[0-9]+", "/b/[0-9]"],
    ["/a/[0-9]+", "/b/[0-9]", "/a/[0-9]+", "/b/[0-9]"],
    ["/b/[0-9]+", "/a/[0-9]+", "/c", "/a/[0-9]+"],
  ];
  const seen = new Set<string>();
  for (const [v, paths] of versions.entries()) {
    const c = compilePolicies({ text: policy(paths) });
    assert.equal(c.spec.rules.length, 4);
    cluster.load(engine, c.spec, engine.options);
    const fresh = await PolicyEngine.create();
    cluster.load(fresh, c.spec, fresh.options);
    const got = requests.map(([cl, path]) => ask(engine, cl, path));
    assert.deepEqual(got, requests.map(([cl, path]) => ask(fresh, cl, path)), `version ${v}`);
    assert.deepEqual(engine.computeMapState(server().id), fresh.computeMapState(server().id));
    seen.add(got.join());
    fresh.close();
  }
  // The verdicts did change with the patterns (else the comparison proves little).
  assert.equal(seen.size, 2);
  // A bad pattern is refused and the last rules stay in force, their regexes included.
  const before = requests.map(([cl, path]) => ask(engine, cl, path));
  const bad = compilePolicies({ text: policy(["/a/[0-9]+", "/b/(", "/c", "/d"]) });
  assert.throws(() => engine.setPolicy(bad.spec, engine.options), /regex/i);
  assert.deepEqual(requests.map(([cl, path]) => ask(engine, cl, path)), before);
  engine.close();
});
