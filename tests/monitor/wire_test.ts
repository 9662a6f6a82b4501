// flowNdjson() (the agent's per-flow NDJSON line, with shared parts serialised once) must write
// exactly what JSON.stringify({ flow }) writes, and followLines() must carry the same lines.
import assert from "node:assert/strict";
import { buildFlow, type FlowEndpoint } from "../../agent/monitor/flow.ts";
import { flowNdjson } from "../../agent/monitor/wire.ts";
import { FlowRing, Follower } from "../../agent/monitor/ring.ts";
import { event, frame } from "./_events.ts";

Deno.test("flowNdjson() writes what JSON.stringify({ flow }) writes", async (t) => {
  const side: FlowEndpoint = { ID: 7, identity: 1234, namespace: "default", labels: ["k8s:app=a"] };
  const peer: FlowEndpoint = { identity: 2, labels: ["reserved:world"] };
  const cases = [
    { name: "TCP SYN with a policy", l4: { proto: 6, sport: 40000, dport: 80, flags: 2 } },
    { name: "UDP without a policy", l4: { proto: 17, sport: 53, dport: 5353 } },
    { name: "ICMP", l4: { proto: 1, type: 8 } },
  ] as const;
  for (const c of cases) {
    await t.step(c.name, () => {
      const e = {
        ...event({ type: "drop", subtype: 133 }),
        data: frame("10.0.0.1", "10.0.0.2", c.l4),
      };
      const policy = c.l4.proto === 6
        ? { kind: "CiliumNetworkPolicy", name: "p", decision: "allow-rule", text: "allowed" }
        : undefined;
      const flow = buildFlow(e, {
        nodeName: "n",
        now: "2024-01-01T00:00:00.000Z",
        source: side,
        destination: peer,
        policy,
      });
      assert.equal(flowNdjson(flow), JSON.stringify({ flow }) + "\n");
      assert.equal(flowNdjson(flow), flowNdjson(flow)); // cached parts give the same text
    });
  }
});

Deno.test("Follower wakes a waiting take() once per burst and keeps order", async () => {
  const f = new Follower<number>(3);
  const waiting = f.take(10);
  for (let i = 0; i < 5; i++) f.offer(i);
  const got = await waiting;
  assert.deepEqual(got.items, [0, 1, 2]);
  assert.deepEqual(got.lost, [{ source: "SLOW_READER", count: 2 }]);
  assert.equal(f.hasRoom, true);
  f.close();
  assert.equal(f.hasRoom, false);
  assert.equal((await f.take(10)).done, true);
  assert.equal(new FlowRing<number>(2).capacity, 2);
});

Deno.test("Follower bounds what it holds in the units offers name (bytes for lines)", async () => {
  const f = new Follower<Uint8Array>(1000);
  assert.equal(f.offer(new Uint8Array(600), 3, 600), true);
  assert.equal(f.offer(new Uint8Array(600), 3, 600), false); // 1200 bytes: lost, as 3 flows
  assert.equal(f.offer(new Uint8Array(400), 2, 400), true); // fits exactly
  assert.equal(f.pendingSize, 1000);
  assert.equal(f.pending, 5);
  assert.equal(f.hasRoom, false);
  const got = await f.take(100);
  assert.deepEqual(got.items.map((i) => i.length), [600, 400]);
  assert.deepEqual(got.lost, [{ source: "SLOW_READER", count: 3 }]);
  assert.equal(f.pendingSize, 0);
  assert.equal(f.offer(new Uint8Array(900), 4, 900), true); // room again once taken
  f.close();
  assert.throws(() => new Follower(0), /Invalid follower limit 0: expected at least 1/);
});
