/**
 * Host-scope IPAM: hands out addresses from this node's pod CIDRs (IPv4 and IPv6). Each
 * allocation is the key `cilia/ipam/<node>/<ip>` → `{owner, …}`, created only if absent, so an
 * address is never handed out twice, across restarts too (`restore()` reads them back).
 * Candidates go round-robin from the last allocation, so a released address is not reused at
 * once. It knows nothing of endpoints beyond the owner string.
 */

import type { KvStore } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import { addressNumber, addressText, capacity, inPool, makePool, type Pool } from "./pool.ts";

export interface Allocation {
  ip: string;
  family: 4 | 6;
  cidr: string;
  owner: string;
  allocatedAt: string;
}

/** Every address of the pod CIDR is in use. */
export class IpamExhaustedError extends Error {
  override name = "IpamExhaustedError";
}

/** No pod CIDR of the requested family, or an address outside them. */
export class IpamRangeError extends RangeError {
  override name = "IpamRangeError";
}

export class IpamNotFoundError extends Error {
  override name = "IpamNotFoundError";
}

interface Family {
  pool: Pool;
  allocated: Map<bigint, Allocation | "pending">;
  cursor: bigint;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export class Ipam {
  #store: KvStore;
  #prefix: string;
  #log: Logger;
  #families = new Map<4 | 6, Family>();

  constructor(
    opts: { store: KvStore; node: string; podCidr?: string; podCidrV6?: string; log: Logger },
  ) {
    this.#store = opts.store;
    this.#prefix = `cilia/ipam/${opts.node}/`;
    this.#log = opts.log;
    for (const cidr of [opts.podCidr, opts.podCidrV6]) {
      if (cidr === undefined) continue;
      const pool = makePool(cidr);
      this.#families.set(pool.family, { pool, allocated: new Map(), cursor: pool.first });
    }
  }

  /** Reads this node's allocations back from the kvstore. */
  async restore(): Promise<number> {
    let n = 0;
    for (const e of await this.#store.list(this.#prefix)) {
      let a: Allocation;
      try {
        a = JSON.parse(dec.decode(e.value)) as Allocation;
      } catch {
        continue;
      }
      const addr = addressNumber(a.ip);
      const f = addr && this.#families.get(addr.family);
      if (!addr || !f || !inPool(f.pool, addr.family, addr.n)) {
        this.#log.warn("allocation outside the pod CIDRs kept as is", { ip: a.ip });
        continue;
      }
      f.allocated.set(addr.n, a);
      if (addr.n >= f.cursor) f.cursor = addr.n + 1n > f.pool.last ? f.pool.first : addr.n + 1n;
      n++;
    }
    return n;
  }

  /** The gateway and CIDR of each configured family, with its allocations counted (status). */
  pools(): { family: 4 | 6; cidr: string; gateway: string; allocated: number; capacity: string }[] {
    return [...this.#families.values()].map((f) => ({
      ...gatewayOf(f),
      allocated: [...f.allocated.values()].filter((a) => a !== "pending").length,
      capacity: String(capacity(f.pool)),
    }));
  }

  /**
   * The gateway and CIDR of each configured family, without counting the allocations: what a
   * CNI ADD asks, at a cost that does not grow with the addresses already given out.
   */
  gateways(): { family: 4 | 6; cidr: string; gateway: string }[] {
    return [...this.#families.values()].map(gatewayOf);
  }

  list(): Allocation[] {
    const out: Allocation[] = [];
    for (const f of this.#families.values()) {
      const nums = [...f.allocated].filter(([, a]) => a !== "pending").sort(([a], [b]) =>
        a < b ? -1 : 1
      );
      for (const [, a] of nums) out.push(a as Allocation);
    }
    return out;
  }

  get(ip: string): Allocation | undefined {
    const addr = addressNumber(ip);
    const a = addr && this.#families.get(addr.family)?.allocated.get(addr.n);
    return a && a !== "pending" ? a : undefined;
  }

  /** Whether `ip` lies in one of the pod CIDRs (and may be allocated). */
  covers(ip: string): boolean {
    const addr = addressNumber(ip);
    const f = addr && this.#families.get(addr.family);
    return !!(addr && f && inPool(f.pool, addr.family, addr.n));
  }

  /** Allocates the next free address of `family` (IPv4 if configured, else IPv6). */
  async allocate(opts: { family?: 4 | 6; owner: string }): Promise<Allocation> {
    const family = opts.family ?? (this.#families.has(4) ? 4 : 6);
    const f = this.#families.get(family);
    if (f === undefined) {
      throw new IpamRangeError(
        `Cannot allocate an IPv${family} address: no IPv${family} pod CIDR is configured ` +
          `(--pod-cidr${family === 6 ? "-v6" : ""})`,
      );
    }
    const size = capacity(f.pool);
    for (let tried = 0n; tried < size && BigInt(f.allocated.size) < size; tried++) {
      const n = f.cursor;
      f.cursor = n + 1n > f.pool.last ? f.pool.first : n + 1n;
      if (f.allocated.has(n)) continue;
      const a = await this.#take(f, n, opts.owner);
      if (a !== undefined) return a;
    }
    throw new IpamExhaustedError(
      `Cannot allocate an IPv${family} address from pod CIDR "${f.pool.cidr}": all ${size} ` +
        `addresses are in use`,
    );
  }

  /**
   * One address of each configured family for `owner` (IPv4 first): in one kvstore write when
   * the next candidates are free (the usual case), else family by family as `allocate()` does.
   * On failure nothing stays allocated.
   */
  async allocateAll(owner: string): Promise<Allocation[]> {
    const picks: { f: Family; n: bigint; cursor: bigint; a: Allocation }[] = [];
    for (const f of this.#families.values()) {
      const cursor = f.cursor, n = this.#candidate(f);
      if (n === undefined) break; // full: allocate() below says so
      picks.push({ f, n, cursor, a: this.#allocation(f, n, owner) });
    }
    if (picks.length > 0 && picks.length === this.#families.size) {
      for (const p of picks) p.f.allocated.set(p.n, "pending");
      let created = false;
      try {
        created = await this.#store.createAll(
          picks.map((p) => ({
            key: this.#prefix + p.a.ip,
            value: enc.encode(JSON.stringify(p.a)),
          })),
        );
      } finally {
        for (const p of picks) created ? p.f.allocated.set(p.n, p.a) : p.f.allocated.delete(p.n);
      }
      if (created) {
        for (const p of picks) this.#log.info("allocated address", { ip: p.a.ip, owner });
        return picks.map((p) => p.a);
      }
      for (const p of picks) p.f.cursor = p.cursor; // another writer has one: probe again
    } else for (const p of picks) p.f.cursor = p.cursor;
    const out: Allocation[] = [];
    try {
      for (const f of this.#families.values()) {
        out.push(await this.allocate({ family: f.pool.family, owner }));
      }
    } catch (err) {
      for (const a of out) await this.release(a.ip).catch(() => {});
      throw err;
    }
    return out;
  }

  /** The next address from the cursor that is not allocated (the cursor moves past it). */
  #candidate(f: Family): bigint | undefined {
    const size = capacity(f.pool);
    for (let tried = 0n; tried < size && BigInt(f.allocated.size) < size; tried++) {
      const n = f.cursor;
      f.cursor = n + 1n > f.pool.last ? f.pool.first : n + 1n;
      if (!f.allocated.has(n)) return n;
    }
    return undefined;
  }

  #allocation(f: Family, n: bigint, owner: string): Allocation {
    return {
      ip: addressText(f.pool.family, n),
      family: f.pool.family,
      cidr: f.pool.cidr,
      owner,
      allocatedAt: new Date().toISOString(),
    };
  }

  /** Allocates exactly `ip` for `owner`; returns the existing allocation if it has one. */
  async claim(ip: string, owner: string): Promise<Allocation> {
    const addr = addressNumber(ip);
    const f = addr && this.#families.get(addr.family);
    if (!addr || !f || !inPool(f.pool, addr.family, addr.n)) {
      throw new IpamRangeError(`Cannot allocate "${ip}": it is not in a pod CIDR of this node`);
    }
    const existing = f.allocated.get(addr.n);
    if (existing !== undefined && existing !== "pending") return existing;
    const a = await this.#take(f, addr.n, owner);
    if (a === undefined) throw new IpamRangeError(`Cannot allocate "${ip}": it is taken`);
    return a;
  }

  /** Creates the allocation key; undefined when another writer had it. */
  async #take(f: Family, n: bigint, owner: string): Promise<Allocation | undefined> {
    f.allocated.set(n, "pending");
    const a = this.#allocation(f, n, owner);
    try {
      const r = await this.#store.createIfAbsent(
        this.#prefix + a.ip,
        enc.encode(JSON.stringify(a)),
      );
      if (r.created) {
        f.allocated.set(n, a);
        this.#log.info("allocated address", { ip: a.ip, owner });
        return a;
      }
      f.allocated.set(n, JSON.parse(dec.decode(r.entry.value)) as Allocation);
      return undefined;
    } catch (err) {
      f.allocated.delete(n);
      throw err;
    }
  }

  async release(ip: string): Promise<Allocation> {
    const addr = addressNumber(ip);
    const f = addr && this.#families.get(addr.family);
    const a = addr && f?.allocated.get(addr.n);
    if (!addr || !f || a === undefined || a === null || a === "pending") {
      throw new IpamNotFoundError(`Cannot release "${ip}": it is not allocated on this node`);
    }
    await this.#store.delete(this.#prefix + a.ip);
    f.allocated.delete(addr.n);
    this.#log.info("released address", { ip: a.ip, owner: a.owner });
    return a;
  }
}

function gatewayOf(f: Family): { family: 4 | 6; cidr: string; gateway: string } {
  return {
    family: f.pool.family,
    cidr: f.pool.cidr,
    gateway: addressText(f.pool.family, f.pool.gateway),
  };
}
