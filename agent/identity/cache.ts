/**
 * This agent's view of the cluster's global identities: every `cilia/identities/id/<n>` key,
 * listed and then watched, with lookups both ways, and change notifications (identities that
 * became known, identities that went away) for the policy side. Identities this node uses are
 * pinned: their disappearance is reported to `onLostPinned` (the allocator recreates them)
 * instead of as a removal. No allocation logic here.
 */

import type { IdentitySpec } from "@cilia/policy-wasm";
import type { KvEntry, KvStore, WatchEvent } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import { type PrefixWatch, watchPrefix } from "../_watch.ts";
import { decodeIdentity, ID_PREFIX, parseIdKey } from "./keys.ts";

export interface IdentityChange {
  added: IdentitySpec[];
  removed: number[];
}

export type IdentityListener = (change: IdentityChange) => Promise<void>;

export class IdentityCache {
  #byId = new Map<number, string[]>();
  #byLabels = new Map<string, number>();
  #listeners: IdentityListener[] = [];
  #isPinned: (id: number) => boolean = () => false;
  #onLostPinned: (id: number, labels: string[]) => void = () => {};

  /** `fn` hears every change, in order; the watch waits for it. */
  onChange(fn: IdentityListener): void {
    this.#listeners.push(fn);
  }

  /** Set by the allocator: which identities this node uses, and what to do when one vanishes. */
  pin(isPinned: (id: number) => boolean, onLost: (id: number, labels: string[]) => void): void {
    this.#isPinned = isPinned;
    this.#onLostPinned = onLost;
  }

  get size(): number {
    return this.#byId.size;
  }

  get(id: number): string[] | undefined {
    return this.#byId.get(id);
  }

  lookup(labels: readonly string[]): number | undefined {
    return this.#byLabels.get(JSON.stringify(labels));
  }

  all(): IdentitySpec[] {
    return [...this.#byId].map(([id, labels]) => ({ id, labels })).sort((a, b) => a.id - b.id);
  }

  /** Lists and watches the identities; `ready` settles after the first listing was applied. */
  follow(store: KvStore, opts: { signal: AbortSignal; log: Logger }): PrefixWatch {
    return watchPrefix(store, ID_PREFIX, {
      snapshot: (entries) => this.#snapshot(entries),
      event: (e) => this.#event(e),
    }, opts);
  }

  /** Records an identity this agent has just created or confirmed, ahead of the watch. */
  learn(id: number, labels: string[]): Promise<void> {
    const change = this.#set(id, labels);
    return change ? this.#emit(change) : Promise.resolve();
  }

  #set(id: number, labels: string[]): IdentityChange | undefined {
    const old = this.#byId.get(id);
    if (old !== undefined && JSON.stringify(old) === JSON.stringify(labels)) return undefined;
    if (old !== undefined) this.#byLabels.delete(JSON.stringify(old));
    this.#byId.set(id, labels);
    this.#byLabels.set(JSON.stringify(labels), id);
    return { added: [{ id, labels }], removed: old !== undefined ? [id] : [] };
  }

  #delete(id: number): boolean {
    const old = this.#byId.get(id);
    if (old === undefined) return false;
    if (this.#isPinned(id)) {
      this.#onLostPinned(id, old);
      return false;
    }
    this.#byId.delete(id);
    if (this.#byLabels.get(JSON.stringify(old)) === id) this.#byLabels.delete(JSON.stringify(old));
    return true;
  }

  async #snapshot(entries: KvEntry[]): Promise<void> {
    const seen = new Set<number>();
    const change: IdentityChange = { added: [], removed: [] };
    for (const e of entries) {
      const id = parseIdKey(e.key);
      const labels = decodeIdentity(e.value);
      if (id === undefined || labels === null) continue;
      seen.add(id);
      const c = this.#set(id, labels);
      if (c) {
        change.added.push(...c.added);
        change.removed.push(...c.removed);
      }
    }
    for (const id of [...this.#byId.keys()]) {
      if (!seen.has(id) && this.#delete(id)) change.removed.push(id);
    }
    if (change.added.length > 0 || change.removed.length > 0) await this.#emit(change);
  }

  async #event(e: WatchEvent): Promise<void> {
    const key = e.type === "put" ? e.entry.key : e.key;
    const id = parseIdKey(key);
    if (id === undefined) return;
    if (e.type === "delete") {
      if (this.#delete(id)) await this.#emit({ added: [], removed: [id] });
      return;
    }
    const labels = decodeIdentity(e.entry.value);
    if (labels === null) return;
    const c = this.#set(id, labels);
    if (c) await this.#emit(c);
  }

  async #emit(change: IdentityChange): Promise<void> {
    for (const fn of this.#listeners) await fn(change);
  }
}
