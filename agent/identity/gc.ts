/**
 * The identity garbage collector, run by every agent (compare-and-swap makes them agree): an
 * identity with no `refs/<n>/*` key, and no user on this node, is released once it has been
 * seen unreferenced for the grace period. Releasing deletes the id key (only at the revision
 * that was judged), then its labels index; a reference that appeared meanwhile wins and the id
 * key is put back. It also repairs missing labels index entries of identities in use. It never
 * releases an identity that this node uses.
 */

import type { KvEntry, KvStore } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import type { IdentityAllocator } from "./allocator.ts";
import {
  decodeIdentity,
  decodeNumber,
  encodeNumber,
  hashLabels,
  ID_PREFIX,
  idKey,
  LABELS_PREFIX,
  labelsKey,
  parseIdKey,
  parseRefKey,
  refPrefix,
  REFS_PREFIX,
} from "./keys.ts";

export interface GcOptions {
  store: KvStore;
  allocator: IdentityAllocator;
  graceMs: number;
  intervalMs: number;
  log: Logger;
}

export class IdentityGc {
  #o: GcOptions;
  /** When each identity was first seen without references. */
  #since = new Map<number, number>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #running: Promise<unknown> | undefined;
  #closed = false;

  constructor(opts: GcOptions) {
    this.#o = opts;
  }

  start(): void {
    this.#schedule();
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    await this.#running;
  }

  #schedule(): void {
    if (this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#running = this.runOnce().catch((err) => {
        if (!this.#closed) this.#o.log.warn("identity garbage collection failed", { error: err });
      }).finally(() => {
        this.#running = undefined;
        this.#schedule();
      });
    }, this.#o.intervalMs);
  }

  /** One pass; returns the identities it released. */
  async runOnce(now = Date.now()): Promise<number[]> {
    const { store, allocator } = this.#o;
    const [ids, refs, index] = await Promise.all([
      store.list(ID_PREFIX),
      store.list(REFS_PREFIX),
      store.list(LABELS_PREFIX),
    ]);
    const used = new Set<number>();
    for (const r of refs) {
      const ref = parseRefKey(r.key);
      if (ref !== undefined) used.add(ref.id);
    }
    const indexed = new Set(index.map((e) => decodeNumber(e.value)));
    const released: number[] = [];
    const present = new Set<number>();
    for (const e of ids) {
      const id = parseIdKey(e.key);
      if (id === undefined || this.#closed) continue;
      present.add(id);
      if (used.has(id) || allocator.refCount(id) > 0) {
        this.#since.delete(id);
        if (!indexed.has(id)) await this.#repairIndex(id, e);
        continue;
      }
      const since = this.#since.get(id) ?? now;
      this.#since.set(id, since);
      if (now - since >= this.#o.graceMs && await this.#release(id, e)) released.push(id);
    }
    for (const id of this.#since.keys()) if (!present.has(id)) this.#since.delete(id);
    return released;
  }

  async #release(id: number, e: KvEntry): Promise<boolean> {
    const { store, log } = this.#o;
    if (!await store.compareAndSwap(e.key, e.revision, null)) return false;
    this.#since.delete(id);
    const labels = decodeIdentity(e.value);
    if (labels !== null) {
      const { hex } = await hashLabels(labels);
      const ix = await store.get(labelsKey(hex));
      if (ix !== null && decodeNumber(ix.value) === id) {
        await store.compareAndSwap(ix.key, ix.revision, null);
      }
    }
    // A reference taken while we judged it wins: put the identity back.
    if ((await store.list(refPrefix(id))).length > 0 || this.#o.allocator.refCount(id) > 0) {
      await store.createIfAbsent(idKey(id), e.value);
      if (labels !== null) await this.#repairIndex(id, e);
      return false;
    }
    log.info("released unused identity", { identity: id, labels });
    return true;
  }

  async #repairIndex(id: number, e: KvEntry): Promise<void> {
    const labels = decodeIdentity(e.value);
    if (labels === null) return;
    const { hex } = await hashLabels(labels);
    const r = await this.#o.store.createIfAbsent(labelsKey(hex), encodeNumber(id));
    if (r.created) this.#o.log.info("repaired identity labels index", { identity: id });
  }
}
