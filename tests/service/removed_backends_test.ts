// Which backends a service write removed (ServiceManager's onBackendsRemoved, what the socket LB's
// termination ends): a smaller backend set and a deleted service name their pairs once, after the
// write; a backend turned terminating is not removed; a failed write names nothing yet (the retry
// does); a failing hook never fails the update. The sink only records (a stand-in for KernelSink;
// tests/e2e/services_socket_lb_test.ts ends real connections).
import assert from "node:assert/strict";
import { openKvStore } from "../../agent/kvstore/kvstore.ts";
import { SILENT } from "../../agent/log.ts";
import { type RemovedBackend, ServiceManager } from "../../agent/service/manager.ts";

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
