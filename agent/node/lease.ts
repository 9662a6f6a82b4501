/**
 * This node's lease in the kvstore: granted at start, kept alive every third of its TTL, and
 * granted anew when the store says it is gone (a long pause, an etcd restart); owners of leased
 * keys (identity references, the node record) register `onRenewed` to put them again. Closing
 * stops the keep-alive but does not revoke: a restarted agent takes over before the TTL ends,
 * and a crashed one's keys expire by themselves.
 */

import type { KvStore } from "../kvstore/kvstore.ts";
import { LeaseExpiredError } from "../kvstore/errors.ts";
import type { Logger } from "../log.ts";

export class NodeLease {
  #store: KvStore;
  #ttl: number;
  #log: Logger;
  #id: string;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #inflight: Promise<void> | undefined;
  #refreshing: Promise<void> | undefined;
  #renewed: ((lease: string) => Promise<void>)[] = [];

  private constructor(store: KvStore, ttl: number, log: Logger, id: string) {
    this.#store = store;
    this.#ttl = ttl;
    this.#log = log;
    this.#id = id;
  }

  static async grant(store: KvStore, ttlSeconds: number, log: Logger): Promise<NodeLease> {
    const id = await store.grantLease(ttlSeconds);
    const lease = new NodeLease(store, ttlSeconds, log, id);
    lease.#schedule();
    return lease;
  }

  get id(): string {
    return this.#id;
  }

  /** `fn(lease)` runs after a new lease replaced an expired one. */
  onRenewed(fn: (lease: string) => Promise<void>): void {
    this.#renewed.push(fn);
  }

  /**
   * Keeps the lease alive now (and grants a new one if it expired). Calls at once share one
   * refresh, so a lapsed lease is replaced once: two replacements would leave the keys put
   * with the first on a lease that nobody keeps alive.
   */
  refresh(): Promise<void> {
    return this.#refreshing ??= this.#refresh().finally(() => this.#refreshing = undefined);
  }

  async #refresh(): Promise<void> {
    try {
      await this.#store.keepAlive(this.#id);
    } catch (err) {
      if (!(err instanceof LeaseExpiredError) || this.#closed) throw err;
      const old = this.#id;
      this.#id = await this.#store.grantLease(this.#ttl);
      this.#log.warn("node lease expired: granted a new one", { old, lease: this.#id });
      for (const fn of this.#renewed) await fn(this.#id);
    }
  }

  #schedule(): void {
    if (this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#inflight = this.refresh().catch((err) => {
        if (!this.#closed) this.#log.error("cannot keep the node lease alive", { error: err });
      }).finally(() => {
        this.#inflight = undefined;
        this.#schedule();
      });
    }, Math.max(100, (this.#ttl * 1000) / 3));
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    await this.#inflight;
  }
}
