/**
 * What the Deno KV backend keeps in its sqlite file, and the one path that changes data: each
 * mutation commits the data, its change-log record and the sequence number together, checked
 * against the sequence it read, so all changes are totally ordered and none is lost.
 *
 * Layout: ["d", key] data {v, l?}; ["s"] newest sequence; ["c", seq] change {k, v|null, l?, t};
 * ["L", lease] {ttl, exp} (exp 0: being revoked); ["K", lease, key] keys attached to a lease.
 */

import type { KvEntry } from "./kvstore.ts";
import { LeaseGone, WatchCompactedError } from "./errors.ts";
import { AGAIN, retrying } from "./_retry.ts";

export interface Stored {
  v: Uint8Array;
  l?: string;
}
export interface Change {
  k: string;
  v: Uint8Array | null;
  l?: string;
  t: number;
}
export interface LeaseRecord {
  ttl: number;
  exp: number;
}
/** What a mutation writes: a value (or `null` to delete) and its lease; `null` writes nothing. */
export type Decision = { value: Uint8Array | null; lease?: string | undefined } | null;

const SEQ = ["s"];

export function toEntry(key: string, v: Stored, revision: string): KvEntry {
  const entry: KvEntry = { key, value: v.v, revision };
  if (v.l !== undefined) entry.lease = v.l;
  return entry;
}

/** The sequence number of the newest change: the store's cursor. */
export async function readSeq(kv: Deno.Kv): Promise<number> {
  return (await kv.get<number>(SEQ)).value ?? 0;
}

/**
 * Reads the key and the sequence, asks `decide` what to write, and commits data, change record,
 * sequence and lease bookkeeping together; starts over when another writer won the race.
 */
export function mutate(
  kv: Deno.Kv,
  key: string,
  decide: (cur: Stored | null, revision: string | null) => Decision,
): Promise<{ done: boolean; revision: string | null; current: KvEntry | null }> {
  return retrying(async () => {
    const [seq, cur] = await kv.getMany<[number, Stored]>([SEQ, ["d", key]]);
    const d = decide(cur.value, cur.versionstamp);
    if (d === null) {
      const current = cur.value === null ? null : toEntry(key, cur.value, cur.versionstamp);
      return { done: false, revision: null, current };
    }
    if (d.value === null && cur.value === null) {
      return { done: true, revision: null, current: null };
    }
    const next = (seq.value ?? 0) + 1;
    const tx = kv.atomic().check(seq).check(cur);
    if (d.value !== null && d.lease !== undefined) {
      const l = await kv.get<LeaseRecord>(["L", d.lease]);
      if (l.value === null || l.value.exp <= Date.now()) throw new LeaseGone(d.lease);
      tx.check(l).set(["K", d.lease, key], true); // a revoke in between fails this check
    }
    const old = cur.value?.l;
    if (old !== undefined && (d.value === null || old !== d.lease)) tx.delete(["K", old, key]);
    const lease = d.value !== null && d.lease !== undefined ? { l: d.lease } : {};
    if (d.value === null) tx.delete(["d", key]);
    else tx.set(["d", key], { v: d.value, ...lease });
    tx.set(["c", next], { k: key, v: d.value, ...lease, t: Date.now() }).set(SEQ, next);
    const r = await tx.commit();
    return r.ok ? { done: true, revision: r.versionstamp, current: null } : AGAIN;
  });
}

/**
 * Creates every key of `entries` if none exists, in one commit checked against the sequence
 * and each key's absence; a change record per key (sequence numbers in order). Starts over when
 * another writer won the race; `done` is false when a key exists.
 */
export function createAll(
  kv: Deno.Kv,
  entries: readonly { key: string; value: Uint8Array }[],
): Promise<{ done: boolean }> {
  if (entries.length > CREATE_ALL_MAX) {
    throw new RangeError(
      `Cannot create ${entries.length} keys in one write: at most ${CREATE_ALL_MAX}`,
    );
  }
  return retrying(async () => {
    const keys: Deno.KvKey[] = [SEQ, ...entries.map((e) => ["d", e.key])];
    const reads: Promise<Deno.KvEntryMaybe<unknown>[]>[] = [];
    for (let i = 0; i < keys.length; i += 10) reads.push(kv.getMany(keys.slice(i, i + 10)));
    const [seq, ...cur] = (await Promise.all(reads)).flat() as [
      Deno.KvEntryMaybe<number>,
      ...Deno.KvEntryMaybe<Stored>[],
    ];
    if (cur.some((c) => c.value !== null)) return { done: false };
    const tx = kv.atomic().check(seq);
    for (const c of cur) tx.check(c);
    let next = seq.value ?? 0;
    const t = Date.now();
    for (const e of entries) {
      next++;
      tx.set(["d", e.key], { v: e.value }).set(["c", next], { k: e.key, v: e.value, t });
    }
    const r = await tx.set(SEQ, next).commit();
    return r.ok ? { done: true } : AGAIN;
  });
}

