// L7 Kafka policy through the kernel redirect and the agent's Kafka proxy, with real clients in
// CNI pods: the test broker fixture (tests/fixtures/kafka_broker.ts) in a broker pod, kcat and a
// kafkajs producer/consumer (_kafka_client.ts) in a client pod, and an ingress rule on the broker
// allowing produce and consume on topic "orders" only. Allowed produce/consume work end to end;
// the topic "secret" gets TOPIC_AUTHORIZATION_FAILED (from the proxy: the broker never sees it)
// and the same producer connection goes on working; each request is an L7 flow and counted.
// Flexible versions: kcat's ApiVersions v3, and a flexible client (tests/proxy/_kafka_flex_client.ts:
// Metadata v12, Produce v9, Fetch v12) with the same allow/deny outcomes and error 29 in the
// request's own version. Then the same as an egress rule on the client. Needs root.
import assert from "node:assert/strict";
import { CiliaNode, root } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-orders, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: orders}
        - {role: consume, topic: orders}
`;

const EGRESS = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: kafka}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: audit}
`;

const FLEX_CLIENT = "tests/proxy/_kafka_flex_client.ts";

interface Out {
  code: number;
  stdout: string;
  stderr: string;
}

Deno.test({
  name: "l7 kafka: topic rules through the kernel redirect with kcat and kafkajs",
  ...needsRoot(["kcat"]),
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  await using n = await CiliaNode.create();
  const client = await n.addPod("client", { app: "client" });
  const broker = await n.addPod("kafka", { app: "kafka" });
  const addr = `${broker.ipv4}:9092`;
  const brokerProc = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      broker.netns,
      Deno.execPath(),
      "run",
      "-A",
      "--no-config",
      `${root}tests/fixtures/kafka_broker.ts`,
      "--port",
      "9092",
      "--advertise",
      broker.ipv4,
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const run = async (argv: string[], stdin?: string): Promise<Out> => {
    const p = new Deno.Command("ip", {
      args: ["netns", "exec", client.netns, ...argv],
      cwd: root,
      stdin: stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (stdin !== undefined) {
      const w = p.stdin.getWriter();
      await w.write(new TextEncoder().encode(stdin));
      await w.close();
    }
    const o = await p.output();
    const dec = new TextDecoder();
    return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
  };
  const kcat = (args: string[], stdin?: string) =>
    run(["timeout", "15", "kcat", "-b", addr, "-m", "5", ...args], stdin);
  const kafkajs = async (...args: string[]) => {
    const o = await run([Deno.execPath(), "run", "-A", "tests/e2e/_kafka_client.ts", ...args]);
    try {
      return JSON.parse(o.stdout.trim().split("\n").at(-1) ?? "");
    } catch {
      throw new Error(`kafkajs client: ${o.stdout}${o.stderr}`);
    }
  };
  try {
    // The broker is up (no policy yet): kcat lists its metadata.
    let up: Out | undefined;
    for (let i = 0; i < 50; i++) {
      up = await run(["timeout", "3", "kcat", "-b", addr, "-m", "1", "-L"]);
      if (up.code === 0) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(up?.code, 0, `the broker fixture answers: ${up?.stderr}`);
    await n.policy(POLICY);

    await t.step("kcat: produce to and consume from the allowed topic", async () => {
      const p = await kcat(["-P", "-t", "orders", "-p", "0"], "m1\nm2\n");
      assert.equal(p.code, 0, p.stderr);
      const c = await kcat(["-C", "-t", "orders", "-p", "0", "-o", "beginning", "-e"]);
      assert.equal(c.code, 0, c.stderr);
      assert.deepEqual(c.stdout.trim().split("\n"), ["m1", "m2"]);
    });

    await t.step("kcat: the denied topic gets Topic authorization failed", async () => {
      const p = await kcat(["-P", "-t", "secret", "-p", "0"], "x\n");
      assert.notEqual(p.code, 0);
      assert.match(p.stderr, /authoriz/i, p.stderr);
    });

    await t.step("kafkajs: a denial leaves the producer's connection usable", async () => {
      const r = await kafkajs("produce", addr, "orders,secret,orders", "k1");
      assert.equal(r.ok, true, JSON.stringify(r));
      assert.equal(r.results.secret.type, "TOPIC_AUTHORIZATION_FAILED", JSON.stringify(r));
      assert.equal(r.results.orders.ok, true, JSON.stringify(r));
    });

    await t.step("kafkajs: a consumer group reads the allowed topic", async () => {
      const r = await kafkajs("consume", addr, "orders", "4");
      assert.equal(r.ok, true, JSON.stringify(r));
      assert.deepEqual(r.messages, ["m1", "m2", "k1", "k1"]);
    });

    await t.step(
      "kcat's flexible ApiVersions v3 passes the proxy (no fallback to v0)",
      async () => {
        const o = await kcat(["-L", "-t", "orders", "-X", "debug=protocol"]);
        assert.equal(o.code, 0, o.stderr);
        assert.match(o.stderr, /Received ApiVersionResponse \(v3,/, o.stderr);
        assert.doesNotMatch(o.stderr, /Sent ApiVersionRequest \(v0,/, o.stderr);
      },
    );

    await t.step(
      "flexible versions: Produce v9, Metadata v12, Fetch v12; denied gets 29",
      async () => {
        // kcat (librdkafka 2.0.2) stops at Metadata v4, Produce v7, Fetch v11 and kafkajs has no
        // flexible versions: this client sends the flexible ones (request header v2, compact fields).
        const flex = async (...args: string[]) => {
          const o = await run([Deno.execPath(), "run", "-A", FLEX_CLIENT, ...args]);
          try {
            return JSON.parse(o.stdout.trim().split("\n").at(-1) ?? "");
          } catch {
            throw new Error(`flexible client: ${o.stdout}${o.stderr}`);
          }
        };
        const p = await flex("produce", addr, "orders,secret,orders", "f1");
        assert.equal(p.ok, true, JSON.stringify(p));
        assert.deepEqual(p.versions, { metadata: 12, produce: 9, fetch: 12 });
        assert.deepEqual(
          p.results.map((r: { topic: string; error: number }) => [r.topic, r.error]),
          [["orders", 0], ["secret", 29], ["orders", 0]],
          "the denial in Produce v9 leaves the connection usable",
        );
        assert.equal(p.results[1].metadataError, 29, "Metadata v12 of the denied topic: 29");
        const c = await flex("consume", addr, "orders", "6");
        assert.equal(c.ok, true, JSON.stringify(c));
        assert.deepEqual(c.values, ["m1", "m2", "k1", "k1", "f1", "f1"]);
        const { flows } = await n.flows({ type: "l7" });
        const d = flows.find((f) =>
          f.l7?.kafka?.topic === "secret" && f.l7.kafka.api_version === 9
        );
        assert.equal(d?.verdict, "DROPPED", JSON.stringify(flows.slice(-4)));
        assert.equal(d?.l7?.kafka?.error_code, 29);
        const ok = flows.find((f) =>
          f.l7?.kafka?.api_key === "fetch" && f.l7.kafka.api_version === 12
        );
        assert.equal(ok?.verdict, "FORWARDED", JSON.stringify(flows.slice(-4)));
      },
    );

    await t.step("each request is an L7 flow and counted as kafka", async () => {
      const { flows } = await n.flows({ type: "l7" });
      const d = flows.find((f) => f.l7?.kafka?.topic === "secret");
      assert.ok(d, `a flow for the denied topic: ${JSON.stringify(flows.slice(-3))}`);
      assert.equal(d.verdict, "DROPPED");
      assert.equal(d.l7!.kafka!.error_code, 29);
      assert.equal(d.traffic_direction, "INGRESS");
      assert.equal(d.IP?.source, client.ipv4);
      const ok = flows.find((f) => f.l7?.kafka?.api_key === "produce" && f.verdict === "FORWARDED");
      assert.ok(ok, "an allowed produce flow");
      assert.equal(ok.policy?.name, "kafka-orders");
      const m = await n.metrics();
      assert.match(m, /cilia_l7_requests_total\{protocol="kafka",verdict="denied"\} [1-9]/);
      assert.match(m, /cilia_l7_requests_total\{protocol="kafka",verdict="forwarded"\} [1-9]/);
    });

    await t.step("egress: the client's own rule allows produce to 'audit' only", async () => {
      await n.clearPolicies();
      await n.policy(EGRESS);
      const ok = await kcat(["-P", "-t", "audit", "-p", "0"], "e1\n");
      assert.equal(ok.code, 0, ok.stderr);
      const denied = await kcat(["-P", "-t", "orders", "-p", "0"], "e2\n");
      assert.notEqual(denied.code, 0);
      assert.match(denied.stderr, /authoriz/i, denied.stderr);
      const { flows } = await n.flows({ type: "l7" });
      const d = flows.find((f) => f.l7?.kafka?.topic === "orders" && f.verdict === "DROPPED");
      assert.equal(d?.traffic_direction, "EGRESS", JSON.stringify(flows.slice(-2)));
    });
  } finally {
    try {
      brokerProc.kill("SIGKILL");
    } catch { /* exited */ }
    const o = await brokerProc.output().catch(() => undefined);
    const err = o ? new TextDecoder().decode(o.stderr).trim() : "";
    if (err) console.error(`kafka fixture stderr: ${err}`);
  }
});
