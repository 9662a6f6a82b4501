// Identity references in batches (issue #15, restart): the references a restore or a burst of
// ADDs takes come together in one kvstore write per PUT_ALL_MAX keys, on Deno KV and on etcd; a
// batch that fails is written key by key, so no reference is lost; releasing deletes them.

import assert from "node:assert/strict";
import { IdentityAllocator } from "../../agent/identity/allocator.ts";
import { IdentityCache } from "../../agent/identity/cache.ts";
import { type KvStore, openKvStore, PUT_ALL_MAX } from "../../agent/kvstore/kvstore.ts";
import { Logger } from "../../agent/log.ts";
import { NodeLease } from "../../agent/node/lease.ts";
import { startEtcd } from "../helpers/etcd.ts";
import { needs } from "../helpers/root.ts";

const REFS = "cilia/identities/refs/";
const N = PUT_ALL_MAX + 40;

/** `store` with its writes counted, and `putAll` failing `failures` times first. */
function countingStore(store: KvStore, failures: number) {
  const calls = { put: 0, putAll: 0 };
  const put: KvStore["put"] = (k, v, o) => (calls.put++, store.put(k, v, o));
  const putAll: KvStore["putAll"] = (entries, o) => {
    calls.putAll++;
    if (failures-- > 0) return Promise.reject(new Error("injected: the batch is refused"));
    return store.putAll(entries, o);
  };
  const wrapped = new Proxy(store, {
    get(target, p) {
      if (p === "put") return put;
      if (p === "putAll") return putAll;
      const v = Reflect.get(target, p);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return { store: wrapped, calls };
}

async function refsOf(store: KvStore, node: string) {
  const out = new Map<number, string | undefined>();
  for (const e of await store.list(REFS)) {
    const [id, n] = e.key.slice(REFS.length).split("/");
    if (n === node) out.set(Number(id), e.lease);
  }
  return out;
}

async function batches(open: () => Promise<KvStore>) {
  const raw = await open();
  const log = new Logger({ level: "error" });
  const lease = await NodeLease.grant(raw, 30, log);
  const node = `node-${crypto.randomUUID().slice(0, 6)}`;
  const counted = countingStore(raw, 1);
  const allocator = new IdentityAllocator({
    store: counted.store,
    cache: new IdentityCache(),
    lease,
    node,
    range: { min: 256, max: 65535 },
    log,
  });
  try {
    const sets = Array.from({ length: N }, (_, i) => [`k8s:app=refs-${node}-${i}`]);
    const ids = [];
    for (const labels of sets) ids.push((await allocator.acquire(labels)).id); // one at a time
    assert.equal((await refsOf(raw, node)).size, N);
    await Promise.all(ids.map((id) => allocator.release(id)));
    assert.equal((await refsOf(raw, node)).size, 0, "released: no reference left");

    // A restore: every reference at once. The first batch is refused and written key by key.
    counted.calls.put = counted.calls.putAll = 0;
    const again = await Promise.all(sets.map((labels) => allocator.acquire(labels)));
    assert.deepEqual(again.map((i) => i.id), ids, "the same identities");
    assert.equal(counted.calls.putAll, Math.ceil(N / PUT_ALL_MAX), "one write per batch");
    assert.equal(counted.calls.put, PUT_ALL_MAX, "the refused batch, key by key");
    const refs = await refsOf(raw, node);
    assert.deepEqual([...refs.keys()].sort(), [...ids].sort(), "every reference is there");
    assert.ok([...refs.values()].every((l) => l === lease.id), "each with the node's lease");
    assert.ok(ids.every((id) => allocator.refCount(id) === 1));

    // Two users of one identity: the reference stays until the last one releases it.
    await allocator.acquire(sets[0]!);
    await allocator.release(ids[0]!);
    assert.ok((await refsOf(raw, node)).has(ids[0]!));
    await Promise.all(ids.map((id) => allocator.release(id)));
    assert.equal((await refsOf(raw, node)).size, 0);
  } finally {
    await allocator.settle();
    await lease.close();
    await raw.close();
  }
}

Deno.test("identity references: one write per batch on Deno KV; a refused batch loses none", () =>
  batches(() => openKvStore("denokv://:memory:")));

Deno.test(
  "identity references: one write per batch on etcd; a refused batch loses none",
  needs({ binaries: ["etcd"] }),
  async () => {
    const etcd = await startEtcd();
    try {
      await batches(() => openKvStore(etcd.url));
    } finally {
      await etcd.stop();
    }
  },
);
