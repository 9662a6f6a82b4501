// The DNS proxy's memory of what each endpoint was told: per endpoint, per name (FQDN form), the
// addresses with when they were learned and when they expire. It decides which addresses are
// "known" (the union over endpoints, what toFQDNs selectors may select) and nothing else; it
// does no I/O (the agent saves `toJSON()` and restores with `restore()`).
//
// Rules:
// 1. A record lives max(TTL, minTtl) seconds from the answer that carried it; a later answer with
//    the same address extends it, never shortens it.
// 2. Per endpoint and name at most `maxIpsPerName` addresses: the oldest learned go first.
// 3. An address is known while some endpoint holds it under some name; expiry and eviction report
//    the addresses that stopped being known (and the names they were known under).
// 4. An expired record whose endpoint still has a live connection with its address (Cilium's
//    zombies: the caller asks conntrack) is kept, and expires at the first check after the last
//    such connection ended.

export interface DnsCacheOptions {
  /** Seconds (Cilium's --tofqdns-min-ttl). */
  minTtl: number;
  /** Cilium's --tofqdns-endpoint-max-ip-per-hostname. */
  maxIpsPerName: number;
}

interface Record_ {
  learned: number;
  expires: number;
  /** Expired, kept for a live connection (rule 4). */
  zombie?: true;
}

export interface CacheEntry {
  endpoint: number;
  name: string;
  ip: string;
  learnedAt: string;
  expiresAt: string;
  ttl: number;
}

export interface SavedCache {
  version: 1;
  entries: { endpoint: number; name: string; ip: string; learned: number; expires: number }[];
}

export class DnsCache {
  readonly #o: DnsCacheOptions;
  /** endpoint → name → ip → record */
  #eps = new Map<number, Map<string, Map<string, Record_>>>();

  constructor(o: DnsCacheOptions) {
    this.#o = o;
  }

  /** Rules 1–2. Returns the addresses whose set of names changed (learned or evicted). */
  learn(
    endpoint: number,
    names: readonly string[],
    ips: readonly { ip: string; ttl: number }[],
    now = Date.now(),
  ): Set<string> {
    const changed = new Set<string>();
    if (ips.length === 0) return changed;
    let byName = this.#eps.get(endpoint);
    if (!byName) this.#eps.set(endpoint, byName = new Map());
    for (const name of names) {
      let recs = byName.get(name);
      if (!recs) byName.set(name, recs = new Map());
      for (const { ip, ttl } of ips) {
        const expires = now + Math.max(ttl, this.#o.minTtl) * 1000;
        const have = recs.get(ip);
        if (have) {
          have.expires = Math.max(have.expires, expires);
          if (have.expires > now) delete have.zombie;
          continue;
        }
        recs.set(ip, { learned: now, expires });
        changed.add(ip);
      }
      while (recs.size > this.#o.maxIpsPerName) {
        let oldest: string | undefined;
        let at = Infinity;
        for (const [ip, r] of recs) if (r.learned < at) [oldest, at] = [ip, r.learned];
        recs.delete(oldest!);
        changed.add(oldest!);
      }
    }
    return changed;
  }

  /**
   * Until when every (name, address) of the endpoint is held (the earliest expiry, epoch ms), or
   * undefined when one is missing or only kept for a live connection.
   */
  expiresOf(
    endpoint: number,
    names: readonly string[],
    ips: readonly { ip: string }[],
  ): number | undefined {
    let until = Infinity;
    for (const name of names) {
      const recs = this.#eps.get(endpoint)?.get(name);
      for (const { ip } of ips) {
        const r = recs?.get(ip);
        if (!r || r.zombie) return undefined;
        until = Math.min(until, r.expires);
      }
    }
    return until === Infinity ? undefined : until;
  }

  /**
   * learn() for an answer that brings nothing new: when the endpoint already holds every (name,
   * address), extends their lives (rule 1) and returns true; otherwise changes nothing and
   * returns false (call learn()).
   */
  refresh(
    endpoint: number,
    names: readonly string[],
    ips: readonly { ip: string; ttl: number }[],
    now = Date.now(),
  ): boolean {
    const byName = this.#eps.get(endpoint);
    if (!byName) return false;
    for (const name of names) {
      const recs = byName.get(name);
      if (!recs) return false;
      for (const { ip } of ips) if (!recs.has(ip)) return false;
    }
    for (const name of names) {
      const recs = byName.get(name)!;
      for (const { ip, ttl } of ips) {
        const r = recs.get(ip)!;
        r.expires = Math.max(r.expires, now + Math.max(ttl, this.#o.minTtl) * 1000);
        if (r.expires > now) delete r.zombie;
      }
    }
    return true;
  }

  /**
   * Drops expired records (rule 4: except those `inUse` says a live connection of the endpoint
   * still uses; asked once, only when something expired, with `fresh` true when a record expired
   * that was not kept before, so the caller may reuse a recent answer for the others); returns
   * the addresses affected.
   */
  expire(
    now = Date.now(),
    inUse?: (fresh: boolean) => (endpoint: number, ip: string) => boolean,
  ): Set<string> {
    let fresh = false;
    if (inUse) {
      for (const byName of this.#eps.values()) {
        for (const recs of byName.values()) {
          for (const r of recs.values()) if (r.expires <= now && !r.zombie) fresh = true;
        }
      }
    }
    let used: ((endpoint: number, ip: string) => boolean) | undefined;
    return this.#remove((ep, _name, ip, r) => {
      if (r.expires > now) return false;
      if (!inUse) return true;
      used ??= inUse(fresh);
      if (!used(ep, ip)) return true;
      r.zombie = true;
      return false;
    });
  }

  /** Removes records (all, or of one name / endpoint); returns the addresses affected. */
  clean(f: { name?: string; endpoint?: number } = {}): Set<string> {
    const name = f.name?.toLowerCase().replace(/\.?$/, ".");
    return this.#remove((ep, n) =>
      (name === undefined || n === name) && (f.endpoint === undefined || ep === f.endpoint)
    );
  }

