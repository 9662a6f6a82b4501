// The monitor without a kernel: events in, Hubble-shaped flows out with both sides' labels and
// the policy that decided (a rule cookie, or the rule that made a direction default-deny), the
// bounded ring and its overwrite count, followers that lose (and are told) instead of stalling,
// filters in Hubble's vocabulary with errors that name the accepted values, and the metrics.
import assert from "node:assert/strict";
import { compilePolicies, PolicyEngine } from "../../policy-wasm/mod.ts";
import { Monitor } from "../../agent/monitor/monitor.ts";
import { addCriterion, emptyFilter, FilterError } from "../../agent/monitor/filter.ts";
import { Metrics } from "../../agent/metrics.ts";
import { Logger } from "../../agent/log.ts";
import type { EndpointRecord } from "../../agent/endpoint/spec.ts";
import { event, frame } from "./_events.ts";

const POLICY = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: backend-ingress, namespace: default }
spec:
  endpointSelector: { matchLabels: { app: backend } }
  ingress:
    - fromEndpoints: [{ matchLabels: { app: frontend } }]
      toPorts: [{ ports: [{ port: "8080", protocol: TCP }] }]
`;

const FRONTEND = 1001, BACKEND = 1002;
const ep = (id: number, name: string, identity: number, ipv4: string): EndpointRecord => ({
  id,
  name,
  namespace: "default",
  labels: { app: name },
  identity,
  identityLabels: [`k8s:app=${name}`, "k8s:io.kubernetes.pod.namespace=default"],
  ipv4,
  node: "node-1",
  createdAt: "",
  updatedAt: "",
} as unknown as EndpointRecord);

async function setup(bufferSize = 8) {
  const engine = await PolicyEngine.create();
  const { spec } = compilePolicies({ text: POLICY, file: "p.yaml" });
  engine.upsertIdentities([
    { id: FRONTEND, labels: ["k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=default"] },
    { id: BACKEND, labels: ["k8s:app=backend", "k8s:io.kubernetes.pod.namespace=default"] },
  ]);
  engine.setPolicy(spec);
  engine.setEndpoints([
    { id: 1, identity: FRONTEND, namedPorts: [] },
    { id: 2, identity: BACKEND, namedPorts: [] },
  ]);
  const eps = [ep(1, "frontend", FRONTEND, "10.0.0.1"), ep(2, "backend", BACKEND, "10.0.0.2")];
  const metrics = new Metrics();
  const monitor = new Monitor({
    engine,
    endpoints: () => eps,
    nodeName: "node-1",
    bufferSize,
    log: new Logger({ level: "error" }),
    metrics,
  });
  return { engine, monitor, metrics, close: () => (monitor.close(), engine.close()) };
}

const allowCookie = (engine: PolicyEngine) => engine.entry(0)!.entry.cookie;

Deno.test("Monitor turns events into attributed flows", async (t) => {
  const { engine, monitor, metrics, close } = await setup();
  try {
    await t.step("an allowed flow names the allowing rule and both pods", () => {
      monitor.ingest(event({
        type: "policy-verdict",
        epId: 2,
        direction: "ingress",
        srcIdentity: FRONTEND,
        dstIdentity: BACKEND,
        verdict: "allow",
        match: 2,
        dport: 8080,
        cookie: allowCookie(engine),
        data: frame("10.0.0.1", "10.0.0.2", { proto: 6, sport: 40000, dport: 8080, flags: 2 }),
      }));
      const [f] = monitor.query().flows;
      assert.deepStrictEqual(f!.verdict, "FORWARDED");
      assert.deepStrictEqual(f!.IP, {
        source: "10.0.0.1",
        destination: "10.0.0.2",
        ipVersion: "IPv4",
      });
      assert.deepStrictEqual(f!.l4, {
        TCP: { source_port: 40000, destination_port: 8080, flags: { SYN: true } },
      });
      assert.deepStrictEqual(f!.source.pod_name, "frontend");
      assert.deepStrictEqual(f!.destination.pod_name, "backend");
      assert(f!.source.labels.includes("k8s:app=frontend"));
      assert.deepStrictEqual(f!.traffic_direction, "INGRESS");
      assert.deepStrictEqual(f!.Summary, "TCP Flags: SYN");
      assert.deepStrictEqual(f!.policy?.decision, "allow-rule");
      assert.deepStrictEqual(f!.policy?.name, "backend-ingress");
      assert.deepStrictEqual(f!.policy?.rule, "spec.ingress[0].toPorts[0]");
    });

    await t.step("a default-deny drop names the policy that selected the endpoint", () => {
      monitor.ingest(event({
        type: "drop",
        subtype: 133,
        epId: 2,
        direction: "ingress",
        srcIdentity: FRONTEND,
        dstIdentity: BACKEND,
        dport: 9090,
        data: frame("10.0.0.1", "10.0.0.2", { proto: 6, sport: 40001, dport: 9090, flags: 2 }),
      }));
      const f = monitor.query({ last: 1 }).flows[0]!;
      assert.deepStrictEqual(f.verdict, "DROPPED");
      assert.deepStrictEqual(f.drop_reason_desc, "POLICY_DENIED");
      assert.deepStrictEqual(f.policy?.decision, "default-deny");
      assert.match(
        f.policy!.text,
        /endpoint default\/backend is selected by CiliumNetworkPolicy default\/backend-ingress \(spec\) for ingress and no rule allows it/,
      );
    });

    await t.step("filters in Hubble's vocabulary", () => {
      const q = (pairs: [string, string, boolean?][]) => {
        const filter = emptyFilter();
        for (const [k, v, not] of pairs) addCriterion(filter, k, v, not);
        return monitor.query({ filter }).flows.length;
      };
      assert.deepStrictEqual(q([["verdict", "DROPPED"]]), 1);
      assert.deepStrictEqual(q([["verdict", "dropped", true]]), 1);
      assert.deepStrictEqual(q([["from-pod", "default/front"], ["to-label", "app=backend"]]), 2);
      assert.deepStrictEqual(q([["to-pod", "default/frontend"]]), 0);
      assert.deepStrictEqual(q([["port", "9090"], ["protocol", "tcp"]]), 1);
      assert.deepStrictEqual(q([["ip", "10.0.0.0/24"], ["type", "policy-verdict"]]), 1);
      assert.deepStrictEqual(q([["from-ip", "10.0.0.2"]]), 0);
      for (const reason of ["133", "POLICY_DENIED", "policy_denied", "POLICY", "DROP_POLICY"]) {
        assert.deepStrictEqual(q([["drop-reason", reason]]), 1, reason);
      }
      assert.deepStrictEqual(q([["drop-reason", "POLICY_DENY"]]), 0);
      assert.throws(
        () => addCriterion(emptyFilter(), "drop-reason", "POLICY_DENIE"),
        /Invalid drop-reason "POLICY_DENIE": expected a code \(133\) or a drop reason name/,
      );
      assert.throws(
        () => addCriterion(emptyFilter(), "verdict", "LOST"),
        (e) =>
          e instanceof FilterError && /expected one of FORWARDED, DROPPED, AUDIT/.test(e.message),
      );
      assert.throws(() => addCriterion(emptyFilter(), "type", "l9"), /drop, trace, policy-verdict/);
      assert.throws(() => addCriterion(emptyFilter(), "colour", "x"), /expected one of from-pod/);
    });

    await t.step("the ring keeps the last N and counts what it overwrote", () => {
      for (let i = 0; i < 10; i++) monitor.ingest(event({ type: "trace", epId: 1 }));
      const s = monitor.stats();
      assert.deepStrictEqual(s.buffer, { size: 8, capacity: 8, seen: 12, overwritten: 4 });
      assert.deepStrictEqual(monitor.query().flows.length, 8);
    });

    await t.step("a slow follower loses and is told; a fast one loses nothing", async () => {
      const slow = monitor.follow(undefined, 4);
      const fast = monitor.follow(undefined, 1000);
      for (let i = 0; i < 10; i++) monitor.ingest(event({ type: "trace", epId: 1 }));
      const a = await slow.take(100);
      assert.deepStrictEqual(a.items.length, 4);
      assert.deepStrictEqual(a.lost, [{ source: "SLOW_READER", count: 6 }]);
      assert.deepStrictEqual((await fast.take(100)).items.length, 10);
      assert.deepStrictEqual(monitor.stats().lost.slowReaders, 6);
      monitor.unfollow(slow);
      monitor.unfollow(fast);
    });

    await t.step("a line follower is bounded by the bytes it holds", async () => {
      const probe = monitor.followLines();
      monitor.ingest(event({ type: "trace", epId: 1 }));
      const line = (await probe.take(10)).items[0] as Uint8Array;
      monitor.unfollow(probe);
      const lines = monitor.followLines(undefined, 2 * line.length); // two lines' worth
      for (let i = 0; i < 5; i++) monitor.ingest(event({ type: "trace", epId: 1 }));
      assert.equal(lines.pendingSize, 2 * line.length);
      const got = await lines.take(100);
      assert.equal(got.items.length, 2);
      assert.deepStrictEqual(got.lost, [{ source: "SLOW_READER", count: 3 }]);
      assert.deepStrictEqual(monitor.stats().lost.slowReaders, 6 + 3);
      monitor.unfollow(lines);
    });

    await t.step("metrics count flows, verdicts and losses", async () => {
      const text = await metrics.scrape();
      assert.match(text, /cilia_flows_processed_total\{type="drop",verdict="DROPPED"\} 1/);
      assert.match(text, /cilia_flows_processed_total\{type="trace",verdict="FORWARDED"\} 26/);
      assert.match(
        text,
        /cilia_policy_verdict_total\{action="allow",direction="INGRESS",match="l3-l4"\} 1/,
      );
      assert.match(text, /cilia_flows_lost_total\{source="slow-reader"\} 9/);
    });
  } finally {
    close();
  }
});