/**
 * Puts every entry (with `lease`, if given) in one commit checked against the sequence and the
 * lease record (every data write moves the sequence, so no other check is needed), with a change
 * record per key; moves each key's lease bookkeeping as `mutate` does. Starts over when another
 * writer won the race; throws `LeaseGone` if the lease is gone.
 */
export function putAll(
  kv: Deno.Kv,
  entries: readonly { key: string; value: Uint8Array }[],
  lease: string | undefined,
  max: number,
): Promise<void> {
  if (entries.length > max) {
    throw new RangeError(`Cannot put ${entries.length} keys in one write: at most ${max}`);
  }
  return retrying(async () => {
    const keys: Deno.KvKey[] = [
      SEQ,
      ...(lease === undefined ? [] : [["L", lease]]),
      ...entries.map((e) => ["d", e.key]),
    ];
    const reads: Promise<Deno.KvEntryMaybe<unknown>[]>[] = [];
    for (let i = 0; i < keys.length; i += 10) reads.push(kv.getMany(keys.slice(i, i + 10)));
    const all = (await Promise.all(reads)).flat();
    const seq = all.shift() as Deno.KvEntryMaybe<number>;
    const tx = kv.atomic().check(seq);
    if (lease !== undefined) {
      const l = all.shift() as Deno.KvEntryMaybe<LeaseRecord>;
      if (l.value === null || l.value.exp <= Date.now()) throw new LeaseGone(lease);
      tx.check(l);
    }
    const cur = all as Deno.KvEntryMaybe<Stored>[];
    const ls = lease === undefined ? {} : { l: lease };
    let next = seq.value ?? 0;
    const t = Date.now();
    for (const [i, e] of entries.entries()) {
      const old = cur[i]!.value?.l;
      if (old !== undefined && old !== lease) tx.delete(["K", old, e.key]);
      if (lease !== undefined) tx.set(["K", lease, e.key], true);
      next++;
      tx.set(["d", e.key], { v: e.value, ...ls }).set(["c", next], {
        k: e.key,
        v: e.value,
        ...ls,
        t,
      });
    }
    const r = await tx.set(SEQ, next).commit();
    return r.ok ? undefined : AGAIN;
  });
}

/** Keys one createAll() writes at most (Deno KV allows 100 checks per commit). */
export const CREATE_ALL_MAX = 64;

export interface LoggedChange {
  seq: number;
  change: Change;
  /** The commit's versionstamp, which is also the data's revision for a put. */
  revision: string;
}

/** Change records after `cursor`, oldest first; throws if those right after it were trimmed. */
export async function readLog(kv: Deno.Kv, cursor: number, store: string) {
  const newest = await readSeq(kv); // read first: a change after it cannot look like a gap
  const out: LoggedChange[] = [];
  if (newest <= cursor) return out; // nothing new: one read per idle poll
  const it = kv.list<Change>({ prefix: ["c"], start: ["c", cursor + 1] }, { limit: 256 });
  for await (const e of it) {
    out.push({ seq: e.key[1] as number, change: e.value, revision: e.versionstamp });
  }
  const first = out[0]?.seq ?? (newest > cursor ? newest + 1 : cursor + 1);
  if (first !== cursor + 1) {
    throw new WatchCompactedError(
      String(cursor),
      `Cannot resume watch from cursor "${cursor}" in ${store}: changes before "${first}" were trimmed`,
    );
  }
  return out;
}

/** Deletes change records older than `retentionMs`, a batch at a time. */
export async function trimLog(kv: Deno.Kv, retentionMs: number): Promise<void> {
  const cutoff = Date.now() - retentionMs;
  const old: Deno.KvKey[] = [];
  for await (const c of kv.list<Change>({ prefix: ["c"] }, { limit: 500 })) {
    if (c.value.t >= cutoff) break;
    old.push(c.key);
  }
  if (old.length === 0) return;
  const tx = kv.atomic();
  for (const key of old) tx.delete(key);
  await retrying(() => tx.commit());
}
