// Replay (policy-wasm/src/replay.ts): observed flows — cilia's `observe -o json` and Hubble's
// `hubble observe -o json` — judged again with a draft policy; only changed connections listed,
// newly denied first, each with the draft's explanation.

import assert from "node:assert/strict";
import { observeFlows, PolicyEngine, replayTraffic } from "@cilia/policy-wasm";
import { threeTierFlows } from "./_flows.ts";

const root = new URL("../../", import.meta.url).pathname;
const threeTier = Deno.readTextFileSync(`${root}examples/policies/three-tier.yaml`);
const hubble = Deno.readTextFileSync(`${root}tests/policy/fixtures/flows/hubble_starwars.ndjson`);

/** three-tier.yaml with the backend's egress to the wrong db port, and serving 9090 too. */
const tightened = threeTier
  .replace('port: "5432"', 'port: "5433"') // the backend's egress to the db
  .replace(
    /(- port: "8080"\n\s+protocol: TCP\n)/,
    `$1            - port: "9090"\n              protocol: TCP\n`,
  );

Deno.test("observeFlows() reads cilia's flows: distinct connections, replies and non-policy drops left out", () => {
  const t = observeFlows(threeTierFlows());
  assert.equal(t.flows, 11);
  assert.deepEqual(t.skipped, { replies: 1, notPolicy: 1, incomplete: 0 });
  const seen = t.connections.map((c) =>
    `${c.from.kind === "endpoint" ? c.from.labels.app : c.from.kind} -> ${
      c.to.kind === "endpoint" ? c.to.labels.app : c.to.kind
    } ${c.protocol}/${c.port}${c.http ? ` ${c.http.method} ${c.http.path}` : ""} ${c.observed}`
  );
  assert.deepEqual(seen, [
    "frontend -> backend TCP/8080 allowed",
    "frontend -> backend TCP/8080 GET /api/orders allowed",
    "backend -> db TCP/5432 allowed",
    "world -> db TCP/5432 denied",
    // the egress trace came first, the ingress drop decides
    "frontend -> backend TCP/9090 denied",
    "frontend -> world TCP/80 allowed",
  ]);
  const fe = t.connections[0]!.from;
  assert.ok(fe.kind === "endpoint" && !("pod-template-hash" in fe.labels));
});

Deno.test("observeFlows() reads Hubble's flow JSON: labels, L7 HTTP and DNS, names from DNS answers", () => {
  const t = observeFlows(hubble);
  assert.equal(t.connections.length, 6);
  assert.deepEqual(t.skipped, { replies: 2, notPolicy: 1, incomplete: 0 });
  assert.deepEqual(t.names.get("140.82.121.6"), ["api.github.com"]);
  const l7 = t.connections.find((c) => c.http);
  assert.deepEqual(l7?.http, { method: "POST", path: "/v1/request-landing" });
  assert.equal(t.connections.find((c) => c.dns)?.dns, "api.github.com");
  assert.equal(t.connections.find((c) => c.from.kind === "entity")?.from.kind, "entity");
  // the pod seen with its pod-template-hash is the same workload as the one without
  const death = t.connections.filter((c) =>
    c.to.kind === "endpoint" && c.to.labels["class"] === "deathstar"
  );
  assert.equal(
    new Set(death.map((c) => JSON.stringify(c.to.kind === "endpoint" && c.to.labels))).size,
    1,
  );
});

Deno.test("replayTraffic() lists exactly the connections a tightened draft cuts, then those it opens", async () => {
  const engine = await PolicyEngine.create();
  try {
    const t = observeFlows(threeTierFlows());
    const same = replayTraffic(engine, t, [{ text: threeTier, file: "three-tier.yaml" }]);
    assert.equal(same.changes.length, 0, JSON.stringify(same.changes, null, 1));
    assert.equal(same.summary.unchanged, 6);
    const r = replayTraffic(engine, t, [{ text: tightened, file: "draft.yaml" }]);
    assert.deepEqual(r.changes.map((c) => [c.change, c.connection]), [
      ["newly-denied", "default/backend -> default/db TCP/5432"],
      ["newly-allowed", "default/frontend -> default/backend TCP/9090"],
    ]);
    assert.deepEqual(
      { d: r.summary.newlyDenied, a: r.summary.newlyAllowed, u: r.summary.unchanged },
      { d: 1, a: 1, u: 4 },
    );
    const cut = r.changes[0]!;
    assert.equal(cut.observed, "allowed");
    assert.equal(cut.draft, "denied");
    assert.match(cut.reason, /egress/i);
    assert.ok(
      cut.trace.some((l) => /CiliumNetworkPolicy default\/backend/.test(l)),
      cut.trace.join("\n"),
    );
  } finally {
    engine.close();
  }
});

Deno.test("replayTraffic() on Hubble flows: an L7 rule that no longer matches the observed request", async () => {
  const engine = await PolicyEngine.create();
  try {
    const draft = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: deathstar, namespace: default }
spec:
  endpointSelector: { matchLabels: { class: deathstar } }
  ingress:
    - fromEndpoints: [{ matchLabels: { org: empire } }]
      toPorts:
        - ports: [{ port: "80", protocol: TCP }]
          rules: { http: [{ method: GET, path: "/v1/.*" }] }
`;
    const r = replayTraffic(engine, observeFlows(hubble), [{ text: draft }]);
    assert.deepEqual(r.changes.map((c) => [c.change, c.connection]), [
      ["newly-denied", "default/tiefighter -> default/deathstar TCP/80 POST /v1/request-landing"],
    ]);
    assert.match(r.changes[0]!.trace.join("\n"), /POST \/v1\/request-landing/);
  } finally {
    engine.close();
  }
});
