// Faults of a two-node cluster, with real packets (issue #12), on one cluster shared by the steps:
// etcd killed for a while (enforcement goes on with what each node knows, a CNI ADD fails at once
// with an error naming the kvstore, and after etcd is back the retried pod is known on the other
// node); an agent restarted under traffic (SIGTERM, start again: an established cross-node TCP
// connection goes on); two agents allocating the identity of the same new labels at once (one
// number, both agree). A long-lived connection a → b opened first must carry data after every
// fault. Needs root and etcd.
import assert from "node:assert/strict";
import { Cluster, type ClusterNode } from "../helpers/cluster.ts";
import { KERNEL_TOOLS, needs } from "../helpers/root.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function eventually(what: string, fn: () => Promise<boolean>, ms = 8000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await fn()) return;
    await sleep(100);
  }
  assert.fail(`Timed out after ${ms} ms waiting for: ${what}`);
}

const has = async (n: ClusterNode, prefix: string, identity?: number) =>
  (await n.ipcache()).some((e) =>
    e.prefix === prefix && (identity === undefined || e.identity === identity)
  );

const identity = async (n: ClusterNode, name: string) =>
  ((await n.call("GET", `/v1/endpoint/default/${name}`)).body as { identity: number }).identity;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-from-a, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
`;

Deno.test({
  name: "multinode faults: etcd outage, agent restart under traffic, cross-node identity race",
  ...needs({ root: true, binaries: [...KERNEL_TOOLS, "etcd", "curl"] }),
  sanitizeResources: false,
}, async (t) => {
  await using cluster = await Cluster.create({ nodes: 2, routingMode: "tunnel" });
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const a = await n1.addPod("a", { app: "a" });
  const c = await n1.addPod("c", { app: "c" });
  const b = await n2.addPod("b", { app: "b" });
  await n2.policy(POLICY);
  await eventually(
    "node-2 knows a and c",
    async () =>
      await has(n2, `${a.ipv4}/32`, await identity(n1, "a")) &&
      await has(n2, `${c.ipv4}/32`, await identity(n1, "c")),
  );
  await eventually("node-1 knows b", () => has(n1, `${b.ipv4}/32`));
  await cluster.lab.peer(b.netns).listen("tcp", 8080);
  const pa = cluster.lab.peer(a.netns);
  const pc = cluster.lab.peer(c.netns);
  const allowed = () => pa.probe("tcp", b.ipv4, 8080, 3000);
  const denied = async () => !(await pc.probe("tcp", b.ipv4, 8080, 400));
  assert.ok(await pa.open("long", b.ipv4, 8080, 3000), "a opens a connection to b");
  assert.ok(await pa.send("long", "before the faults", 3000));
  assert.ok(await allowed(), "a → b allowed");
  assert.ok(await denied(), "c → b denied");

  await t.step(
    "etcd down: enforcement unchanged, CNI ADD fails at once, converges after",
    async () => {
      await cluster.stopEtcd();
      await sleep(3000); // longer than the 2 s lease TTL: keep-alives fail meanwhile
      assert.ok(await pa.send("long", "during the outage", 3000), "established a → b goes on");
      assert.ok(await allowed(), "a new a → b connection is allowed during the outage");
      assert.ok(await denied(), "c → b stays denied during the outage");
      assert.ok(await has(n2, `${a.ipv4}/32`, await identity(n1, "a")), "node-2 still knows a");
      const started = Date.now();
      const err = await n1.addPod("e", { app: "a" }).then(() => undefined, (e: Error) => e);
      const took = Date.now() - started;
      assert.ok(err, "a CNI ADD during the outage fails");
      assert.match(err.message, /etcd at 192\.0\.2\.254:2379/, "the error names the kvstore");
      assert.ok(took < 5000, `the ADD failed within 5 s, not after ${took} ms`);
      assert.ok(await pa.send("long", "after a failed ADD", 3000));

      await cluster.startEtcd();
      const e = await n1.addPod("e", { app: "a" }); // the runtime's retry
      assert.equal(await identity(n1, "e"), await identity(n1, "a"));
      await eventually("node-2 knows e", () => has(n2, `${e.ipv4}/32`, undefined));
      assert.ok(
        await cluster.lab.peer(e.netns).probe("tcp", b.ipv4, 8080, 3000),
        "e (app=a, added after the outage) reaches b",
      );
      assert.ok(await pa.send("long", "after the outage", 3000), "established a → b goes on");
      assert.ok(await denied(), "c → b stays denied after the outage");
      const nodes = (await n2.call("GET", "/v1/node")).body as { name: string; health: string }[];
      assert.deepEqual(nodes.map((x) => x.name), ["node-1", "node-2"]);
    },
  );

  await t.step("an agent restarts under traffic: the connection goes on", async () => {
    assert.ok(await pa.open("r", b.ipv4, 8080, 3000));
    for (const n of [n2, n1]) {
      assert.ok(await pa.send("r", `before ${n.name} restarts`, 3000));
      await n.stopAgent("SIGTERM");
      assert.ok(await pa.send("r", `while ${n.name} is down`, 3000), `${n.name} down: r goes on`);
      assert.ok(await denied(), `c → b denied while ${n.name} is down`);
      await n.startAgent();
      assert.ok(await pa.send("r", `after ${n.name} restarted`, 5000), `${n.name} back: r goes on`);
      assert.ok(await pa.send("long", `after ${n.name} restarted`, 5000));
    }
    assert.ok(await allowed(), "a → b allowed after the restarts");
    assert.ok(await denied(), "c → b denied after the restarts");
  });

  await t.step("two agents allocate the same new labels at once: one number", async () => {
    const app = `race-${crypto.randomUUID().slice(0, 8)}`;
    const [x, y] = await Promise.all([n1.addPod("x", { app }), n2.addPod("y", { app })]);
    const [idX, idY] = [await identity(n1, "x"), await identity(n2, "y")];
    assert.equal(idX, idY, "both nodes allocated the same identity");
    await eventually(
      "each node knows the other's pod by that identity",
      async () => await has(n1, `${y.ipv4}/32`, idX) && await has(n2, `${x.ipv4}/32`, idX),
    );
  });
});
