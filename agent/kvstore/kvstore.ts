/**
 * The agent's kvstore: one small interface over cluster state (identities, IPAM, policies,
 * endpoints, node records) and `openKvStore()`, which picks a backend from a URL: Deno KV (the
 * embedded default, a sqlite file several agents may share) or etcd v3 (for clusters). Keys are
 * `/`-separated strings such as `cilia/identities/256`; values are bytes (callers put JSON).
 * This module knows nothing of what callers store and must not grow backend-specific options
 * beyond what `openKvStore()` passes through.
 */

import { openDenoKvStore } from "./denokv.ts";
import type { DenoKvOptions } from "./denokv.ts";
import { openEtcdStore } from "./etcd.ts";

export { LeaseExpiredError, ValueTooLargeError, WatchCompactedError } from "./errors.ts";

/** One key as stored. `revision` is backend-specific and opaque: compare it by equality only. */
export interface KvEntry {
  key: string;
  value: Uint8Array;
  revision: string;
  lease?: string;
}

/** A change seen by `watch()`. `cursor` resumes the same watch just after this event. */
export type WatchEvent =
  & ({ type: "put"; entry: KvEntry } | { type: "delete"; key: string; revision: string })
  & { cursor: string };

export interface PutOptions {
  /** Attach the key to a lease: it is deleted when the lease expires or is revoked. */
  lease?: string;
}

export interface WatchOptions {
  /** Yield every change after this cursor (from an event or `cursor()`), old ones included. */
  after?: string;
  /** Ends the watch; the iterator then returns without error. */
  signal?: AbortSignal;
}

export interface KvStore {
  /** `"denokv"` or `"etcd"`, and where it is, for messages: `etcd at 127.0.0.1:2379`. */
  readonly name: string;
  /** The largest value `put` accepts, in bytes, when the backend has a limit. */
  readonly maxValueBytes?: number;
  get(key: string): Promise<KvEntry | null>;
  /** Returns the new revision. */
  put(key: string, value: Uint8Array, opts?: PutOptions): Promise<string>;
  /** Returns whether the key existed. */
  delete(key: string): Promise<boolean>;
  /** Creates the key unless it exists; `entry` is the new entry or the one that won. */
  createIfAbsent(
    key: string,
    value: Uint8Array,
    opts?: PutOptions,
  ): Promise<{ created: boolean; entry: KvEntry }>;
  /**
   * Creates every key of `entries` (distinct keys) in one atomic write if none of them exists,
   * and none of them otherwise; returns whether it wrote. One round trip and one commit where
   * several `createIfAbsent` calls would each take theirs.
   */
  createAll(entries: readonly { key: string; value: Uint8Array }[]): Promise<boolean>;
  /**
   * Puts every entry of `entries` (distinct keys, at most `PUT_ALL_MAX`), each with `opts.lease`
   * when given, in one atomic write: all or none. One round trip and one commit where as many
   * `put` calls would each take theirs. For small values: a backend may cap a write's bytes
   * (Deno KV: 768 KiB of keys and values, each counted twice).
   */
  putAll(entries: readonly { key: string; value: Uint8Array }[], opts?: PutOptions): Promise<void>;
  /**
   * Writes `value` (or deletes, if `null`) only if the key's revision is still `expected`
   * (`null`: the key must be absent). Returns whether it wrote.
   */
  compareAndSwap(
    key: string,
    expected: string | null,
    value: Uint8Array | null,
    opts?: PutOptions,
  ): Promise<boolean>;
  /** Entries whose key starts with `prefix` (a plain string prefix), sorted by key. */
  list(prefix: string): Promise<KvEntry[]>;
  /**
   * The store's current position. Take it before `list()` and pass it as `after` to `watch()`
   * to list and then watch without missing a change (a few may be seen twice).
   */
  cursor(): Promise<string>;
  /**
   * Changes to keys starting with `prefix`, in commit order. Without `after` it yields only
   * changes made after the watch started. Throws `WatchCompactedError` if `after` is older than
   * the history the store keeps. Reconnects by itself; ends on `signal` or `close()`.
   */
  watch(prefix: string, opts?: WatchOptions): AsyncIterable<WatchEvent>;
  /** Returns a lease id. Keys put with it are deleted once it is not kept alive for the TTL. */
  grantLease(ttlSeconds: number): Promise<string>;
  /** Extends a lease by its TTL. Throws `LeaseExpiredError` if it is gone. */
  keepAlive(lease: string): Promise<void>;
  /** Deletes the lease and its keys. Revoking a lease that is already gone is not an error. */
  revokeLease(lease: string): Promise<void>;
  /** Ends every watch and timer and releases the connection or file. */
  close(): Promise<void>;
}

/** Keys one `putAll()` writes at most (etcd's default `--max-txn-ops`). */
export const PUT_ALL_MAX = 128;

export interface OpenKvStoreOptions {
  /** Deno KV only: timings, made small by tests. */
  denokv?: DenoKvOptions;
}

/**
 * Opens a store from a URL: `denokv:///abs/path/kv.sqlite`, `denokv://:memory:`, or
 * `etcd://127.0.0.1:2379[,127.0.0.1:2380]` (the next endpoint is tried when one is unreachable).
 */
export async function openKvStore(
  url: string,
  opts: OpenKvStoreOptions = {},
): Promise<KvStore> {
  if (url.startsWith("denokv://")) {
    const path = url.slice("denokv://".length);
    if (path !== ":memory:" && !path.startsWith("/")) {
      throw new TypeError(
        `Cannot open kvstore "${url}": expected an absolute path ("denokv:///abs/kv.sqlite") or "denokv://:memory:"`,
      );
    }
    return await openDenoKvStore(path, opts.denokv);
  }
  if (url.startsWith("etcd://")) {
    const endpoints = url.slice("etcd://".length).split(",").filter((e) => e !== "");
    const bad = endpoints.find((e) => !/^[^/:]+:\d+$/.test(e));
    if (endpoints.length === 0 || bad !== undefined) {
      throw new TypeError(
        `Cannot open kvstore "${url}": expected "etcd://host:port[,host:port...]"`,
      );
    }
    return await openEtcdStore(endpoints);
  }
  throw new TypeError(
    `Cannot open kvstore "${url}": expected a URL starting with "denokv://" or "etcd://"`,
  );
}
