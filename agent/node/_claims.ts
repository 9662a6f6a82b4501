/**
 * The remote ipcache entries by who claims them: each claimant (a remote node, a remote
 * endpoint) states its whole set of entries, and a prefix that several claim goes to the highest
 * rank, then to the claimant seen last. Only the prefixes a changed claim touched are resolved
 * again, so the work of a change is the size of that change, not of the cluster. It keeps what
 * was written and plans the difference; it writes nothing itself (discovery.ts does).
 */

import type { IpcacheEntry } from "@cilia/policy-wasm";
import type { IpcacheUpsert } from "../datapath/datapath.ts";

interface Claim {
  rank: number;
  /** Order of first claim: among equal ranks the later claimant wins. */
  seq: number;
  /** A handful at most (a node's addresses and pod CIDRs, an endpoint's IPs): no map. */
  entries: IpcacheUpsert[];
}

/** A difference to write; `commit()` it once written, `retry()` it when writing failed. */
export interface ClaimsPlan {
  upserts: IpcacheUpsert[];
  deletes: IpcacheEntry[];
  prefixes: string[];
}

const same = (a: IpcacheUpsert, b: IpcacheUpsert) =>
  a.identity === b.identity && a.tunnelEndpoint === b.tunnelEndpoint;
const find = (entries: IpcacheUpsert[] | undefined, prefix: string) =>
  entries?.find((e) => e.prefix === prefix);

export class IpcacheClaims {
  #claims = new Map<string, Claim>();
  /** prefix → the id claiming it, or the ids when several do (rare: no set per prefix). */
  #byPrefix = new Map<string, string | Set<string>>();
  #dirty = new Set<string>();
  #installed = new Map<string, IpcacheUpsert>();
  #seq = 0;

  /** Entries written so far, by prefix. */
  installed(): IterableIterator<IpcacheUpsert> {
    return this.#installed.values();
  }

  /**
   * Replaces what `id` claims (no entries withdraw the claim); one entry per prefix. Ids are
   * kept as given, so a caller passes a string it holds anyway (a record's key).
   */
  set(id: string, rank: number, entries: IpcacheUpsert[]): void {
    const old = this.#claims.get(id);
    for (const e of old?.entries ?? []) {
      if (find(entries, e.prefix) !== undefined) continue;
      this.#unclaim(e.prefix, id);
      this.#dirty.add(e.prefix);
    }
    if (entries.length === 0) {
      this.#claims.delete(id);
      return;
    }
    for (const e of entries) {
      const had = find(old?.entries, e.prefix);
      if (had !== undefined && old!.rank === rank && same(had, e)) continue;
      if (had === undefined) this.#claim(e.prefix, id);
      this.#dirty.add(e.prefix);
    }
    if (old !== undefined) Object.assign(old, { rank, entries });
    else this.#claims.set(id, { rank, seq: ++this.#seq, entries });
  }

  /** The writes that make the ipcache hold each touched prefix's winner (nothing: empty). */
  plan(): ClaimsPlan {
    const prefixes = [...this.#dirty];
    this.#dirty.clear();
    const upserts: IpcacheUpsert[] = [];
    const deletes: IpcacheEntry[] = [];
    for (const p of prefixes) {
      const want = this.#winner(p);
      const had = this.#installed.get(p);
      if (want === undefined) {
        if (had !== undefined) deletes.push(had);
      } else if (had === undefined || !same(had, want)) upserts.push(want);
    }
    return { upserts, deletes, prefixes };
  }

  /** Records a plan as written. */
  commit(plan: ClaimsPlan): void {
    for (const d of plan.deletes) this.#installed.delete(d.prefix);
    for (const u of plan.upserts) this.#installed.set(u.prefix, u);
  }

  /** A plan that could not be written: its prefixes are planned again next time. */
  retry(plan: ClaimsPlan): void {
    for (const p of plan.prefixes) this.#dirty.add(p);
  }

  #claim(prefix: string, id: string): void {
    const ids = this.#byPrefix.get(prefix);
    if (ids === undefined || ids === id) this.#byPrefix.set(prefix, id);
    else if (typeof ids === "string") this.#byPrefix.set(prefix, new Set([ids, id]));
    else ids.add(id);
  }

  #unclaim(prefix: string, id: string): void {
    const ids = this.#byPrefix.get(prefix);
    if (ids === id) this.#byPrefix.delete(prefix);
    else if (typeof ids === "object") {
      ids.delete(id);
      if (ids.size === 1) this.#byPrefix.set(prefix, [...ids][0]!);
    }
  }

  #winner(prefix: string): IpcacheUpsert | undefined {
    const ids = this.#byPrefix.get(prefix);
    let best: Claim | undefined;
    for (const id of typeof ids === "string" ? [ids] : ids ?? []) {
      const c = this.#claims.get(id);
      if (c === undefined) continue;
      if (best === undefined || c.rank > best.rank || (c.rank === best.rank && c.seq > best.seq)) {
        best = c;
      }
    }
    return find(best?.entries, prefix);
  }
}
