// This node's record at start when its lease lapsed first (a start slowed past the TTL, as when
// the multi-node tests start every agent at once on a loaded machine): register() replaces the
// lease and puts the record with the new one instead of failing the start, and callers that
// refresh at the same moment share one new lease, so no key is left on a lease nobody keeps
// alive. On Deno KV and on a real etcd.
import assert from "node:assert/strict";
import { type KvStore, openKvStore } from "../../agent/kvstore/kvstore.ts";
import { Logger } from "../../agent/log.ts";
import { NodeLease } from "../../agent/node/lease.ts";
import { NodeRegistry, NODES_PREFIX } from "../../agent/node/registry.ts";
import { startEtcd } from "../helpers/etcd.ts";
import { needs } from "../helpers/root.ts";

async function lapsedLease(open: () => Promise<KvStore>) {
  const raw = await open();
  let grants = 0;
  const store = new Proxy(raw, {
    get(target, p) {
      const v = Reflect.get(target, p);
      if (p === "grantLease") return (ttl: number) => (grants++, raw.grantLease(ttl));
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  const lease = await NodeLease.grant(store, 30, new Logger({ level: "error" }));
  const self = { name: "n1", addresses: ["192.0.2.1"], startedAt: "" };
  const registry = new NodeRegistry(store, lease, self);
  const leaseOfRecord = async () =>
    (await store.list(NODES_PREFIX)).find((e) => e.key === `${NODES_PREFIX}n1`)?.lease;
  try {
    const first = lease.id;
    await store.revokeLease(first); // what the TTL does to a lease not kept alive in time
    await registry.register();
    assert.notEqual(lease.id, first, "a new lease");
    assert.equal(await leaseOfRecord(), lease.id, "the record is put with it");
    assert.deepEqual((await registry.list()).map((r) => r.name), ["n1"]);

    // Lapsed again, and the keep-alive and a registration find out at once: one new lease.
    const second = lease.id;
    await store.revokeLease(second);
    const before = grants;
    await Promise.all([lease.refresh(), registry.register(), lease.refresh()]);
    assert.equal(grants - before, 1, "one lease granted for the three");
    assert.notEqual(lease.id, second);
    assert.equal(await leaseOfRecord(), lease.id, "the record is on the lease kept alive");
    await lease.refresh(); // still that one: kept alive, not replaced
    assert.equal(await leaseOfRecord(), lease.id);
  } finally {
    await lease.close();
    await store.close();
  }
}

Deno.test("NodeRegistry.register() replaces a lease that lapsed before it (Deno KV)", () =>
  lapsedLease(() => openKvStore("denokv://:memory:")));

Deno.test(
  "NodeRegistry.register() replaces a lease that lapsed before it (etcd)",
  needs({ binaries: ["etcd"] }),
  async () => {
    const etcd = await startEtcd();
    try {
      await lapsedLease(() => openKvStore(etcd.url));
    } finally {
      await etcd.stop();
    }
  },
);
