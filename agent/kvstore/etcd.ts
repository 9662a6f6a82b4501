/**
 * The etcd v3 backend, for clusters: speaks etcd's JSON gateway with `fetch` (no gRPC, no npm
 * client). Revisions are etcd mod_revisions; a watch is one long-lived NDJSON stream that is
 * reopened from its last position when it breaks. This module must not leave a request or
 * stream open after `close()`.
 */

import {
  type KvEntry,
  type KvStore,
  PUT_ALL_MAX,
  type PutOptions,
  type WatchEvent,
  type WatchOptions,
} from "./kvstore.ts";
import { distinctKeys, kvError, LeaseGone, WatchCompactedError } from "./errors.ts";
import { backoff } from "./_retry.ts";
import { parseCursor, type WatchPosition, watchStream } from "./_etcd_watch.ts";
import {
  b64,
  EtcdClient,
  EtcdError,
  type Json,
  NOT_FOUND,
  prefixEnd,
  toEntry,
} from "./_etcd_client.ts";

export async function openEtcdStore(endpoints: readonly string[]): Promise<KvStore> {
  const store = new EtcdStore(new EtcdClient(endpoints));
  await store.cursor(); // fail early, naming the endpoints, if none answers
  return store;
}

function putRequest(key: string, value: Uint8Array, lease: string | undefined): Json {
  const req: Json = { key: b64(key), value: value.toBase64() };
  if (lease !== undefined) req.lease = lease;
  return req;
}

class EtcdStore implements KvStore {
  readonly name: string;
  #client: EtcdClient;
  #pending = new Set<Promise<unknown>>();

  constructor(client: EtcdClient) {
    this.#client = client;
    this.name = `etcd at ${client.endpoints.join(",")}`;
  }

