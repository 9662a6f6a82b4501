// Selector matching and the selector cache: for every selector, the set of identity slots it
// selects, kept as a sorted list or a bitset and updated incrementally as identities come and go. Label
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
  SEL_NONE,
  Selector,
  selectors,
  SRC_ANY,
} from "./model";

/** Requirement `r` on the label triples labels[lo..hi) (one identity's). */
function requirementHolds(r: Requirement, labels: StaticArray<u32>, lo: i32, hi: i32): bool {
  let found = false;
  let valueIn = false;
  for (let i = lo; i < hi; i += 3) {
    if (unchecked(labels[i + 1]) != r.key) continue;
    if (r.src != SRC_ANY && unchecked(labels[i]) != r.src) continue;
    found = true;
    const v = unchecked(labels[i + 2]);
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
    const labels = id.labels;
    for (let i = 0; i < sel.reqs.length; i++) {
      if (!requirementHolds(unchecked(sel.reqs[i]), labels, 0, labels.length)) return false;
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

// ---- the cached identity set of a selector ---------------------------------------------------
//
// A selector that selects few identities keeps them as a sorted slot list (4 bytes each), one
// that selects many as a bitset (one bit per slot): whichever is smaller. At 100k identities and
// 10,000 rules most selectors (subjects) select a handful, and bitsets alone would take 1.25 GB.

/** Membership of identity slot `slot` in selector `s`. */
export function selects(s: i32, slot: i32): bool {
  const sel = unchecked(selectors[s]);
  if (!sel.dense) return findSlot(sel.slots, slot) >= 0;
  const bits = sel.bits;
  const w = slot >> 5;
  if (w >= bits.length) return false;
  return (unchecked(bits[w]) & (1 << (slot & 31))) != 0;
}

/** Index of `slot` in the sorted list, or -(insertion point) - 1. */
function findSlot(list: Array<i32>, slot: i32): i32 {
  let lo = 0;
  let hi = list.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const v = unchecked(list[mid]);
    if (v < slot) lo = mid + 1;
    else if (v > slot) hi = mid - 1;
    else return mid;
  }
  return -lo - 1;
}

/** A sparse set becomes a bitset once the list would be larger than the bits. */
function sparseLimit(): i32 {
  return (identities.length + 31) >> 5;
}

function makeDense(sel: Selector, list: Array<i32>): void {
  const bits = new Array<u32>((identities.length + 31) >> 5);
  for (let i = 0; i < list.length; i++) {
    const slot = unchecked(list[i]);
    unchecked(bits[slot >> 5] = bits[slot >> 5] | (1 << (slot & 31)));
  }
  sel.bits = bits;
  sel.slots = new Array<i32>();
  sel.dense = true;
}

function insertAt(list: Array<i32>, at: i32, slot: i32): void {
  list.push(slot);
  for (let i = list.length - 1; i > at; i--) unchecked(list[i] = list[i - 1]);
  unchecked(list[at] = slot);
}

function setBit(sel: Selector, slot: i32, on: bool): void {
  if (!sel.dense) {
    const at = findSlot(sel.slots, slot);
    if (on && at < 0) {
      if (sel.slots.length + 1 > sparseLimit()) {
        sel.slots.push(slot);
        sel.slots.sort((x, y) => x - y);
        makeDense(sel, sel.slots);
        return;
      }
      insertAt(sel.slots, -at - 1, slot);
    } else if (!on && at >= 0) sel.slots.splice(at, 1);
    return;
  }
  const w = slot >> 5;
  if (!on && w >= sel.bits.length) return;
  while (sel.bits.length <= w) sel.bits.push(0);
  if (on) sel.bits[w] = sel.bits[w] | (1 << (slot & 31));
  else sel.bits[w] = sel.bits[w] & ~(1 << (slot & 31));
}

/** Stores the rebuilt set of `sel` from its matching slots (any order, duplicates allowed). */
function storeSet(sel: Selector, list: Array<i32>, ordered: bool): void {
  if (!ordered) list.sort((x, y) => x - y);
  let n = 0;
  for (let i = 0; i < list.length; i++) {
    const v = unchecked(list[i]);
    if (n > 0 && unchecked(list[n - 1]) == v) continue;
    unchecked(list[n++] = v);
  }
  list.length = n;
  sel.bits = new Array<u32>();
  sel.dense = false;
  if (n > sparseLimit()) makeDense(sel, list);
  else sel.slots = list;
}

// ---- the label index: (key, value) → identity slots -----------------------------------------
//
//  1. Every live identity's slot is in the list of each of its (key, value) labels (any source).
//  2. Lists may also hold stale slots (the identity went away or was replaced) and duplicates:
//     readers re-check with selectorMatches(). When stale slots outnumber live ones, the index
//     is rebuilt, so its size stays proportional to the live labels.

const labelSlots = new Map<u64, Array<i32>>();
let indexedLabels = 0;
let staleLabels = 0;

function labelKey(key: u32, val: u32): u64 {
  return (<u64> key << 32) | <u64> val;
}

function indexIdentity(slot: i32): void {
  const labels = unchecked(identities[slot]).labels;
  for (let i = 0; i < labels.length; i += 3) {
    const k = labelKey(unchecked(labels[i + 1]), unchecked(labels[i + 2]));
    if (!labelSlots.has(k)) labelSlots.set(k, new Array<i32>());
    const list = labelSlots.get(k);
    if (list.length == 0 || list[list.length - 1] != slot) {
      list.push(slot);
      indexedLabels++;
    }
  }
}

function rebuildLabelIndex(): void {
  labelSlots.clear();
  indexedLabels = 0;
  staleLabels = 0;
  for (let slot = 0; slot < identities.length; slot++) {
    if (unchecked(identities[slot]).alive) indexIdentity(slot);
  }
}

function labelCount(key: u32, val: u32): i32 {
  const k = labelKey(key, val);
  return labelSlots.has(k) ? labelSlots.get(k).length : 0;
}

// ---- the selector index: which selectors an identity could match ----------------------------
//
//  3. A label selector with an In requirement can only match identities that carry one of that
//     requirement's (key, value) pairs: it is filed under each of them (its narrowest In).
//  4. A label selector without In but with Exists is filed under the key.
//  5. Every other selector (only NotIn / DoesNotExist, empty, all) may match any identity and is
//     evaluated for every one (the slow path); CIDR selectors only for CIDR identities; a
//     selector that selects nothing is never evaluated.

let selByLabel = new Map<u64, Array<i32>>();
let selByKey = new Map<u32, Array<i32>>();
let selAlways = new Array<i32>();
let selCidr = new Array<i32>();
/** Per selector, the pass of candidatesOf() that last listed it (de-duplication). */
let selSeen = new Array<u32>();
let seenPass: u32 = 0;

function fileUnder<K>(m: Map<K, Array<i32>>, k: K, s: i32): void {
  if (!m.has(k)) m.set(k, new Array<i32>());
  m.get(k).push(s);
}

/** The In requirement with the fewest candidate identities, or -1 when there is none. */
function narrowestIn(sel: Selector): i32 {
  let best = -1;
  let bestCount = i32.MAX_VALUE;
  for (let r = 0; r < sel.reqs.length; r++) {
    const q = unchecked(sel.reqs[r]);
    if (q.op != OP_IN) continue;
    let n = 0;
    for (let v = 0; v < q.values.length; v++) n += labelCount(q.key, unchecked(q.values[v]));
    if (n < bestCount) {
      best = r;
      bestCount = n;
    }
  }
  return best;
}

function firstExists(sel: Selector): i32 {
  for (let r = 0; r < sel.reqs.length; r++) {
    if (unchecked(sel.reqs[r]).op == OP_EXISTS) return r;
  }
  return -1;
}

function rebuildSelectorIndex(): void {
  selByLabel = new Map<u64, Array<i32>>();
  selByKey = new Map<u32, Array<i32>>();
  selAlways = new Array<i32>();
  selCidr = new Array<i32>();
  selSeen = new Array<u32>(selectors.length);
  for (let s = 0; s < selectors.length; s++) {
    const sel = unchecked(selectors[s]);
    sel.narrow = -1;
    if (sel.kind == SEL_CIDR) selCidr.push(s);
    else if (sel.kind == SEL_ALL) selAlways.push(s);
    else if (sel.kind == SEL_LABELS) {
      sel.narrow = narrowestIn(sel);
      if (sel.narrow >= 0) {
        const q = unchecked(sel.reqs[sel.narrow]);
        for (let v = 0; v < q.values.length; v++) {
          fileUnder<u64>(selByLabel, labelKey(q.key, unchecked(q.values[v])), s);
        }
        continue;
      }
      const ex = firstExists(sel);
      if (ex >= 0) fileUnder<u32>(selByKey, unchecked(sel.reqs[ex]).key, s);
      else selAlways.push(s);
    }
  }
}

function addCandidates(list: Array<i32>, out: Array<i32>): void {
  for (let i = 0; i < list.length; i++) {
    const s = unchecked(list[i]);
    if (unchecked(selSeen[s]) == seenPass) continue;
    unchecked(selSeen[s] = seenPass);
    out.push(s);
  }
}

/** The selectors that could select identity `id` (3.-5.), each once. */
function candidatesOf(id: Identity, out: Array<i32>): void {
  seenPass++;
  if (seenPass == 0) {
    for (let s = 0; s < selSeen.length; s++) unchecked(selSeen[s] = 0);
    seenPass = 1;
  }
  addCandidates(selAlways, out);
  if (id.cidr !== null) addCandidates(selCidr, out);
  const labels = id.labels;
  for (let i = 0; i < labels.length; i += 3) {
    const key = unchecked(labels[i + 1]);
    const k = labelKey(key, unchecked(labels[i + 2]));
    if (selByLabel.has(k)) addCandidates(selByLabel.get(k), out);
    if (selByKey.has(key)) addCandidates(selByKey.get(key), out);
  }
}

/**
 * The selectors whose cached set holds identity slot `slot`, each once (any order): only the
 * candidates of the identity (3.-5.) can, so the others are not looked at.
 */
export function selectorsSelecting(slot: i32, out: Array<i32>): void {
  const id = unchecked(identities[slot]);
  if (!id.alive) return;
  const cand = new Array<i32>();
  candidatesOf(id, cand);
  for (let i = 0; i < cand.length; i++) {
    const s = unchecked(cand[i]);
    if (selects(s, slot)) out.push(s);
  }
}

/** Number of selectors evaluated by the last identity change (the engine's own counter). */
export let lastCandidates: i32 = 0;

/**
 * Identity slot `slot` now holds `id` (added, replaced, or gone when not alive); `old` is the
 * identity it held before, or null. Only the selectors that could select either are touched:
 * a bit is only ever set for a candidate of the identity in the slot (3.-5.).
 */
export function cacheUpdateIdentity(slot: i32, old: Identity | null): void {
  const id = unchecked(identities[slot]);
  const cand = new Array<i32>();
  if (old !== null) {
    candidatesOf(old, cand);
    for (let i = 0; i < cand.length; i++) {
      setBit(unchecked(selectors[unchecked(cand[i])]), slot, false);
    }
    staleLabels += old.labels.length / 3;
  }
  if (id.alive) {
    cand.length = 0;
    candidatesOf(id, cand);
    for (let i = 0; i < cand.length; i++) {
      const sel = unchecked(selectors[unchecked(cand[i])]);
      if (selectorMatches(sel, id)) setBit(sel, slot, true);
    }
    indexIdentity(slot);
  }
  lastCandidates = cand.length;
  if (staleLabels > 64 && staleLabels * 2 > indexedLabels) rebuildLabelIndex();
}

/** One bit per identity slot: alive. */
function aliveBits(): StaticArray<u32> {
  const n = identities.length;
  const bits = new StaticArray<u32>((n + 31) >> 5);
  for (let slot = 0; slot < n; slot++) {
    if (unchecked(identities[slot]).alive) {
      unchecked(bits[slot >> 5] = bits[slot >> 5] | (1 << (slot & 31)));
    }
  }
  return bits;
}

// The labels of every live identity copied into one array, slot by slot, for cacheRebuild(): it
// reads identities in the order of the label lists, and one compact array stays in the CPU's
// caches where 100k identity objects do not. Rebuilt by each cacheRebuild().
let flatLabels = new StaticArray<u32>(0);
let flatStart = new StaticArray<i32>(0);

function flattenLabels(): void {
  const n = identities.length;
  let total = 0;
  for (let slot = 0; slot < n; slot++) {
    const id = unchecked(identities[slot]);
    if (id.alive) total += id.labels.length;
  }
  flatLabels = new StaticArray<u32>(total);
  flatStart = new StaticArray<i32>(n + 1);
  let at = 0;
  for (let slot = 0; slot < n; slot++) {
    unchecked(flatStart[slot] = at);
    const id = unchecked(identities[slot]);
    if (!id.alive) continue;
    const labels = id.labels;
    memory.copy(
      changetype<usize>(flatLabels) + (<usize> at << 2),
      changetype<usize>(labels),
      <usize> labels.length << 2,
    );
    at += labels.length;
  }
  unchecked(flatStart[n] = at);
}

/** selectorMatches() of a label selector on a live identity, reading the flat labels. */
function labelsMatchFlat(sel: Selector, slot: i32): bool {
  const lo = unchecked(flatStart[slot]);
  const hi = unchecked(flatStart[slot + 1]);
  for (let i = 0; i < sel.reqs.length; i++) {
    if (!requirementHolds(unchecked(sel.reqs[i]), flatLabels, lo, hi)) return false;
  }
  return true;
}

/**
 * Recomputes the whole cache (rules replaced). A label selector with an In requirement is only
 * evaluated on the identities that carry one of that requirement's (key, value) pairs, which
 * every match must; the others are evaluated on every identity. Evaluation goes identity by
 * identity, each against every selector filed under the same label (or every wide selector), so
 * that an identity is read once per list rather than once per selector.
 */
export function cacheRebuild(): void {
  rebuildSelectorIndex();
  const found = new Array<Array<i32> | null>(selectors.length);
  const wide = new Array<i32>();
  for (let s = 0; s < selectors.length; s++) {
    const sel = unchecked(selectors[s]);
    unchecked(found[s] = new Array<i32>());
    if (sel.kind != SEL_NONE && sel.narrow < 0) wide.push(s);
  }
  if (wide.length > 0) {
    for (let slot = 0; slot < identities.length; slot++) {
      const id = unchecked(identities[slot]);
      if (!id.alive) continue;
      for (let i = 0; i < wide.length; i++) {
        const s = unchecked(wide[i]);
        if (selectorMatches(unchecked(selectors[s]), id)) unchecked(found[s])!.push(slot);
      }
    }
  }
  // Only label selectors are filed under a label (3.), and a stale slot's identity is not alive
  // or no longer has the label, which the requirement it is filed for then rejects.
  flattenLabels();
  const alive = aliveBits();
  const keys = selByLabel.keys();
  for (let k = 0; k < keys.length; k++) {
    const key = unchecked(keys[k]);
    if (!labelSlots.has(key)) continue;
    const list = labelSlots.get(key);
    const filed = selByLabel.get(key);
    for (let i = 0; i < list.length; i++) {
      const slot = unchecked(list[i]);
      if ((unchecked(alive[slot >> 5]) & (1 << (slot & 31))) == 0) continue;
      for (let j = 0; j < filed.length; j++) {
        const s = unchecked(filed[j]);
        if (labelsMatchFlat(unchecked(selectors[s]), slot)) unchecked(found[s])!.push(slot);
      }
    }
  }
  flatLabels = new StaticArray<u32>(0);
  flatStart = new StaticArray<i32>(0);
  for (let s = 0; s < selectors.length; s++) {
    const sel = unchecked(selectors[s]);
    storeSet(sel, unchecked(found[s])!, sel.narrow < 0);
  }
}

export function isWildcardSelector(s: i32): bool {
  return unchecked(selectors[s]).kind == SEL_ALL;
}
