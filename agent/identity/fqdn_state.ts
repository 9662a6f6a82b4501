/**
 * The node's toFQDNs state: the DNS cache (what each endpoint was told) and the FQDN identities
 * derived from it, kept in step with the datapath through the regenerator (the one write path).
 * It learns from answers the DNS proxy checked, expires records on a timer, follows policy loads
 * (new selectors relabel learned addresses), and saves the cache in the state dir so a restarted
 * agent restores it before the first policy load. Every change runs on the agent's serial queue.
 *
 * Order (the pod's first packet to a learned address must pass): `learn()` resolves only after
 * the policy entries and then the ipcache entries are written; the proxy releases the answer
 * after that.
 */

import type { IdentitySpec, PolicySpec } from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { Serial } from "../_serial.ts";
import type { Regenerator } from "../endpoint/regenerator.ts";
import { type CacheEntry, DnsCache, type SavedCache } from "../proxy/dns_cache.ts";
import { FqdnIdentities, fqdnKeysOf } from "./fqdn.ts";

export interface FqdnStateOptions {
  regen: Regenerator;
  serial: Serial;
  log: Logger;
  minTtl: number;
  maxIpsPerName: number;
  /** Where the cache is saved (none: memory only). */
  path?: string;
  /** How often expired records are dropped (ms; default 1000). */
  expireEveryMs?: number;
  /**
   * The (endpoint, address) pairs of live connections (conntrack): an expired record they use is
   * kept until they end (dns_cache.ts rule 4). None: records expire with their TTL.
   */
  liveFlows?: () => (endpoint: number, ip: string) => boolean;
  /**
   * How long a conntrack walk answers for records already kept (ms; default 10 s): a record
   * that newly expired always gets a fresh walk, the walk of a large table is not repeated every
   * expiry pass, and a kept record goes at most this long after its last connection ended.
   */
  liveFlowsEveryMs?: number;
  /**
   * Called before a change (learned, evicted, expired or cleaned addresses) is written to the
   * datapath: whoever relies on what the cache held (the DNS proxy's Worker) forgets it.
   */
  onChange?: () => void;
}

export class FqdnState {
  readonly #o: FqdnStateOptions;
  readonly cache: DnsCache;
  readonly identities = new FqdnIdentities();
  #timer: ReturnType<typeof setInterval> | undefined;
  #saveTimer: ReturnType<typeof setTimeout> | undefined;
  /** The last conntrack walk (dns_cache.ts rule 4). */
  #live: { at: number; used: (endpoint: number, ip: string) => boolean } | undefined;
  /** learn() steps queued or running. */
  #learning = 0;

  constructor(o: FqdnStateOptions) {
    this.#o = o;
    this.cache = new DnsCache({ minTtl: o.minTtl, maxIpsPerName: o.maxIpsPerName });
  }

  /** Restores the saved cache (call before policies load) and starts expiry. */
  async start(): Promise<void> {
    if (this.#o.path !== undefined) {
      try {
        this.cache.restore(JSON.parse(await Deno.readTextFile(this.#o.path)) as SavedCache);
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) {
          this.#o.log.warn("cannot read the saved DNS cache", { error: err });
        }
      }
    }
    this.#timer = setInterval(
      () => this.#o.serial.run(() => this.#expire()).catch(() => {}),
      this.#o.expireEveryMs ?? 1000,
    );
  }

  /**
   * Records an answer for an endpoint; resolves once the datapath allows its addresses. An
   * answer that brings nothing new, while no other answer is being learned, only extends the
   * records' lives without waiting for the serial queue (the DNS proxy's hot path): every record
   * in the cache was written when its learn() step ran, and a removal (expiry, clean) takes the
   * record out of the cache before it writes, so such an answer waits for the queue.
   */
  learn(
    endpoint: number,
    names: readonly string[],
    ips: readonly { ip: string; ttl: number }[],
  ): Promise<string | undefined> {
    if (this.#learning === 0 && this.cache.refresh(endpoint, names, ips)) {
      return Promise.resolve(undefined);
    }
    this.#learning++;
    return this.#o.serial.run(() => this.#update(this.cache.learn(endpoint, names, ips)))
      .finally(() => this.#learning--);
  }

  /** Removes records (`cilia fqdn cache clean`); returns how many went. */
  clean(f: { name?: string; endpoint?: number } = {}): Promise<number> {
    return this.#o.serial.run(async () => {
      const before = this.cache.size;
      await this.#update(this.cache.clean(f));
      return before - this.cache.size;
    });
  }

  /** Until when (epoch ms) the endpoint holds every (name, address), if it does (DnsCache). */
  knownUntil(
    endpoint: number,
    names: readonly string[],
    ips: readonly { ip: string }[],
  ): number | undefined {
    return this.#learning === 0 ? this.cache.expiresOf(endpoint, names, ips) : undefined;
  }

  list(f: { name?: string; endpoint?: number } = {}): CacheEntry[] {
    return this.cache.list(f);
  }

  /**
   * For a policy load (the repository calls it inside its serial step): the FQDN identities under
   * the new selectors, and commit/abort.
   */
  prepare(spec: PolicySpec): { identities: IdentitySpec[]; commit(): void; abort(): void } {
    const before = this.identities.keys;
    this.identities.setKeys(fqdnKeysOf(spec));
    const plan = this.identities.planAll(this.cache.known());
    return {
      identities: [...plan.next.values()],
      commit: () => this.identities.commit(plan),
      abort: () => this.identities.setKeys(before),
    };
  }

  async #expire(): Promise<void> {
    const live = this.#o.liveFlows;
    const gone = this.cache.expire(
      Date.now(),
      live &&
        ((fresh) => {
          const now = performance.now();
          const every = this.#o.liveFlowsEveryMs ?? 10_000;
          if (fresh || !this.#live || now - this.#live.at >= every) {
            this.#live = { at: now, used: live() };
          }
          return this.#live.used;
        }),
    );
    if (gone.size > 0) await this.#update(gone);
  }

  async #update(ips: Set<string>): Promise<string | undefined> {
    if (ips.size === 0) return undefined;
    this.#o.onChange?.();
    this.#scheduleSave();
    const plan = this.identities.plan(this.cache.known(), ips);
    if (plan.upserts.length === 0 && plan.removes.length === 0) return undefined;
    const error = await this.#o.regen.updateLocalIdentities(plan.upserts, plan.removes);
    this.identities.commit(plan);
    return error;
  }

  #scheduleSave(): void {
    if (this.#o.path === undefined || this.#saveTimer !== undefined) return;
    this.#saveTimer = setTimeout(() => {
      this.#saveTimer = undefined;
      this.save().catch((err) => this.#o.log.warn("cannot save the DNS cache", { error: err }));
    }, 200);
  }

  async save(): Promise<void> {
    if (this.#o.path === undefined) return;
    const tmp = `${this.#o.path}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(this.cache.toJSON()));
    await Deno.rename(tmp, this.#o.path);
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    if (this.#saveTimer !== undefined) {
      clearTimeout(this.#saveTimer);
      this.#saveTimer = undefined;
    }
    await this.save().catch(() => {});
  }
}
