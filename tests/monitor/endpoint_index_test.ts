// EndpointIndex (the monitor's view of the node's endpoints): an event of an endpoint it does not
// know yet (one a CNI ADD just made) costs one lookup by id, not a rebuild from the list of every
// endpoint: the list is asked for once a second at most, however many new endpoints send events.
import assert from "node:assert/strict";
import { PolicyEngine } from "@cilia/policy-wasm";
import { EndpointIndex } from "../../agent/monitor/endpoint_index.ts";
import type { EndpointRecord } from "../../agent/endpoint/spec.ts";

const record = (id: number): EndpointRecord =>
  ({
    id,
    name: `p${id}`,
    namespace: "default",
    labels: {},
    node: "n1",
    identity: 1000 + id,
    identityLabels: [],
    ipv4: `10.200.${id >> 8}.${id & 255}`,
    createdAt: "",
    updatedAt: "",
  }) as unknown as EndpointRecord;

Deno.test("EndpointIndex learns a new endpoint by id, without listing every endpoint", async (t) => {
  const engine = await PolicyEngine.create();
  for (const n of [10, 1_000]) {
    await t.step(`${n} endpoints there`, () => {
      const all = new Map(Array.from({ length: n }, (_, i) => [i + 1, record(i + 1)]));
      let listed = 0, looked = 0;
      const index = new EndpointIndex(() => (listed++, [...all.values()]), engine, {
        endpoint: (id) => (looked++, all.get(id)),
      });
      index.refresh();
      assert.equal(listed, 1);
      // 20 ADDs, each followed by its endpoint's first event.
      for (let id = n + 1; id <= n + 20; id++) {
        all.set(id, record(id));
        index.refresh(); // within the second: no rebuild
        assert.equal(index.byId(id), undefined);
        const g = index.generation;
        assert.equal(index.learn(id)?.identity, 1000 + id);
        assert.equal(index.byIp(record(id).ipv4!)?.id, id, "its address names it");
        assert.ok(index.generation > g, "callers drop what they built on the old index");
      }
      assert.equal(listed, 1, "the endpoint list was not asked for again");
      assert.equal(looked, 20);
      assert.equal(index.learn(99_999), undefined); // unknown to the agent too
    });
  }
});

Deno.test("EndpointIndex without a lookup by id rebuilds for an unknown id", async () => {
  const engine = await PolicyEngine.create();
  const all = [record(1)];
  let listed = 0;
  const index = new EndpointIndex(() => (listed++, all), engine);
  index.refresh();
  all.push(record(2));
  await new Promise((r) => setTimeout(r, 120)); // past the 100 ms of a forced rebuild
  assert.equal(index.learn(2)?.id, 2);
  assert.equal(listed, 2);
});
