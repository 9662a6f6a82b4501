/**
 * The cluster-wide identity allocator: a label set → a number in [min, max] (256–65535), the same
 * on every agent that shares the kvstore. A new label set probes numbers from a hash of its labels
 * and creates the first free `id/<n>` key if absent; agents racing for the same labels probe the
 * same sequence, so they meet on the same key and adopt it. The id key is authoritative; the
 * labels index is a shortcut, repaired when a crash left it missing or stale.
 *
 * It also counts this node's users of each identity and keeps `refs/<n>/<node>` present (with the
 * node lease) exactly while the count is above zero. Releasing an unused identity is the
 * garbage collector's job (`gc.ts`), never this module's.
 */

import type { IdentitySpec } from "@cilia/policy-wasm";
import { type KvStore, PUT_ALL_MAX } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import type { NodeLease } from "../node/lease.ts";
import type { IdentityCache } from "./cache.ts";
import {
  canonicalLabels,
  decodeIdentity,
  decodeNumber,
  encodeIdentity,
  encodeNumber,
  hashLabels,
  idKey,
  labelsKey,
  refKey,
  sameLabels,
} from "./keys.ts";

/** Every number of the range is taken. */
export class IdentityExhaustedError extends Error {
  override name = "IdentityExhaustedError";
}

export interface AllocatorOptions {
  store: KvStore;
  cache: IdentityCache;
  lease: NodeLease;
  node: string;
  range: { min: number; max: number };
  log: Logger;
}

const enc = new TextEncoder();

export class IdentityAllocator {
  #o: AllocatorOptions;
  #refs = new Map<number, number>();
  /** Identities whose reference key the next flush makes match the count, with their waiters. */
  #dirty = new Map<number, PromiseWithResolvers<void>[]>();
  /** The flush running, if any: it writes batches until nothing is dirty. */
  #flushing: Promise<void> | undefined;

  constructor(opts: AllocatorOptions) {
    this.#o = opts;
    opts.cache.pin((id) => (this.#refs.get(id) ?? 0) > 0, (id, labels) => {
      opts.log.warn("an identity in use here was deleted: recreating it", { identity: id });
      this.recreate(id, labels).catch((err) =>
        opts.log.error("cannot recreate identity", { identity: id, error: err })
      );
    });
    opts.lease.onRenewed(() => this.#reputRefs());
  }

  get range(): { min: number; max: number } {
    return this.#o.range;
  }

  /** How many users this node has of `id`. */
  refCount(id: number): number {
    return this.#refs.get(id) ?? 0;
  }

  /** Identities this node uses. */
  referenced(): number[] {
    return [...this.#refs.keys()].sort((a, b) => a - b);
  }

  /** The identity of `labels`, allocated if new, with one more reference from this node. */
  async acquire(labels: readonly string[]): Promise<IdentitySpec> {
    const sorted = canonicalLabels(labels);
    for (let attempt = 0; attempt < 8; attempt++) {
      const cached = attempt === 0 ? this.#o.cache.lookup(sorted) : undefined;
      const id = cached ?? await this.#resolve(sorted);
      await this.#addRef(id);
      // The reference is in place: now the id key must still hold these labels. If the collector
      // released it in between, drop the reference and allocate again.
      const e = await this.#o.store.get(idKey(id));
      if (e !== null && sameLabels(decodeIdentity(e.value), sorted)) {
        await this.#o.cache.learn(id, sorted);
        return { id, labels: sorted };
      }
      await this.release(id);
    }
    throw new Error(
      `Cannot allocate an identity for labels ${JSON.stringify(sorted)}: ` +
        `it was released again on each of 8 attempts`,
    );
  }

  /** Drops one reference from this node. */
  async release(id: number): Promise<void> {
    const n = (this.#refs.get(id) ?? 0) - 1;
    if (n > 0) this.#refs.set(id, n);
    else this.#refs.delete(id);
    await this.#syncRef(id);
  }

  /** Puts the id key back (same number and labels) after it vanished while in use here. */
  async recreate(id: number, labels: string[]): Promise<void> {
    const r = await this.#o.store.createIfAbsent(idKey(id), encodeIdentity(labels));
    if (!r.created && !sameLabels(decodeIdentity(r.entry.value), labels)) {
      this.#o.log.error("identity number was reused for other labels", { identity: id });
      return;
    }
    const { hex } = await hashLabels(labels);
    await this.#index(hex, id, labels);
  }

  /** Finds or allocates the number of a label set (no reference taken). */
  async #resolve(labels: string[]): Promise<number> {
    const { store } = this.#o;
    const { hex, start } = await hashLabels(labels);
    const ix = await store.get(labelsKey(hex));
    const indexed = ix === null ? undefined : decodeNumber(ix.value);
    if (indexed !== undefined) {
      const e = await store.get(idKey(indexed));
      if (e !== null && sameLabels(decodeIdentity(e.value), labels)) return indexed;
    }
    const { min, max } = this.#o.range;
    const size = max - min + 1;
    if (this.#o.cache.size >= size) throw this.#exhausted(labels);
    if (ix === null) {
      // Labels nobody indexed (the usual new label set): the id key and its index in one write
      // when the first number to probe is free; else key by key below, which also meets an
      // agent that won this race with the same labels.
      const n = min + (start % size);
      const both = [
        { key: idKey(n), value: encodeIdentity(labels) },
        { key: labelsKey(hex), value: encodeNumber(n) },
      ];
      if (await store.createAll(both)) {
        this.#o.log.info("allocated identity", { identity: n, labels });
        return n;
      }
    }
    for (let i = 0; i < size; i++) {
      const n = min + ((start + i) % size);
      const r = await store.createIfAbsent(idKey(n), encodeIdentity(labels));
      if (r.created) {
        this.#o.log.info("allocated identity", { identity: n, labels });
        return await this.#index(hex, n, labels);
      }
      if (sameLabels(decodeIdentity(r.entry.value), labels)) {
        return await this.#index(hex, n, labels);
      }
    }
    throw this.#exhausted(labels);
  }

  #exhausted(labels: string[]): IdentityExhaustedError {
    const { min, max } = this.#o.range;
    return new IdentityExhaustedError(
      `Cannot allocate an identity for labels ${JSON.stringify(labels)}: all ${
        max - min + 1
      } identities ${min}-${max} are in use`,
    );
  }

  /**
   * Points the labels index at `n` unless it already points at a live identity with the same
   * labels; returns the number that wins (the indexed one, if a racing agent got there first).
   */
  async #index(hex: string, n: number, labels: string[]): Promise<number> {
    const { store } = this.#o;
    for (let attempt = 0; attempt < 4; attempt++) {
      const r = await store.createIfAbsent(labelsKey(hex), encodeNumber(n));
      if (r.created) return n;
      const other = decodeNumber(r.entry.value);
      if (other === n) return n;
      if (other !== undefined) {
        const e = await store.get(idKey(other));
        if (e !== null && sameLabels(decodeIdentity(e.value), labels)) return other;
      }
      if (await store.compareAndSwap(labelsKey(hex), r.entry.revision, encodeNumber(n))) return n;
    }
    return n;
  }

  async #addRef(id: number): Promise<void> {
    this.#refs.set(id, (this.#refs.get(id) ?? 0) + 1);
    await this.#syncRef(id);
  }

