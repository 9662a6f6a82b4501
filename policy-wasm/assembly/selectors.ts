// Selector matching and the selector cache: for every selector, the set of identity slots it
// selects, kept as a bitset and updated incrementally as identities come and go. Label
// semantics follow Kubernetes label selectors with Cilium's label sources (POLICY-SEMANTICS §2-3):
// requirements are ANDed; NotIn and DoesNotExist hold when the key is absent; source "any"
// matches the key from every source. CIDR selectors match CIDR identities whose prefix lies
// inside the selector's prefix and outside every `except`.

import {
  identities,
  Identity,
  OP_DOES_NOT_EXIST,
  OP_EXISTS,
  OP_IN,
  OP_NOT_IN,
  Requirement,
  SEL_ALL,
  SEL_CIDR,
  SEL_LABELS,
  Selector,
  selectors,
  SRC_ANY,
} from "./model";

function requirementHolds(r: Requirement, id: Identity): bool {
  let found = false;
  let valueIn = false;
  const n = id.keys.length;
  for (let i = 0; i < n; i++) {
    if (unchecked(id.keys[i]) != r.key) continue;
    if (r.src != SRC_ANY && unchecked(id.srcs[i]) != r.src) continue;
    found = true;
    const v = unchecked(id.vals[i]);
    for (let j = 0; j < r.values.length; j++) {
      if (unchecked(r.values[j]) == v) {
        valueIn = true;
        break;
      }
    }
    if (valueIn) break;
  }
  if (r.op == OP_IN) return valueIn;
  if (r.op == OP_NOT_IN) return !valueIn;
  if (r.op == OP_EXISTS) return found;
  if (r.op == OP_DOES_NOT_EXIST) return !found;
  return false;
}

/** Evaluates a selector against one identity, without the cache. */
export function selectorMatches(sel: Selector, id: Identity): bool {
  if (!id.alive) return false;
  if (sel.kind == SEL_ALL) return true;
  if (sel.kind == SEL_LABELS) {
    for (let i = 0; i < sel.reqs.length; i++) {
      if (!requirementHolds(unchecked(sel.reqs[i]), id)) return false;
    }
    return true;
  }
  if (sel.kind == SEL_CIDR) {
    const p = id.cidr;
    if (p === null) return false;
    if (!sel.cidr.contains(p)) return false;
    for (let i = 0; i < sel.excepts.length; i++) {
      if (unchecked(sel.excepts[i]).contains(p)) return false;
    }
    return true;
  }
  return false; // SEL_NONE
}

/** Cached membership of identity slot `slot` in selector `s`. */

export function selects(s: i32, slot: i32): bool {
  const bits = unchecked(selectors[s]).bits;
  const w = slot >> 5;
  if (w >= bits.length) return false;
  return (unchecked(bits[w]) & (1 << (slot & 31))) != 0;
}

function setBit(sel: Selector, slot: i32, on: bool): void {
  const w = slot >> 5;
  while (sel.bits.length <= w) sel.bits.push(0);
  if (on) sel.bits[w] = sel.bits[w] | (1 << (slot & 31));
  else sel.bits[w] = sel.bits[w] & ~(1 << (slot & 31));
}

/** Recomputes one identity slot's membership in every selector (identity added or changed). */
export function cacheUpdateIdentity(slot: i32): void {
  const id = unchecked(identities[slot]);
  for (let s = 0; s < selectors.length; s++) {
    const sel = unchecked(selectors[s]);
    setBit(sel, slot, selectorMatches(sel, id));
  }
}

/** Recomputes the whole cache (rules replaced). */
/** (key, value) → identity slots carrying that label (any source), for candidate pruning. */
function labelIndex(): Map<u64, Array<i32>> {
  const idx = new Map<u64, Array<i32>>();
  for (let slot = 0; slot < identities.length; slot++) {
    const id = unchecked(identities[slot]);
    if (!id.alive) continue;
    for (let i = 0; i < id.keys.length; i++) {
      const k = (<u64> unchecked(id.keys[i]) << 32) | <u64> unchecked(id.vals[i]);
      if (!idx.has(k)) idx.set(k, new Array<i32>());
      const list = idx.get(k);
      if (list.length == 0 || list[list.length - 1] != slot) list.push(slot);
    }
  }
  return idx;
}

/** The In requirement with the fewest candidate identities, or -1 when there is none. */
function narrowestIn(sel: Selector, idx: Map<u64, Array<i32>>): i32 {
  let best = -1;
  let bestCount = i32.MAX_VALUE;
  for (let r = 0; r < sel.reqs.length; r++) {
    const q = unchecked(sel.reqs[r]);
    if (q.op != OP_IN) continue;
    let n = 0;
    for (let v = 0; v < q.values.length; v++) {
      const k = (<u64> q.key << 32) | <u64> unchecked(q.values[v]);
      if (idx.has(k)) n += idx.get(k).length;
    }
    if (n < bestCount) {
      best = r;
      bestCount = n;
    }
  }
  return best;
}

/**
 * Recomputes the whole cache (rules replaced). A label selector with an In requirement is only
 * evaluated on the identities that carry one of that requirement's (key, value) pairs, which
 * every match must; the others are evaluated on every identity.
 */
export function cacheRebuild(): void {
  const idx = labelIndex();
  for (let s = 0; s < selectors.length; s++) {
    const sel = unchecked(selectors[s]);
    sel.bits = new Array<u32>((identities.length + 31) >> 5);
    const narrow = sel.kind == SEL_LABELS ? narrowestIn(sel, idx) : -1;
    if (narrow < 0) {
      for (let slot = 0; slot < identities.length; slot++) {
        if (selectorMatches(sel, unchecked(identities[slot]))) setBit(sel, slot, true);
      }
      continue;
    }
    const q = unchecked(sel.reqs[narrow]);
    for (let v = 0; v < q.values.length; v++) {
      const k = (<u64> q.key << 32) | <u64> unchecked(q.values[v]);
      if (!idx.has(k)) continue;
      const list = idx.get(k);
      for (let i = 0; i < list.length; i++) {
        const slot = unchecked(list[i]);
        if (selectorMatches(sel, unchecked(identities[slot]))) setBit(sel, slot, true);
      }
    }
  }
}

/** Calls back for each identity slot selected by `s`, in slot order. */
export function selectedSlots(s: i32, out: Array<i32>): void {
  const bits = unchecked(selectors[s]).bits;
  for (let w = 0; w < bits.length; w++) {
    let word = unchecked(bits[w]);
    while (word != 0) {
      const b = ctz<u32>(word);
      out.push((w << 5) + <i32> b);
      word &= word - 1;
    }
  }
}

export function isWildcardSelector(s: i32): bool {
  return unchecked(selectors[s]).kind == SEL_ALL;
}
