/**
 * The incremental path of regeneration, for the Regenerator: identities that came or went change
 * only the map-state entries keyed by them, in the endpoints they concern, written as diffs
 * through the realised state (its write/record/retry rules hold). It decides which endpoints an
 * identity change touches and what changes in them; it owns no state and does no full
 * recomputation (an endpoint on the dirty list is left to its next full write). Separate from the
 * Regenerator because identity churn is the frequent, cheap case that must stay the cost of the
 * change, apart from the full recomputations of rules and endpoint changes.
 */

import type { IdentitySpec, PolicyEngine } from "@cilia/policy-wasm";
import type { Counter } from "../metrics.ts";
import { sameIdentity } from "./_local_identities.ts";
import type { RealisedState, Realized } from "./_realised_state.ts";
import { identityDiff, type MapStateDiff } from "./mapstate_diff.ts";

export interface IdentityChanges {
  engine: PolicyEngine;
  eps: RealisedState;
  count: Counter | undefined;
}

/**
 * Identities that became known: adds the entries keyed by them to every endpoint. Resolves to
 * false when none was new or changed (nothing was done).
 */
export async function addIdentities(
  c: IdentityChanges,
  list: readonly IdentitySpec[],
): Promise<boolean> {
  const fresh = list.filter((i) => !sameIdentity(c.engine.identity(i.id), i));
  if (fresh.length === 0) return false;
  const known = new Set(
    fresh.filter((i) => c.engine.identity(i.id) !== undefined).map((i) => i.id),
  );
  const replaced = known.size > 0;
  c.engine.upsertIdentities(fresh);
  const ids = new Set(fresh.map((i) => i.id));
  for (const r of affectedBy(c, ids, replaced)) {
    if (c.eps.isDirty(r.ep.id)) continue;
    const diff: MapStateDiff = { adds: [], deletes: [] };
    try {
      for (const id of ids) {
        const ms = c.engine.mapStateForIdentity(r.ep.id, id);
        c.count?.inc({ kind: "incremental" });
        // A new identity has no entries in the endpoint yet: only its own are looked at.
        const d = identityDiff(r.entries, ms.entries, { identity: id, fresh: !known.has(id) });
        diff.adds.push(...d.adds);
        diff.deletes.push(...d.deletes);
      }
    } catch (err) {
      c.eps.fail(r, err);
      continue;
    }
    await c.eps.apply(r, diff, false);
  }
  return true;
}

/**
 * The endpoints whose map-state new identities `ids` change: for identities new to the engine,
 * only those the engine finds from the selectors that select them (an endpoint holds no entries
 * for an identity it did not know); a replaced identity may take entries away: all of them.
 */
function affectedBy(
  c: IdentityChanges,
  ids: ReadonlySet<number>,
  replaced: boolean,
): Iterable<Realized> {
  if (replaced) return c.eps.values();
  const out = new Map<number, Realized>();
  for (const id of ids) {
    for (const ep of c.engine.endpointsAffected(id)) {
      const r = c.eps.get(ep);
      if (r !== undefined) out.set(ep, r);
    }
  }
  return out.values();
}

/**
 * Identities that went away: deletes the entries keyed by them. Resolves to false when the
 * engine knew none of them (nothing was done).
 */
export async function removeIdentities(
  c: IdentityChanges,
  ids: readonly number[],
): Promise<boolean> {
  const known = ids.filter((id) => c.engine.identity(id) !== undefined);
  if (known.length === 0) return false;
  c.engine.removeIdentities(known);
  const gone = new Set(known);
  for (const r of c.eps.values()) {
    if (c.eps.isDirty(r.ep.id)) continue; // its next full write leaves them out
    const deletes = [...r.entries.values()].filter((e) => gone.has(e.identity));
    await c.eps.apply(r, { adds: [], deletes }, false);
  }
  return true;
}
