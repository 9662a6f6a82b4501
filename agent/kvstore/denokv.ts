/**
 * The Deno KV backend: the embedded default, a sqlite file that several agent processes may
 * open at once. Changes are totally ordered by a sequence number kept with a change log in the
 * same file (see `_denokv_records.ts`), so a watch reads the log from its cursor; it wakes on
 * this store's own writes and polls for other processes' (Deno KV's `watch()` does not see
 * them). Every open store sweeps expired leases and old log records. This module must not keep
 * a timer or read running after `close()`, and must never drop an update on "database is
 * locked": it retries.
 */

import {
  type KvEntry,
  type KvStore,
  PUT_ALL_MAX,
  type PutOptions,
  type WatchEvent,
  type WatchOptions,
} from "./kvstore.ts";
import { kvError, ValueTooLargeError } from "./errors.ts";

/**
 * Deno KV holds at most 65,536 bytes per value, and each put also writes the value into its
 * change record with the key: this leaves room for keys of up to ~400 bytes.
 */
export const DENOKV_MAX_VALUE_BYTES = 65_024;
/** What one commit of `putAll` may write, keys and values (Deno KV allows 800 KiB, and more). */
const DENOKV_MAX_COMMIT_BYTES = 768 * 1024;
import { isLocked, retrying } from "./_retry.ts";
import {
  createAll,
  type LoggedChange,
  mutate,
  putAll,
  readLog,
  readSeq,
  type Stored,
  toEntry,
  trimLog,
} from "./_denokv_records.ts";
import { distinctKeys } from "./errors.ts";
import { grantLease, keepAlive, revokeExpired, revokeLease } from "./_denokv_leases.ts";

export interface DenoKvOptions {
  /** How often this store looks for expired leases and old change records. Default 500 ms. */
  sweepIntervalMs?: number;
  /** How often a waiting watch looks for changes made by other processes. Default 100 ms. */
  pollIntervalMs?: number;
  /** How long change records are kept for resuming watches. Default 5 minutes. */
  logRetentionMs?: number;
}

export async function openDenoKvStore(path: string, opts: DenoKvOptions = {}): Promise<KvStore> {
  const name = `Deno KV at ${path}`;
  try {
    // Two processes creating the same fresh file at once may see "database is locked".
    const kv = await retrying(() => Deno.openKv(path), 200);
    return new DenoKvStore(kv, name, opts);
  } catch (err) {
    throw new Error(`Cannot open ${name}: ${err instanceof Error ? err.message : err}`, {
      cause: err,
    });
  }
}

class DenoKvStore implements KvStore {
  readonly name: string;
  readonly maxValueBytes = DENOKV_MAX_VALUE_BYTES;
  #kv: Deno.Kv;
  #opts: Required<DenoKvOptions>;
  #closed = false;
  #pending = new Set<Promise<unknown>>();
  #waiters = new Set<() => void>();
  #sweepTimer: ReturnType<typeof setTimeout> | undefined;
  /** The next poll for other processes' changes (#changed), while a watch waits. */
  #pollTimer: ReturnType<typeof setTimeout> | undefined;
  #mutations: Promise<unknown> = Promise.resolve();
  /** Change-log reads in flight by cursor, shared by the watches at that position (#readLog). */
  #reads = new Map<number, { wakes: number; batch: Promise<LoggedChange[]> }>();
  /** Wake-ups of the watches so far: a read started before the latest may miss its change. */
  #wakes = 0;

