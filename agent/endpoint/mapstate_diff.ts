/**
 * Map-state entries keyed as the kernel's policy map keys them (direction, peer identity,
 * protocol, port range), and the disjoint adds/deletes that turn one map-state into another: an
 * add is an upsert (new key or new value), a delete removes a key. Pure; no I/O.
 */

import type { MapStateEntry } from "@cilia/policy-wasm";

export interface MapStateDiff {
  /** New keys and keys whose value changed (upserts). */
  adds: MapStateEntry[];
  /** Keys that are gone. */
  deletes: MapStateEntry[];
}

export function entryKey(e: MapStateEntry): string {
  return `${e.direction}/${e.identity}/${e.proto}/${e.portLo}-${e.portHi}`;
}

export function sameEntry(a: MapStateEntry, b: MapStateEntry): boolean {
  return a.verdict === b.verdict && a.cookie === b.cookie && a.l7 === b.l7 &&
    JSON.stringify(a.l7Entries ?? []) === JSON.stringify(b.l7Entries ?? []);
}

export function indexEntries(entries: readonly MapStateEntry[]): Map<string, MapStateEntry> {
  return new Map(entries.map((e) => [entryKey(e), e]));
}

/**
 * The diff from `current` to `next`, looking only at current entries for which `scope` holds
 * (all by default): `next` is the complete new content of that scope.
 */
export function diffEntries(
  current: ReadonlyMap<string, MapStateEntry>,
  next: readonly MapStateEntry[],
  scope: (e: MapStateEntry) => boolean = () => true,
): MapStateDiff {
  const nextByKey = indexEntries(next);
  const adds: MapStateEntry[] = [];
  const deletes: MapStateEntry[] = [];
  for (const [key, e] of nextByKey) {
    const old = current.get(key);
    if (old === undefined || !sameEntry(old, e)) adds.push(e);
  }
  for (const [key, e] of current) {
    if (scope(e) && !nextByKey.has(key)) deletes.push(e);
  }
  return { adds, deletes };
}

/**
 * The diff that brings `current` to `next` for one identity's entries (`next`: all of them).
 * With `fresh` (an identity new to the engine, so `current` holds no entry keyed by it) only
 * `next` is looked at, by key: the cost is the identity's entries, not the endpoint's, which grow
 * with every peer it allows. Otherwise `current` is walked for the identity's stale entries.
 */
export function identityDiff(
  current: ReadonlyMap<string, MapStateEntry>,
  next: readonly MapStateEntry[],
  o: { identity: number; fresh: boolean },
): MapStateDiff {
  const own = next.filter((e) => e.identity === o.identity);
  if (!o.fresh) return diffEntries(current, own, (e) => e.identity === o.identity);
  const adds = own.filter((e) => {
    const old = current.get(entryKey(e));
    return old === undefined || !sameEntry(old, e);
  });
  return { adds, deletes: [] };
}

export function applyDiff(map: Map<string, MapStateEntry>, diff: MapStateDiff): void {
  for (const e of diff.deletes) map.delete(entryKey(e));
  for (const e of diff.adds) map.set(entryKey(e), e);
}

export function isEmpty(diff: MapStateDiff): boolean {
  return diff.adds.length === 0 && diff.deletes.length === 0;
}

/** Entries in a stable order: direction, identity, protocol, port. */
export function sortEntries(entries: Iterable<MapStateEntry>): MapStateEntry[] {
  return [...entries].sort((a, b) =>
    a.direction.localeCompare(b.direction) || a.identity - b.identity || a.proto - b.proto ||
    a.portLo - b.portLo || a.portHi - b.portHi
  );
}
