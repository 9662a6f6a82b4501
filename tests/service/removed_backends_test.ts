// Which backends a service write removed (ServiceManager's onBackendsRemoved, what the socket LB's
// termination ends): a smaller backend set and a deleted service name their pairs once, after the
// write; a backend turned terminating is not removed; a failed write names nothing yet (the retry
// does); a failing hook never fails the update. After a start, the first write compares with the
// pairs the datapath held from before (LbState.heldPairs read back from the maps; a terminating
// backend pairs with every frontend of its protocol, a guess named only when the backend left
// every service), so a backend removed while the agent was down is named; a plain restart names
// nothing; without the hook that read is skipped. The sink only records (a stand-in for
// KernelSink; tests/e2e/services_socket_lb_test.ts ends real connections).
import assert from "node:assert/strict";
import { openKvStore } from "../../agent/kvstore/kvstore.ts";
import { SILENT } from "../../agent/log.ts";
import {
  type RemovedBackend,
  SERVICE_PREFIX,
  ServiceManager,
} from "../../agent/service/manager.ts";
import { LB_MAPS, LbState } from "../../agent/service/lb_state.ts";
import { normaliseService } from "../../agent/service/spec.ts";

const frontend = { ip: "10.96.0.10", port: 80, protocol: "TCP" as const };
const a = { ip: "10.1.0.1", port: 8080 }, b = { ip: "10.1.0.2", port: 8080 };

