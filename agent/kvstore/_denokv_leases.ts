/**
 * Leases for the Deno KV backend: a record with a TTL and an expiry time, extended by
 * `keepAlive`, and the keys attached to it. Revoking marks the lease first (expiry 0, so that
 * nothing attaches to it any more), deletes its keys through the normal write path (so watchers
 * see delete events), then the record; a revoke cut short is finished by the next sweep.
 */

import { LeaseGone } from "./errors.ts";
import { AGAIN, retrying } from "./_retry.ts";
import { type LeaseRecord, mutate } from "./_denokv_records.ts";

export async function grantLease(kv: Deno.Kv, ttlSeconds: number): Promise<string> {
  if (!(ttlSeconds > 0)) throw new RangeError(`expected a TTL above 0 seconds`);
  const id = crypto.randomUUID().replaceAll("-", "").slice(0, 16);
  const ttl = Math.ceil(ttlSeconds * 1000);
  await retrying(() => kv.set(["L", id], { ttl, exp: Date.now() + ttl }));
  return id;
}

export function keepAlive(kv: Deno.Kv, lease: string): Promise<void> {
  return retrying(async () => {
    const e = await kv.get<LeaseRecord>(["L", lease]);
    if (e.value === null || e.value.exp <= Date.now()) throw new LeaseGone(lease);
    const next: LeaseRecord = { ttl: e.value.ttl, exp: Date.now() + e.value.ttl };
    const r = await kv.atomic().check(e).set(["L", lease], next).commit();
    return r.ok ? undefined : AGAIN;
  });
}

/** Deletes the lease and its keys; a lease that is already gone is not an error. */
export async function revokeLease(kv: Deno.Kv, lease: string): Promise<void> {
  const marked = await retrying(async () => {
    const e = await kv.get<LeaseRecord>(["L", lease]);
    if (e.value === null) return false;
    if (e.value.exp === 0) return true;
    const r = await kv.atomic().check(e).set(["L", lease], { ...e.value, exp: 0 }).commit();
    return r.ok ? true : AGAIN;
  });
  if (!marked) return;
  for await (const k of kv.list({ prefix: ["K", lease] })) {
    const key = k.key[2] as string;
    await mutate(kv, key, (cur) => cur?.l === lease ? { value: null } : null);
    await retrying(() => kv.delete(k.key)); // left over if the key moved to another lease
  }
  await retrying(() => kv.delete(["L", lease]));
}

/** Revokes every lease whose expiry has passed. Returns how many. */
export async function revokeExpired(kv: Deno.Kv, stop: () => boolean): Promise<number> {
  const now = Date.now();
  let revoked = 0;
  for await (const l of kv.list<LeaseRecord>({ prefix: ["L"] })) {
    if (stop()) break;
    if (l.value.exp > now) continue;
    await revokeLease(kv, l.key[1] as string);
    revoked++;
  }
  return revoked;
}
