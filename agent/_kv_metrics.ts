/**
 * A `KvStore` that counts every operation of the store it wraps in
 * `cilia_kvstore_operations_total{backend,op,outcome}`; behaviour is otherwise unchanged.
 */

import type { KvStore, PutOptions, WatchOptions } from "./kvstore/kvstore.ts";
import type { Counter } from "./metrics.ts";

export function countedKvStore(store: KvStore, counter: Counter): KvStore {
  const backend = store.name.startsWith("etcd") ? "etcd" : "denokv";
  const count = async <T>(op: string, p: Promise<T>): Promise<T> => {
    try {
      const v = await p;
      counter.inc({ backend, op, outcome: "success" });
      return v;
    } catch (err) {
      counter.inc({ backend, op, outcome: "error" });
      throw err;
    }
  };
  return {
    name: store.name,
    ...(store.maxValueBytes !== undefined ? { maxValueBytes: store.maxValueBytes } : {}),
    get: (key: string) => count("get", store.get(key)),
    put: (key: string, value: Uint8Array, opts?: PutOptions) =>
      count("put", store.put(key, value, opts)),
    delete: (key: string) => count("delete", store.delete(key)),
    createIfAbsent: (key: string, value: Uint8Array, opts?: PutOptions) =>
      count("create", store.createIfAbsent(key, value, opts)),
    createAll: (entries) => count("create_all", store.createAll(entries)),
    putAll: (entries, opts) => count("put_all", store.putAll(entries, opts)),
    compareAndSwap: (key, expected, value, opts) =>
      count("compare_and_swap", store.compareAndSwap(key, expected, value, opts)),
    list: (prefix: string) => count("list", store.list(prefix)),
    cursor: () => count("cursor", store.cursor()),
    async *watch(prefix: string, opts?: WatchOptions) {
      try {
        for await (const event of store.watch(prefix, opts)) {
          counter.inc({ backend, op: "watch_event", outcome: "success" });
          yield event;
        }
      } catch (err) {
        counter.inc({ backend, op: "watch", outcome: "error" });
        throw err;
      }
    },
    grantLease: (ttl: number) => count("grant_lease", store.grantLease(ttl)),
    keepAlive: (lease: string) => count("keep_alive", store.keepAlive(lease)),
    revokeLease: (lease: string) => count("revoke_lease", store.revokeLease(lease)),
    close: () => store.close(),
  };
}
