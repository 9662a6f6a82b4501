// The one flow vocabulary (policy-wasm/src/flow_text.ts) and the one label and header parser
// (label_text.ts): how peers, queries and protocol/port are written, and renderFlow()'s report of
// a judged flow, whose lines are explainFlow()'s whatever they say.

import assert from "node:assert/strict";
import {
  evaluateFlow,
  explainFlow,
  type FlowInput,
  flowOf,
  flowReason,
  formatLabelList,
  loadScenario,
  parseHeaderLines,
  parseLabelList,
  type PeerLookup,
  peerText,
  PolicyEngine,
  prepareScenario,
  protoPortText,
  queryName,
  renderFlow,
  runScenario,
} from "../../policy-wasm/mod.ts";

const SCENARIO = `
name: flow text
policies:
  - apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: api-from-web, namespace: prod}
    spec:
      endpointSelector: {matchLabels: {app: api}}
      ingress:
        - fromEndpoints: [{matchLabels: {app: web}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        - fromEndpoints: [{matchLabels: {app: web}}]
          icmps: [{fields: [{type: 128, family: IPv6}, {type: 8}]}]
endpoints:
  - {name: web, namespace: prod, labels: {app: web}, ip: 10.0.0.1, ipv6: "fd00::1"}
  - {name: api, namespace: prod, labels: {app: api}, ip: 10.0.0.2, ipv6: "fd00::2"}
  - {name: v6only, namespace: prod, labels: {app: web}, ipv6: "fd00::3"}
queries:
  - {from: web, to: api, port: 80, expect: allowed}
  - {from: {cidr: 203.0.113.9}, to: api, port: 80, expect: denied}
  - {from: v6only, to: api, protocol: ICMP, expect: allowed}
  - {name: named, from: web, to: {entity: world}, protocol: icmpv6, icmpType: 129}
`;

Deno.test("peerText(), protoPortText() and queryName() write peers, ports and queries", async (t) => {
  await t.step("peers", () => {
    assert.deepEqual(
      [
        "web",
        "prod/web",
        { endpoint: "prod/api" },
        { cidr: "10.0.0.1" },
        { entity: "world" },
        { identity: 9 },
      ].map(peerText),
      ["web", "prod/web", "prod/api", "10.0.0.1", "entity:world", "identity:9"],
    );
  });
  await t.step("protocol and port; ICMP ports are types", () => {
    assert.equal(protoPortText(6, 80), "TCP/80");
    assert.equal(protoPortText(132, 9), "SCTP/9");
    assert.equal(protoPortText(1, 8), "ICMP/type 8");
    assert.equal(protoPortText(58, 128), "ICMPV6/type 128");
    assert.equal(protoPortText(47, 0), "proto-47/0");
  });
  const cases: [string, FlowInput, string][] = [
    ["TCP", { from: "a", to: "b", protocol: "TCP", port: 80 }, "a -> b TCP/80"],
    ["ICMP echo", { from: "a", to: "b", protocol: "ICMP", port: 0 }, "a -> b ICMP/type 8"],
    ["ICMPv6 echo", { from: "a", to: "b", protocol: "ICMPV6", port: 0 }, "a -> b ICMPV6/type 128"],
    [
      "ICMP type given",
      { from: { cidr: "10.0.0.9" }, to: "b", protocol: "ICMP", port: 0, icmpType: 0 },
      "10.0.0.9 -> b ICMP/type 0",
    ],
  ];
  for (const [name, q, want] of cases) {
    await t.step(`as written: ${name}`, () => assert.equal(queryName(q), want));
  }
  await t.step("judged: the protocol and port that were judged", () => {
    const q: FlowInput = { from: "a", to: "b", protocol: "ICMP", port: 0 };
    assert.equal(queryName(q, { proto: 58, port: 128 }), "a -> b ICMPV6/type 128");
  });
});