  /**
   * Makes the reference key match the count (present iff > 0), in the next flush. Flushes run
   * one after another and read the count when they run, so the last write always reflects the
   * latest count; every reference that became dirty while one flush wrote goes into the next
   * (group commit: a restore's or a burst of ADDs' references take one write per batch).
   */
  #syncRef(id: number): Promise<void> {
    const waiter = Promise.withResolvers<void>();
    const waiters = this.#dirty.get(id);
    if (waiters) waiters.push(waiter);
    else this.#dirty.set(id, [waiter]);
    this.#flushing ??= this.#flush();
    return waiter.promise;
  }

  async #flush(): Promise<void> {
    await null; // let the caller's synchronous siblings join this batch
    while (this.#dirty.size > 0) {
      const batch = this.#dirty;
      this.#dirty = new Map();
      const failed = await this.#writeRefs([...batch.keys()]).catch((err) =>
        new Map([...batch.keys()].map((id) => [id, err]))
      );
      for (const [id, waiters] of batch) {
        const err = failed.get(id);
        for (const w of waiters) err === undefined ? w.resolve() : w.reject(err);
      }
    }
    this.#flushing = undefined; // in the same turn as the last look at #dirty
  }

  /**
   * Puts the reference keys of `ids` that are in use, `PUT_ALL_MAX` a write (a batch that fails
   * is tried again key by key, so one bad key does not fail the others), and deletes the others.
   * Returns the error of each id that could not be written.
   */
  async #writeRefs(ids: number[]): Promise<Map<number, unknown>> {
    const { store, node } = this.#o;
    const failed = new Map<number, unknown>();
    const value = enc.encode(JSON.stringify({ node }));
    const opts = { lease: this.#o.lease.id };
    const used = ids.filter((id) => (this.#refs.get(id) ?? 0) > 0);
    const unused = ids.filter((id) => (this.#refs.get(id) ?? 0) === 0);
    const one = (id: number, write: Promise<unknown>) =>
      write.catch((err) => failed.set(id, err)).then(() => {});
    const chunks: number[][] = [];
    for (let i = 0; i < used.length; i += PUT_ALL_MAX) chunks.push(used.slice(i, i + PUT_ALL_MAX));
    await Promise.all([
      ...chunks.map(async (chunk) => {
        const entries = chunk.map((id) => ({ key: refKey(id, node), value }));
        try {
          await (chunk.length === 1
            ? store.put(entries[0]!.key, value, opts)
            : store.putAll(entries, opts));
        } catch (err) {
          if (chunk.length === 1) return void failed.set(chunk[0]!, err);
          this.#o.log.warn(
            "cannot write identity references in one batch: writing them one by one",
            {
              references: chunk.length,
              error: err,
            },
          );
          await Promise.all(chunk.map((id) => one(id, store.put(refKey(id, node), value, opts))));
        }
      }),
      ...unused.map((id) => one(id, store.delete(refKey(id, node)))),
    ]);
    return failed;
  }

  async #reputRefs(): Promise<void> {
    await Promise.all(this.referenced().map((id) => this.#syncRef(id)));
  }

  /** Waits for reference writes in flight (before the store closes). */
  async settle(): Promise<void> {
    while (this.#flushing) await this.#flushing;
  }
}