  constructor(kv: Deno.Kv, name: string, opts: DenoKvOptions) {
    this.#kv = kv;
    this.name = name;
    this.#opts = {
      sweepIntervalMs: opts.sweepIntervalMs ?? 500,
      pollIntervalMs: opts.pollIntervalMs ?? 100,
      logRetentionMs: opts.logRetentionMs ?? 5 * 60_000,
    };
    this.#scheduleSweep();
  }

  get(key: string): Promise<KvEntry | null> {
    return this.#run("get", key, async () => {
      const e = await this.#kv.get<Stored>(["d", key]);
      return e.value === null ? null : toEntry(key, e.value, e.versionstamp);
    });
  }

  put(key: string, value: Uint8Array, opts: PutOptions = {}): Promise<string> {
    if (value.length > this.maxValueBytes) {
      return Promise.reject(
        new ValueTooLargeError(
          value.length,
          this.maxValueBytes,
          `Cannot put "${key}" in ${this.name}: the value is ${value.length} bytes, ` +
            `the limit is ${this.maxValueBytes}`,
        ),
      );
    }
    return this.#run("put", key, async () => {
      const r = await this.#mutate(key, () => ({ value, lease: opts.lease }));
      return r.revision!;
    });
  }

  delete(key: string): Promise<boolean> {
    return this.#run("delete", key, async () => {
      const r = await this.#mutate(key, (cur) => cur === null ? null : { value: null });
      return r.done;
    });
  }

  createIfAbsent(
    key: string,
    value: Uint8Array,
    opts: PutOptions = {},
  ): Promise<{ created: boolean; entry: KvEntry }> {
    return this.#run("create", key, async () => {
      const r = await this.#mutate(
        key,
        (cur) => cur === null ? { value, lease: opts.lease } : null,
      );
      if (!r.done) return { created: false, entry: r.current! };
      const stored: Stored = opts.lease === undefined ? { v: value } : { v: value, l: opts.lease };
      return { created: true, entry: toEntry(key, stored, r.revision!) };
    });
  }

  /** The error for the first entry whose value is over the limit, if any. */
  #tooLarge(
    entries: readonly { key: string; value: Uint8Array }[],
    verb: string,
  ): ValueTooLargeError | undefined {
    const big = entries.find((e) => e.value.length > this.maxValueBytes);
    if (!big) return undefined;
    return new ValueTooLargeError(
      big.value.length,
      this.maxValueBytes,
      `Cannot ${verb} "${big.key}" in ${this.name}: the value is ${big.value.length} bytes, ` +
        `the limit is ${this.maxValueBytes}`,
    );
  }

  createAll(entries: readonly { key: string; value: Uint8Array }[]): Promise<boolean> {
    const keys = entries.map((e) => e.key).join(", ");
    const big = this.#tooLarge(entries, "create");
    if (big) return Promise.reject(big);
    return this.#run("create", keys, async () => {
      distinctKeys(entries);
      if (entries.length === 0) return true;
      return (await this.#exclusive(() => createAll(this.#kv, entries))).done;
    });
  }

  putAll(
    entries: readonly { key: string; value: Uint8Array }[],
    opts: PutOptions = {},
  ): Promise<void> {
    const keys = entries.map((e) => e.key).join(", ");
    const big = this.#tooLarge(entries, "put");
    if (big) return Promise.reject(big);
    return this.#run("put", keys, async () => {
      distinctKeys(entries);
      if (entries.length === 0) return;
      // Each value is written twice (the data and its change record) in one commit.
      const bytes = entries.reduce((n, e) => n + 2 * (e.value.length + e.key.length), 0);
      if (bytes > DENOKV_MAX_COMMIT_BYTES) {
        throw new RangeError(
          `expected at most ${DENOKV_MAX_COMMIT_BYTES} bytes in one write, got ${bytes}`,
        );
      }
      await this.#exclusive(async () => {
        await putAll(this.#kv, entries, opts.lease, PUT_ALL_MAX);
        return { done: true };
      });
    });
  }

  compareAndSwap(
    key: string,
    expected: string | null,
    value: Uint8Array | null,
    opts: PutOptions = {},
  ): Promise<boolean> {
    return this.#run("compare-and-swap", key, async () => {
      const r = await this.#mutate(key, (cur, revision) => {
        const matches = expected === null ? cur === null : revision === expected;
        return matches ? { value, lease: opts.lease } : null;
      });
      return r.done;
    });
  }

  list(prefix: string): Promise<KvEntry[]> {
    return this.#run("list", prefix, async () => {
      const out: KvEntry[] = [];
      for await (const e of this.#kv.list<Stored>({ prefix: ["d"], start: ["d", prefix] })) {
        const key = e.key[1] as string;
        if (!key.startsWith(prefix)) break; // keys with the prefix are contiguous
        out.push(toEntry(key, e.value, e.versionstamp));
      }
      return out;
    });
  }

  cursor(): Promise<string> {
    return this.#run("read cursor", "", async () => String(await readSeq(this.#kv)));
  }

  async *watch(prefix: string, opts: WatchOptions = {}): AsyncIterable<WatchEvent> {
    const { signal } = opts;
    let cursor = Number(opts.after ?? 0);
    if (!Number.isSafeInteger(cursor) || cursor < 0) {
      throw new TypeError(
        `Cannot watch "${prefix}" in ${this.name}: expected a cursor from this store, got "${opts.after}"`,
      );
    }
    if (opts.after === undefined) {
      cursor = Number(await this.#whileOpen("watch", prefix, () => readSeq(this.#kv)));
    }
    while (!this.#closed && !signal?.aborted) {
      const batch = await this.#whileOpen("watch", prefix, () => this.#readLog(cursor));
      if (batch === undefined) return;
      if (batch.length === 0) {
        await this.#changed(signal);
        continue;
      }
      for (const { seq, change, revision } of batch) {
        cursor = seq;
        if (!change.k.startsWith(prefix)) continue;
        const c = String(seq);
        if (change.v === null) yield { type: "delete", key: change.k, revision, cursor: c };
        else {
          // The records are shared with the other watches (#readLog): each gets its own bytes.
          const v = change.v.slice();
          const stored: Stored = change.l === undefined ? { v } : { v, l: change.l };
          yield { type: "put", entry: toEntry(change.k, stored, revision), cursor: c };
        }
        if (this.#closed || signal?.aborted) return;
      }
    }
  }

  grantLease(ttlSeconds: number): Promise<string> {
    return this.#run("grant lease for", `${ttlSeconds} s`, () => grantLease(this.#kv, ttlSeconds));
  }

  keepAlive(lease: string): Promise<void> {
    return this.#run("keep alive lease", lease, () => keepAlive(this.#kv, lease));
  }

  revokeLease(lease: string): Promise<void> {
    return this.#run("revoke lease", lease, async () => {
      await revokeLease(this.#kv, lease);
      this.#wake();
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#sweepTimer);
    clearTimeout(this.#pollTimer);
    this.#wake();
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending]);
    this.#kv.close();
  }

  /** Runs one public operation: refuses after close, lets close wait for it, names failures. */
  #run<T>(op: string, key: string, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(kvError(op, key, this.name, "the store is closed"));
    const p = fn().catch((err) => {
      throw kvError(op, key, this.name, err);
    });
    this.#pending.add(p);
    const forget = () => this.#pending.delete(p);
    p.then(forget, forget);
    return p;
  }

  /** Like `#run`, but `undefined` once the store is closed, so that a watch ends quietly. */
  async #whileOpen<T>(op: string, key: string, fn: () => Promise<T>): Promise<T | undefined> {
    try {
      return await this.#run(op, key, fn);
    } catch (err) {
      if (this.#closed) return undefined;
      throw err;
    }
  }

  /**
   * One mutation of this process at a time: every commit checks the store's sequence, so
   * concurrent ones (three CNI ADDs in flight) would mostly lose the race, read again and retry.
   * Other processes' commits can still win; `mutate` retries those.
   */
  #mutate(key: string, decide: Parameters<typeof mutate>[2]) {
    return this.#exclusive(() => mutate(this.#kv, key, decide));
  }

  /** Runs one commit of this process at a time (see `#mutate`); wakes the watches if it wrote. */
  #exclusive<T extends { done: boolean }>(fn: () => Promise<T>): Promise<T> {
    const run = this.#mutations.then(async () => {
      const result = await fn();
      if (result.done) this.#wake();
      return result;
    });
    this.#mutations = run.catch(() => {});
    return run;
  }

  #wake(): void {
    this.#wakes++;
    for (const wake of [...this.#waiters]) wake();
  }

  /**
   * The change records after `cursor`. A write wakes every watch of the store (identities,
   * policies, nodes, endpoints, services: one each), which then stand at the same position: one
   * read serves them all instead of one read, and one decoding of the records, each (a CNI ADD
   * makes four writes). A read is shared only while it is in flight and no wake-up came after it
   * started, so a woken watch always reads after the change that woke it.
   */
  #readLog(cursor: number): Promise<LoggedChange[]> {
    const shared = this.#reads.get(cursor);
    if (shared !== undefined && shared.wakes === this.#wakes) return shared.batch;
    const read = { wakes: this.#wakes, batch: readLog(this.#kv, cursor, this.name) };
    this.#reads.set(cursor, read);
    const forget = () => {
      if (this.#reads.get(cursor) === read) this.#reads.delete(cursor);
    };
    read.batch.then(forget, forget);
    return read.batch;
  }

  /**
   * Resolves on a local change, at the next poll (other processes' changes), abort or close. One
   * poll timer wakes every waiting watch at once, so they read the log together (#readLog): one
   * read per poll interval, not one per watch (five watches polling apart, each reading the log
   * twice, cost an idle agent ~30 ms of CPU a second).
   */
  #changed(signal: AbortSignal | undefined): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        signal?.removeEventListener("abort", done);
        this.#waiters.delete(done);
        resolve();
      };
      signal?.addEventListener("abort", done);
      this.#waiters.add(done);
      this.#pollTimer ??= setTimeout(() => {
        this.#pollTimer = undefined;
        this.#wake();
      }, this.#opts.pollIntervalMs);
    });
  }

  #scheduleSweep(): void {
    if (this.#closed) return;
    this.#sweepTimer = setTimeout(() => {
      if (this.#closed) return;
      const p = this.#sweep().catch((err) => {
        // The next sweep tries again; a store that is closing may see its file go away.
        if (!this.#closed && !isLocked(err)) console.error(kvError("sweep", "", this.name, err));
      }).finally(() => {
        this.#pending.delete(p);
        this.#scheduleSweep();
      });
      this.#pending.add(p);
    }, this.#opts.sweepIntervalMs);
  }

  /** Revokes expired leases and trims change records older than the retention. */
  async #sweep(): Promise<void> {
    if (await revokeExpired(this.#kv, () => this.#closed) > 0) this.#wake();
    if (!this.#closed) await trimLog(this.#kv, this.#opts.logRetentionMs);
  }
}
