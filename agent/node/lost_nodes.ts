/**
 * Nodes whose record went away (their lease expired, or a relisting no longer had them) and
 * that this node still serves for a grace period: their endpoints' ipcache entries and routes to
 * their pod CIDRs stay until the period ends, so a node that comes back in time (an agent
 * restart longer than the lease TTL, a short partition from etcd) loses nothing and its
 * connections go on. It only keeps time; discovery.ts decides what the entries are. A period of
 * 0 forgets a node at once.
 */

import type { NodeRecord } from "./registry.ts";

export interface LostNode<T extends NodeRecord> {
  node: T;
  /** When its record went away. */
  since: number;
  timer: ReturnType<typeof setTimeout>;
}

export class LostNodes<T extends NodeRecord> {
  #graceMs: number;
  #expired: (node: T) => void;
  #lost = new Map<string, LostNode<T>>();

  /** `expired(node)` runs when a node stayed away for the whole period. */
  constructor(graceMs: number, expired: (node: T) => void) {
    this.#graceMs = graceMs;
    this.#expired = expired;
  }

  get graceMs(): number {
    return this.#graceMs;
  }

  /** Starts the period of a node whose record went away; false when it is forgotten at once. */
  lose(key: string, node: T): boolean {
    if (this.#graceMs <= 0) return false;
    this.back(key);
    const timer = setTimeout(() => {
      this.#lost.delete(key);
      this.#expired(node);
    }, this.#graceMs);
    this.#lost.set(key, { node, since: Date.now(), timer });
    return true;
  }

  /** The node's record is back: its period ends without removing anything. */
  back(key: string): LostNode<T> | undefined {
    const l = this.#lost.get(key);
    if (l === undefined) return undefined;
    clearTimeout(l.timer);
    this.#lost.delete(key);
    return l;
  }

  has(key: string): boolean {
    return this.#lost.has(key);
  }

  values(): LostNode<T>[] {
    return [...this.#lost.values()];
  }

  /** Milliseconds left of a lost node's period. */
  remainingMs(l: LostNode<T>): number {
    return Math.max(0, l.since + this.#graceMs - Date.now());
  }

  close(): void {
    for (const l of this.#lost.values()) clearTimeout(l.timer);
    this.#lost.clear();
  }
}