Deno.test("ServiceManager: onBackendsRemoved names the pairs a write removed", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-svc-removed-" });
  const store = await openKvStore(`denokv://${dir}/kv.sqlite`);
  const removed: RemovedBackend[][] = [];
  let failSink = false, failHook = false;
  const m = new ServiceManager({
    store,
    log: SILENT,
    sink: {
      applyServices: () => failSink ? Promise.reject(new Error("sink down")) : Promise.resolve(),
    },
    onBackendsRemoved: (r) => {
      removed.push(r);
      return failHook ? Promise.reject(new Error("hook down")) : Promise.resolve();
    },
  });
  const pair = (be: typeof a) => ({ frontend, backend: be });
  try {
    await t.step("a new service and a terminating backend remove nothing", async () => {
      await m.upsert({ frontend, backends: [a, b] });
      await m.upsert({ frontend, backends: [{ ...a, terminating: true }, b] });
      assert.deepEqual(removed, []);
    });
    await t.step("a smaller set names the backend that left, once", async () => {
      await m.upsert({ frontend, backends: [b] });
      await m.upsert({ frontend, backends: [b] });
      assert.deepEqual(removed.splice(0), [[pair(a)]]);
    });
    await t.step("a failed write names nothing; the next one that succeeds does", async () => {
      await m.upsert({ frontend, backends: [a, b] });
      failSink = true;
      await assert.rejects(m.upsert({ frontend, backends: [b] }), /sink down/);
      assert.deepEqual(removed, []);
      failSink = false;
      await m.upsert({ frontend, backends: [b] });
      assert.deepEqual(removed.splice(0), [[pair(a)]]);
    });
    await t.step("a failing hook does not fail the update; a delete names all", async () => {
      failHook = true;
      const s = await m.upsert({ frontend, backends: [a] });
      assert.deepEqual(removed.splice(0), [[pair(b)]]);
      await m.delete(s.service.id);
      assert.deepEqual(removed.splice(0), [[pair(a)]]);
    });
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("LbState.heldPairs() reads the pairs back from the maps a previous agent wrote", () => {
  const tcp = normaliseService({
    id: 1,
    type: "NodePort",
    nodePort: 30080,
    algorithm: "maglev",
    frontend,
    backends: [{ ...a, weight: 1 }, { ...b, weight: 1, terminating: true }],
  });
  const udp = normaliseService({
    id: 2,
    type: "ClusterIP",
    algorithm: "random",
    frontend: { ip: "fd00:96::53", port: 53, protocol: "UDP" },
    backends: [{ ip: "fd00:1::3", port: 53, weight: 1 }],
  });
  const written = new LbState();
  const plan = written.plan([tcp, udp], { nodePortAddresses: ["192.0.2.1"] });
  plan.commit();
  // A restarted agent: a fresh LbState restored from the entries the kernel holds.
  const restored = new LbState();
  for (const m of LB_MAPS) {
    restored.restore(m, plan.writes.filter((w) => w.map === m).flatMap((w) => w.updates));
  }
  const text = (r: RemovedBackend) =>
    `${r.frontend.ip}:${r.frontend.port}/${r.frontend.protocol} ${r.backend.ip}:${r.backend.port}`;
  const want = [
    "10.96.0.10:80/TCP 10.1.0.1:8080",
    "10.96.0.10:80/TCP 10.1.0.2:8080", // terminating: no slot, paired by protocol
    "fd00:96::53:53/UDP fd00:1::3:53",
  ];
  assert.deepEqual(restored.heldPairs().map(text).sort(), want, "no NodePort frontend");
  assert.deepEqual(written.heldPairs().map(text).sort(), want);
  assert.deepEqual(new LbState().heldPairs(), [], "nothing held");
});

Deno.test("ServiceManager: the first write after a start compares with what the datapath held", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-svc-held-" });
  const store = await openKvStore(`denokv://${dir}/kv.sqlite`);
  const pair = (be: typeof a) => ({ frontend, backend: be });
  const record = (backends: unknown[]) =>
    store.put(
      `${SERVICE_PREFIX}1`,
      new TextEncoder().encode(JSON.stringify({ id: 1, frontend, backends })),
    );
  const start = async (o: { hook: boolean; held: RemovedBackend[] }) => {
    const removed: RemovedBackend[][] = [];
    let reads = 0;
    const m = new ServiceManager({
      store,
      log: SILENT,
      sink: {
        applyServices: () => Promise.resolve(),
        heldBackendPairs: () => {
          reads++;
          return Promise.resolve(o.held);
        },
      },
      ...(o.hook ? { onBackendsRemoved: (r) => Promise.resolve(void removed.push(r)) } : {}),
    });
    const ac = new AbortController();
    const w = m.follow({ signal: ac.signal });
    await w.ready;
    return {
      m,
      removed,
      reads: () => reads,
      async stop() {
        ac.abort();
        await w.done.catch(() => {});
      },
    };
  };
  try {
    await t.step(
      "a backend gone while the agent was down is named at the first write",
      async () => {
        await record([b]);
        const s = await start({ hook: true, held: [pair(a), pair(b)] });
        try {
          assert.deepEqual(s.removed, [[pair(a)]]);
          assert.equal(s.reads(), 1);
          await s.m.upsert({ frontend, backends: [b] });
          assert.equal(s.reads(), 1, "read once");
          assert.deepEqual(s.removed, [[pair(a)]], "and only once");
        } finally {
          await s.stop();
        }
      },
    );
    await t.step("nothing changed, or a backend only turned terminating: nothing", async () => {
      await record([{ ...a, terminating: true }, b]);
      const s = await start({ hook: true, held: [pair(a), pair(b)] });
      try {
        assert.deepEqual(s.removed, []);
      } finally {
        await s.stop();
      }
    });
    await t.step("a guessed pair is named only when its backend left every service", async () => {
      const c = { ip: "10.1.0.3", port: 8080 };
      const other = { ip: "10.96.0.99", port: 80, protocol: "TCP" as const };
      const guessed = (be: typeof a) => ({ frontend: other, backend: be, guessed: true as const });
      await record([{ ...b, terminating: true }]);
      const s = await start({ hook: true, held: [pair(b), guessed(b), guessed(c)] });
      try {
        assert.deepEqual(s.removed, [[{ frontend: other, backend: c }]]);
      } finally {
        await s.stop();
      }
    });
    await t.step("without onBackendsRemoved the datapath is not asked", async () => {
      await record([b]);
      const s = await start({ hook: false, held: [pair(a), pair(b)] });
      try {
        assert.equal(s.reads(), 0);
      } finally {
        await s.stop();
      }
    });
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