  get(key: string): Promise<KvEntry | null> {
    return this.#run("get", key, async () => {
      const r = await this.#client.call("/v3/kv/range", { key: b64(key) });
      return r.kvs?.[0] ? toEntry(r.kvs[0]) : null;
    });
  }

  put(key: string, value: Uint8Array, opts: PutOptions = {}): Promise<string> {
    return this.#run("put", key, async () => {
      const r = await this.#leased(
        opts.lease,
        () => this.#client.call("/v3/kv/put", putRequest(key, value, opts.lease)),
      );
      return String(r.header.revision);
    });
  }

  delete(key: string): Promise<boolean> {
    return this.#run("delete", key, async () => {
      const r = await this.#client.call("/v3/kv/deleterange", { key: b64(key) });
      return Number(r.deleted ?? 0) > 0;
    });
  }

  createIfAbsent(
    key: string,
    value: Uint8Array,
    opts: PutOptions = {},
  ): Promise<{ created: boolean; entry: KvEntry }> {
    return this.#run("create", key, async () => {
      const r = await this.#leased(opts.lease, () =>
        this.#client.call("/v3/kv/txn", {
          compare: [{ key: b64(key), target: "CREATE", result: "EQUAL", create_revision: "0" }],
          success: [{ request_put: putRequest(key, value, opts.lease) }],
          failure: [{ request_range: { key: b64(key) } }],
        }));
      if (r.succeeded !== true) {
        return { created: false, entry: toEntry(r.responses[0].response_range.kvs[0]) };
      }
      const entry: KvEntry = { key, value, revision: String(r.header.revision) };
      if (opts.lease !== undefined) entry.lease = opts.lease;
      return { created: true, entry };
    });
  }

  createAll(entries: readonly { key: string; value: Uint8Array }[]): Promise<boolean> {
    return this.#run("create", entries.map((e) => e.key).join(", "), async () => {
      distinctKeys(entries);
      if (entries.length === 0) return true;
      const r = await this.#client.call("/v3/kv/txn", {
        compare: entries.map((e) => ({
          key: b64(e.key),
          target: "CREATE",
          result: "EQUAL",
          create_revision: "0",
        })),
        success: entries.map((e) => ({ request_put: putRequest(e.key, e.value, undefined) })),
      });
      return r.succeeded === true;
    });
  }

  putAll(
    entries: readonly { key: string; value: Uint8Array }[],
    opts: PutOptions = {},
  ): Promise<void> {
    return this.#run("put", entries.map((e) => e.key).join(", "), async () => {
      distinctKeys(entries);
      if (entries.length > PUT_ALL_MAX) {
        throw new RangeError(
          `expected at most ${PUT_ALL_MAX} keys in one write, got ${entries.length}`,
        );
      }
      if (entries.length === 0) return;
      await this.#leased(opts.lease, () =>
        this.#client.call("/v3/kv/txn", {
          success: entries.map((e) => ({ request_put: putRequest(e.key, e.value, opts.lease) })),
        }));
    });
  }

  compareAndSwap(
    key: string,
    expected: string | null,
    value: Uint8Array | null,
    opts: PutOptions = {},
  ): Promise<boolean> {
    return this.#run("compare-and-swap", key, async () => {
      if (expected !== null && !/^\d+$/.test(expected)) return false; // not one of our revisions
      const compare = expected === null
        ? { key: b64(key), target: "CREATE", result: "EQUAL", create_revision: "0" }
        : { key: b64(key), target: "MOD", result: "EQUAL", mod_revision: expected };
      const success = value === null
        ? { request_delete_range: { key: b64(key) } }
        : { request_put: putRequest(key, value, opts.lease) };
      const r = await this.#leased(
        opts.lease,
        () => this.#client.call("/v3/kv/txn", { compare: [compare], success: [success] }),
      );
      return r.succeeded === true;
    });
  }

  list(prefix: string): Promise<KvEntry[]> {
    return this.#run("list", prefix, async () => {
      const r = await this.#client.call("/v3/kv/range", {
        key: prefix === "" ? b64("\0") : b64(prefix),
        range_end: prefixEnd(prefix),
      });
      return (r.kvs ?? []).map(toEntry);
    });
  }

  cursor(): Promise<string> {
    return this.#run("read cursor", "", async () => {
      const r = await this.#client.call("/v3/kv/range", { key: b64("\0"), count_only: true });
      return String(r.header.revision);
    });
  }

  async *watch(prefix: string, opts: WatchOptions = {}): AsyncIterable<WatchEvent> {
    let at: WatchPosition | null = null;
    if (opts.after !== undefined) {
      at = parseCursor(opts.after);
      if (at === null) {
        throw new TypeError(
          `Cannot watch "${prefix}" in ${this.name}: expected a cursor from this store, got "${opts.after}"`,
        );
      }
    }
    const { signal } = opts;
    const pos = { at };
    for (let failures = 0; !this.#client.closed && !signal?.aborted; failures++) {
      try {
        for await (
          const event of watchStream(this.#client, prefix, { pos, signal, store: this.name })
        ) {
          failures = 0;
          yield event;
        }
      } catch (err) {
        if (this.#client.closed || signal?.aborted) return;
        if (err instanceof WatchCompactedError || err instanceof EtcdError) {
          throw kvError("watch", prefix, this.name, err);
        }
      }
      // The stream ended or broke: reopen it from where it stood, against any endpoint.
      await backoff(Math.min(25 * 2 ** failures, 1000), this.#client.closing, signal);
    }
  }

  grantLease(ttlSeconds: number): Promise<string> {
    return this.#run("grant lease for", `${ttlSeconds} s`, async () => {
      if (!(ttlSeconds > 0)) throw new RangeError(`expected a TTL above 0 seconds`);
      const r = await this.#client.call("/v3/lease/grant", { TTL: Math.ceil(ttlSeconds) });
      return String(r.ID);
    });
  }

  keepAlive(lease: string): Promise<void> {
    return this.#run("keep alive lease", lease, async () => {
      const r = await this.#client.call("/v3/lease/keepalive", { ID: lease });
      if (Number(r.TTL ?? 0) <= 0) throw new LeaseGone(lease);
    });
  }

  revokeLease(lease: string): Promise<void> {
    return this.#run("revoke lease", lease, async () => {
      try {
        await this.#client.call("/v3/lease/revoke", { ID: lease });
      } catch (err) {
        if (!(err instanceof EtcdError && err.code === NOT_FOUND)) throw err;
      }
    });
  }

  async close(): Promise<void> {
    this.#client.close();
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending]);
  }

  #run<T>(op: string, key: string, fn: () => Promise<T>): Promise<T> {
    if (this.#client.closed) {
      return Promise.reject(kvError(op, key, this.name, "the store is closed"));
    }
    const p = fn().catch((err) => {
      throw kvError(op, key, this.name, err);
    });
    this.#pending.add(p);
    const forget = () => this.#pending.delete(p);
    p.then(forget, forget);
    return p;
  }

  /** Runs a request that names a lease, turning etcd's "lease not found" into `LeaseGone`. */
  async #leased(lease: string | undefined, fn: () => Promise<Json>): Promise<Json> {
    try {
      return await fn();
    } catch (err) {
      if (lease !== undefined && err instanceof EtcdError && err.code === NOT_FOUND) {
        throw new LeaseGone(lease);
      }
      throw err;
    }
  }
}