Deno.test("renderFlow() reports verdict, reason, peers, the deciding endpoints and the trace", async (t) => {
  const engine = await PolicyEngine.create();
  try {
    const loaded = loadScenario(SCENARIO, "flow-text.yaml");
    const { cluster } = prepareScenario(engine, loaded);
    const judge = (f: FlowInput) => evaluateFlow(cluster, engine, f);
    await t.step("both sides: endpoints as namespace/name with id and identity", () => {
      const flow = judge({ from: "web", to: "api", protocol: "TCP", port: 80 });
      const r = renderFlow(engine, flow);
      assert.equal(r.verdict, "allowed");
      assert.equal(r.allowed, true);
      assert.equal(r.from, "prod/web");
      assert.equal(r.to, "prod/api");
      assert.deepEqual([r.protocol, r.proto, r.port], ["TCP", 6, 80]);
      assert.equal(r.egress?.endpoint, "prod/web");
      assert.equal(r.egress?.endpointId, cluster.endpoint("web")!.id);
      assert.equal(r.egress?.identity, cluster.endpoint("web")!.identity);
      assert.equal(r.ingress?.endpoint, "prod/api");
      assert.equal(r.ingress?.endpointId, cluster.endpoint("api")!.id);
      assert.equal(r.ingress?.decision, "allow-rule");
      assert.equal(r.deniedBy, undefined);
    });
    await t.step("the lines and the reason are explainFlow()'s and flowReason()'s", () => {
      for (const q of loaded.scenario.queries) {
        const flow = judge(flowOf(q));
        const r = renderFlow(engine, flow);
        assert.deepEqual(r.trace, explainFlow(engine, flow));
        assert.equal(r.reason, flowReason(engine, flow));
      }
    });
    await t.step("a world peer has no side; the denying side is named", () => {
      const r = renderFlow(
        engine,
        judge({ from: { cidr: "203.0.113.9" }, to: "api", protocol: "TCP", port: 80 }),
      );
      assert.equal(r.verdict, "denied");
      assert.equal(r.egress, undefined);
      assert.equal(r.deniedBy, "ingress");
      assert.equal(r.ingress?.dropReason, 133);
      assert.equal(r.trace.at(-1), "Final verdict: DENIED");
    });
    await t.step(
      "ICMP between IPv6 peers is reported as ICMPv6 in the report and the trace",
      () => {
        const r = renderFlow(
          engine,
          judge({ from: "v6only", to: "api", protocol: "ICMP", port: 0 }),
        );
        assert.deepEqual([r.protocol, r.proto, r.port], ["ICMPV6", 58, 128]);
        assert.match(r.trace[0]!, / ICMPV6\/type 128$/);
        assert.equal(r.verdict, "allowed");
      },
    );
    await t.step("loopback", () => {
      const r = renderFlow(engine, judge({ from: "web", to: "web", protocol: "TCP", port: 80 }));
      assert.equal(r.loopback, true);
      assert.equal(r.egress, undefined);
    });
    await t.step("the report is plain data: JSON round-trips it", () => {
      const r = renderFlow(engine, judge({ from: "web", to: "api", protocol: "TCP", port: 80 }));
      assert.deepEqual(JSON.parse(JSON.stringify(r)), r);
    });
    await t.step(
      "runScenario() names queries with queryName() and reports with renderFlow()",
      () => {
        const report = runScenario(engine, loaded);
        assert.deepEqual(report.results.map((q) => q.name), [
          "web -> api TCP/80",
          "203.0.113.9 -> api TCP/80",
          "v6only -> api ICMPV6/type 128",
          "named",
        ]);
        for (const q of report.results) {
          const r = renderFlow(engine, q.flow);
          assert.deepEqual([q.verdict, q.reason, q.trace, q.protocol], [
            r.verdict,
            r.reason,
            r.trace,
            r.protocol,
          ]);
        }
      },
    );
    await t.step("any PeerLookup resolves peers, not only a SimCluster", () => {
      const lookup: PeerLookup = {
        endpoints: cluster.endpoints,
        endpoint: (ref) => cluster.endpoints.find((e) => String(e.id) === ref),
      };
      const id = (name: string) => String(cluster.endpoint(name)!.id);
      const flow = { protocol: "TCP", port: 80 } as const;
      const live = renderFlow(
        engine,
        evaluateFlow(lookup, engine, { from: id("web"), to: id("api"), ...flow }),
      );
      const sim = renderFlow(engine, judge({ from: "web", to: "api", ...flow }));
      assert.deepEqual(live, sim);
    });
  } finally {
    engine.close();
  }
});

Deno.test("parseLabelList() and parseHeaderLines(): one syntax for CLI, API and browser", async (t) => {
  const labels: [string, Record<string, string> | RegExp][] = [
    ["app=web,tier=1", { app: "web", tier: "1" }],
    [" app = web , , tier=front ,", { app: "web", tier: "front" }],
    ["k8s:io.kubernetes.pod.namespace=x,empty=", {
      "k8s:io.kubernetes.pod.namespace": "x",
      empty: "",
    }],
    ["a=1=2", { a: "1=2" }],
    ["a=1,a=2", { a: "2" }],
    ["", {}],
    ["app", /^Invalid label "app": expected key=value$/],
    ["=web", /^Invalid label "=web": expected key=value$/],
  ];
  for (const [text, want] of labels) {
    await t.step(`labels ${JSON.stringify(text)}`, () => {
      if (want instanceof RegExp) {
        assert.throws(() => parseLabelList(text), { name: "SyntaxError", message: want });
      } else assert.deepEqual(parseLabelList(text), want);
    });
  }
  await t.step("an error names where the text came from", () => {
    assert.throws(
      () => parseLabelList("x", "--src-labels"),
      /^SyntaxError: Invalid label "x" in --src-labels: expected key=value$/,
    );
  });
  await t.step("formatLabelList() is the inverse", () => {
    const l = { app: "web", "k8s:tier": "1", empty: "" };
    assert.equal(formatLabelList(l), "app=web,k8s:tier=1,empty=");
    assert.deepEqual(parseLabelList(formatLabelList(l)), l);
    assert.equal(formatLabelList(undefined), "");
  });
  await t.step("headers: a text or lines, values may hold colons", () => {
    const want = { "X-Token": "1:2", Accept: "*/*" };
    assert.deepEqual(parseHeaderLines("X-Token: 1:2\n\n Accept : */*"), want);
    assert.deepEqual(parseHeaderLines(["X-Token: 1:2", "Accept: */*"]), want);
    assert.deepEqual(parseHeaderLines("Empty:"), { Empty: "" });
    assert.throws(
      () => parseHeaderLines(["nocolon"], "--http-header"),
      /^SyntaxError: Invalid header "nocolon" in --http-header: expected Name: value$/,
    );
    assert.throws(() => parseHeaderLines(": v"), /Invalid header ": v"/);
  });
});