  #remove(
    drop: (ep: number, name: string, ip: string, r: Record_) => boolean,
  ): Set<string> {
    const changed = new Set<string>();
    for (const [ep, byName] of this.#eps) {
      for (const [name, recs] of byName) {
        for (const [ip, r] of recs) {
          if (!drop(ep, name, ip, r)) continue;
          recs.delete(ip);
          changed.add(ip);
        }
        if (recs.size === 0) byName.delete(name);
      }
      if (byName.size === 0) this.#eps.delete(ep);
    }
    return changed;
  }

  /** Rule 3: the names an address is known under, over all endpoints (empty: not known). */
  namesOf(ip: string): Set<string> {
    const out = new Set<string>();
    for (const byName of this.#eps.values()) {
      for (const [name, recs] of byName) if (recs.has(ip)) out.add(name);
    }
    return out;
  }

  /** Every known address with its names. */
  known(): Map<string, Set<string>> {
    const out = new Map<string, Set<string>>();
    for (const byName of this.#eps.values()) {
      for (const [name, recs] of byName) {
        for (const ip of recs.keys()) {
          let s = out.get(ip);
          if (!s) out.set(ip, s = new Set());
          s.add(name);
        }
      }
    }
    return out;
  }

  list(f: { name?: string; endpoint?: number } = {}, now = Date.now()): CacheEntry[] {
    const name = f.name?.toLowerCase().replace(/\.?$/, ".");
    const out: CacheEntry[] = [];
    for (const [ep, byName] of this.#eps) {
      if (f.endpoint !== undefined && ep !== f.endpoint) continue;
      for (const [n, recs] of byName) {
        if (name !== undefined && n !== name) continue;
        for (const [ip, r] of recs) {
          out.push({
            endpoint: ep,
            name: n,
            ip,
            learnedAt: new Date(r.learned).toISOString(),
            expiresAt: new Date(r.expires).toISOString(),
            ttl: Math.max(0, Math.round((r.expires - now) / 1000)),
          });
        }
      }
    }
    return out.sort((a, b) =>
      a.endpoint - b.endpoint || a.name.localeCompare(b.name) || a.ip.localeCompare(b.ip)
    );
  }

  toJSON(): SavedCache {
    const entries: SavedCache["entries"] = [];
    for (const [endpoint, byName] of this.#eps) {
      for (const [name, recs] of byName) {
        for (const [ip, r] of recs) entries.push({ endpoint, name, ip, ...r });
      }
    }
    return { version: 1, entries };
  }

  /** Restores saved records (expired ones included: the caller expires them on its schedule). */
  restore(saved: SavedCache): void {
    if (saved?.version !== 1 || !Array.isArray(saved.entries)) return;
    for (const e of saved.entries) {
      if (typeof e.ip !== "string" || typeof e.name !== "string") continue;
      if (!Number.isInteger(e.endpoint) || !Number.isFinite(e.learned)) continue;
      if (!Number.isFinite(e.expires)) continue;
      let byName = this.#eps.get(e.endpoint);
      if (!byName) this.#eps.set(e.endpoint, byName = new Map());
      let recs = byName.get(e.name);
      if (!recs) byName.set(e.name, recs = new Map());
      recs.set(e.ip, { learned: e.learned, expires: e.expires });
    }
  }

  get size(): number {
    let n = 0;
    for (const byName of this.#eps.values()) for (const r of byName.values()) n += r.size;
    return n;
  }
}
