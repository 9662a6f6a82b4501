// Map-state: an endpoint's policy as the kernel looks it up. For each direction the output has
// entries {identity (0 = any), protocol (0 = any), port range} → verdict, built so that the
// datapath's lookup gives exactly resolveAudited()'s answer:
//
//  1. Entries of one (direction, identity) are disjoint in (protocol, port), except that a
//     protocol-0 entry stands for every point no protocol-specific entry covers.
//  2. Identity-0 entries hold the resolution over wildcard entries (L4-only rules, `all`).
//  3. An identity that some non-wildcard entry selects gets its own entries, resolved over its
//     entries *and* the wildcard ones; where it has none, the kernel falls back to identity 0.
//  4. Where nothing covers a point there is no entry and the direction's default applies, except
//     under an audit rule's default-deny alone: there the entries say AUDIT (resolve.ts, step 7),
//     so identity 0 gets a protocol-0 AUDIT entry that stands for every uncovered point.
//
// Identities selected by the same set of entries share one partition (computed once).

import {
  DIR_EGRESS,
  DIR_INGRESS,
  Endpoint,
  endpoints,
  endpointsByIdentity,
  entries,
  Entry,
  identities,
  identityIndex,
  namedPortsByIdentity,
  rules,
  selectors,
} from "./model";
import {
  clearL7Conflict,
  contextFor,
  Decision,
  entryMatchesPeer,
  EpContext,
  intervalsOf,
  l7ConflictA,
  l7ConflictB,
  resolveAudited,
} from "./resolve";
import { PeerSets } from "./peer_sets";
import { selectorsSelecting } from "./selectors";
import { Interval } from "./ports";
import { VERDICT_ALLOW, VERDICT_NONE } from "./drop_reasons.generated";
import { ST_L7_CONFLICT, ST_OK, ST_UNKNOWN_ENDPOINT, Writer } from "./wire";

class Segment {
  /** Index of the decision's L7 entry set in the output's table, -2 until first emitted. */
  l7: i32 = -2;
  constructor(public proto: u8, public lo: i32, public hi: i32, public d: Decision) {}
}

function sortedUnique(a: Array<i32>): Array<i32> {
  a.sort((x, y) => x - y);
  const out = new Array<i32>();
  for (let i = 0; i < a.length; i++) {
    if (out.length == 0 || out[out.length - 1] != a[i]) out.push(a[i]);
  }
  return out;
}

/**
 * Under an audit rule's default-deny alone, identity 0 has a protocol-0 AUDIT entry (4.), so a
 * point that resolves to NONE (only audit rules' allows cover it) cannot be left without an
 * entry: the kernel would fall back to that AUDIT. It is not default-deny, so it is an allow.
 */
function resolveEntry(ctx: EpContext, dir: u8, covering: Array<i32>, fallback: bool): Decision {
  const d = resolveAudited(ctx, dir, covering, fallback);
  if (d.verdict != VERDICT_NONE || !ctx.defaultDenyAudit(dir)) return d;
  const allow = new Decision();
  allow.verdict = VERDICT_ALLOW;
  return allow;
}

/** Partitions the (protocol, port) space for one set of covering-candidate entries. */
function partition(
  ctx: EpContext,
  dir: u8,
  set: Array<i32>,
  fallback: bool,
  peer: u32,
): Array<Segment> {
  const l3 = new Array<i32>();
  const ivs = new Array<Interval>();
  for (let i = 0; i < set.length; i++) {
    const ei = set[i];
    if (entries[ei].ports.length == 0) {
      l3.push(ei);
      continue;
    }
    const list = intervalsOf(ctx, ei, peer);
    for (let j = 0; j < list.length; j++) ivs.push(list[j]);
  }
  const out = new Array<Segment>();
  const base = resolveEntry(ctx, dir, l3, fallback);
  if (base.verdict != VERDICT_NONE) out.push(new Segment(0, 0, 65535, base));
  const protos = new Array<i32>();
  for (let i = 0; i < ivs.length; i++) protos.push(<i32> ivs[i].proto);
  const plist = sortedUnique(protos);
  for (let pi = 0; pi < plist.length; pi++) {
    const proto = <u8> plist[pi];
    const bounds = new Array<i32>();
    for (let i = 0; i < ivs.length; i++) {
      const iv = ivs[i];
      if (iv.proto != proto) continue;
      bounds.push(iv.lo);
      bounds.push(iv.hi + 1);
    }
    const b = sortedUnique(bounds);
    let open: Segment | null = null;
    for (let k = 0; k + 1 < b.length; k++) {
      const lo = b[k];
      const hi = b[k + 1] - 1;
      const covering = new Array<i32>();
      for (let i = 0; i < l3.length; i++) covering.push(l3[i]);
      for (let i = 0; i < ivs.length; i++) {
        const iv = ivs[i];
        if (iv.proto == proto && iv.lo <= lo && iv.hi >= hi) covering.push(iv.entry);
      }
      const d = resolveEntry(ctx, dir, sortedUnique(covering), fallback);
      if (d.equals(base)) {
        open = null;
        continue;
      }
      if (open !== null && open.hi + 1 == lo && open.d.equals(d)) {
        open.hi = hi;
        continue;
      }
      open = new Segment(proto, lo, hi, d);
      out.push(open);
    }
  }
  return out;
}

function signature(set: Array<i32>, fallback: bool): string {
  let s = fallback ? "h" : "-";
  for (let i = 0; i < set.length; i++) s += "," + set[i].toString();
  return s;
}

/** Accumulates map-state entries and the table of distinct L7 entry sets. */
class Output {
  w: Writer = new Writer();
  count: i32 = 0;
  countAt: i32 = 0;
  l7Sets: Array<Array<i32>> = new Array<Array<i32>>();
  l7Index: Map<string, i32> = new Map<string, i32>();

  l7SetId(l7: Array<i32>): i32 {
    if (l7.length == 0) return -1;
    const key = signature(l7, false);
    if (this.l7Index.has(key)) return this.l7Index.get(key);
    const id = this.l7Sets.length;
    this.l7Sets.push(l7);
    this.l7Index.set(key, id);
    return id;
  }

  /** Writes 20 bytes per segment; segments (shared by identities) belong to this output. */
  emit(dir: u8, identity: u32, segs: Array<Segment>): void {
    this.w.reserve(segs.length * 20);
    for (let i = 0; i < segs.length; i++) {
      const s = unchecked(segs[i]);
      if (s.l7 == -2) s.l7 = this.l7SetId(s.d.l7);
      const p = this.w.end();
      store<u8>(p, dir);
      store<u8>(p, s.proto, 1);
      store<u16>(p, <u16> s.lo, 2);
      store<u16>(p, <u16> s.hi, 4);
      store<u8>(p, <u8> s.d.verdict, 6);
      store<u8>(p, 0, 7);
      store<u32>(p, identity, 8);
      store<u32>(p, s.d.cookie, 12);
      store<i32>(p, s.l7, 16);
      this.w.len += 20;
      this.count++;
    }
  }
}

function writeHeader(ctx: EpContext, w: Writer): void {
  w.u8(ctx.ddIngress ? 1 : 0);
  w.u8(ctx.ddEgress ? 1 : 0);
  w.u8(ctx.enforcementOff ? 1 : 0);
  // Audit mode, bit 0/1: an audit rule applies to ingress/egress; bit 2/3: only an audit rule
  // makes ingress/egress default-deny.
  let audit: u32 = ctx.auditIngress ? 1 : 0;
  if (ctx.auditEgress) audit |= 2;
  if (ctx.defaultDenyAudit(DIR_INGRESS)) audit |= 4;
  if (ctx.defaultDenyAudit(DIR_EGRESS)) audit |= 8;
  w.u8(audit);
  w.i32(ctx.ddRuleIngress);
  w.i32(ctx.ddRuleEgress);
  w.u32(<u32> ctx.selecting.length);
  for (let i = 0; i < ctx.selecting.length; i++) w.i32(ctx.selecting[i]);
}

/**
 * Files every identity that a non-wildcard entry of `dir` selects under the set of those entries
 * (peer_sets.ts), in ascending entry order.
 */
function groupPeers(ctx: EpContext, dir: u8, sets: PeerSets): void {
  const list = ctx.entriesOf(dir);
  for (let i = 0; i < list.length; i++) {
    const ei = unchecked(list[i]);
    const e: Entry = unchecked(entries[ei]);
    if (e.wildcard) continue;
    for (let p = 0; p < e.peers.length; p++) {
      // A slot the peer selects matches unless fromRequires/toRequires narrow it (then another
      // peer of the entry may still select it).
      const plain = !unchecked(e.peerRequires[p]);
      const sel = unchecked(selectors[unchecked(e.peers[p])]);
      if (!sel.dense) {
        const slots = sel.slots;
        for (let k = 0; k < slots.length; k++) {
          addPeer(ctx, sets, e, ei, plain, unchecked(slots[k]));
        }
        continue;
      }
      const bits = sel.bits;
      for (let w = 0; w < bits.length; w++) {
        let word = unchecked(bits[w]);
        while (word != 0) {
          addPeer(ctx, sets, e, ei, plain, (w << 5) + <i32> ctz<u32>(word));
          word &= word - 1;
        }
      }
    }
  }
}

// @ts-ignore: decorator

function addPeer(ctx: EpContext, sets: PeerSets, e: Entry, ei: i32, plain: bool, slot: i32): void {
  if (!plain && !entryMatchesPeer(ctx, e, slot)) return;
  sets.add(slot, ei);
}

function wildcards(ctx: EpContext, dir: u8): Array<i32> {
  const out = new Array<i32>();
  const list = ctx.entriesOf(dir);
  for (let i = 0; i < list.length; i++) if (entries[list[i]].wildcard) out.push(list[i]);
  return out;
}

/** The entries of set `s` and the wildcard entries, ascending (the two never share one). */
function withWildcards(sets: PeerSets, s: i32, wild: Array<i32>): Array<i32> {
  const own = new Array<i32>();
  sets.entriesOf(s, own);
  const out = new Array<i32>();
  let i = 0;
  let j = 0;
  while (i < own.length || j < wild.length) {
    if (j >= wild.length || (i < own.length && unchecked(own[i]) < unchecked(wild[j]))) {
      out.push(unchecked(own[i++]));
    } else out.push(unchecked(wild[j++]));
  }
  return out;
}

/** Emits one direction: identity 0, then every identity with entries of its own (3.). */
function emitDirection(ctx: EpContext, dir: u8, out: Output): void {
  const wild = wildcards(ctx, dir);
  out.emit(dir, 0, partition(ctx, dir, wild, false, 0));
  const sets = new PeerSets();
  groupPeers(ctx, dir, sets);
  const hostSlot = hostSlotOf();
  if (dir == DIR_INGRESS && ctx.localhostFallback(dir, 1) && hostSlot >= 0) sets.mark(hostSlot);
  // Wildcard egress entries with named ports resolve per peer: every identity that has such a
  // port needs entries of its own (identity 0 cannot resolve a name).
  let wildNamed = false;
  for (let i = 0; i < wild.length; i++) if (entries[wild[i]].egressNamed) wildNamed = true;
  if (wildNamed) {
    const withPorts = namedPortsByIdentity.keys();
    for (let i = 0; i < withPorts.length; i++) {
      const id = withPorts[i];
      if (identityIndex.has(id)) sets.mark(identityIndex.get(id));
    }
  }
  // Per set: its entries with the wildcards, whether one has a peer-dependent named port, and
  // (computed on first use) its partition, shared by every identity in the set.
  const merged = new Array<Array<i32> | null>(sets.count);
  const named = new Array<i8>(sets.count);
  const memo = new Array<Array<Segment> | null>(sets.count);
  const slots = sets.takeSlots();
  for (let i = 0; i < slots.length; i++) {
    const slot = unchecked(slots[i]);
    const id = unchecked(identities[slot]);
    if (!id.alive) continue; // never in a selector's set (selectors.ts); checked once per peer
    const s = sets.setOf(slot);
    let set = unchecked(merged[s]);
    if (set === null) {
      set = withWildcards(sets, s, wild);
      unchecked(merged[s] = set);
      let n: i8 = 1;
      for (let k = 0; k < set.length; k++) if (entries[unchecked(set[k])].egressNamed) n = 2;
      unchecked(named[s] = n);
    }
    const peer = id.id;
    const fallback = slot == hostSlot && ctx.localhostFallback(dir, 1);
    let segs: Array<Segment>;
    if (fallback || unchecked(named[s]) == 2) segs = partition(ctx, dir, set, fallback, peer);
    else {
      const known = unchecked(memo[s]);
      if (known !== null) segs = known;
      else {
        segs = partition(ctx, dir, set, false, peer);
        unchecked(memo[s] = segs);
      }
    }
    out.emit(dir, peer, segs);
  }
}

/**
 * Emits only identity slot `slot`'s entries of one direction: the same entries emitDirection()
 * writes for it, found from the endpoint's entries alone (no walk over other identities).
 */
function emitDirectionFor(ctx: EpContext, dir: u8, out: Output, slot: i32): void {
  const id = identities[slot];
  if (!id.alive) return;
  const list = ctx.entriesOf(dir);
  const set = new Array<i32>();
  let own = false;
  let wildNamed = false;
  for (let i = 0; i < list.length; i++) {
    const ei = list[i];
    const e: Entry = entries[ei];
    if (e.wildcard) {
      set.push(ei);
      if (e.egressNamed) wildNamed = true;
    } else if (entryMatchesPeer(ctx, e, slot)) {
      set.push(ei);
      own = true;
    }
  }
  const host = slot == hostSlotOf() && ctx.localhostFallback(dir, 1);
  if (!own && !(dir == DIR_INGRESS && host) && !(wildNamed && namedPortsByIdentity.has(id.id))) {
    return;
  }
  out.emit(dir, id.id, partition(ctx, dir, sortedUnique(set), host, id.id));
}

/**
 * Whether emitDirectionFor() writes anything for slot `slot` in either direction: the endpoints
 * whose map-state a new identity in that slot changes.
 */
function hasEntriesFor(ctx: EpContext, slot: i32): bool {
  if (ctx.enforcementOff) return false;
  const id = identities[slot];
  const named = namedPortsByIdentity.has(id.id);
  for (let d: u8 = DIR_INGRESS; d <= DIR_EGRESS; d++) {
    if (d == DIR_INGRESS && slot == hostSlotOf() && ctx.localhostFallback(d, 1)) return true;
    const list = ctx.entriesOf(d);
    for (let i = 0; i < list.length; i++) {
      const e: Entry = entries[list[i]];
      if (e.wildcard) {
        if (named && e.egressNamed) return true;
      } else if (entryMatchesPeer(ctx, e, slot)) return true;
    }
  }
  return false;
}

// For each selector some non-wildcard entry names as a peer: the subject selectors of the
// endpoint rules holding such entries (rebuilt when the rules are replaced).
let peersOf: Array<Entry> | null = null;
let subjectsByPeer = new Map<i32, Array<i32>>();

/** The subject selectors of the endpoint rules with an entry naming one of `sels` as a peer. */
function subjectsNaming(sels: Array<i32>, out: Map<i32, bool>): void {
  if (peersOf !== entries) {
    subjectsByPeer = new Map<i32, Array<i32>>();
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i];
      if (e.wildcard || e.rule < 0 || e.rule >= rules.length) continue;
      const rule = rules[e.rule];
      if (rule.nodeSubject) continue;
      for (let p = 0; p < e.peers.length; p++) {
        if (!subjectsByPeer.has(e.peers[p])) subjectsByPeer.set(e.peers[p], new Array<i32>());
        subjectsByPeer.get(e.peers[p]).push(rule.subject);
      }
    }
    peersOf = entries;
  }
  for (let i = 0; i < sels.length; i++) {
    if (!subjectsByPeer.has(sels[i])) continue;
    const list = subjectsByPeer.get(sels[i]);
    for (let k = 0; k < list.length; k++) out.set(list[k], true);
  }
}

/**
 * The local endpoints those subject selectors select, through the endpoints-by-identity index;
 * null when a selector is dense or holds more identities than there are endpoints (then a walk
 * over the endpoints is cheaper).
 */
function endpointsSelectedBy(subjects: Array<i32>): Array<Endpoint> | null {
  const seen = new Map<u32, bool>();
  const out = new Array<Endpoint>();
  let budget = endpoints.size;
  for (let i = 0; i < subjects.length; i++) {
    const sel = selectors[subjects[i]];
    if (sel.dense) return null;
    budget -= sel.slots.length;
    if (budget < 0) return null;
    for (let k = 0; k < sel.slots.length; k++) {
      const id = identities[sel.slots[k]];
      if (!id.alive || !endpointsByIdentity.has(id.id)) continue;
      const eps = endpointsByIdentity.get(id.id);
      for (let j = 0; j < eps.length; j++) {
        if (seen.has(eps[j])) continue;
        seen.set(eps[j], true);
        out.push(endpoints.get(eps[j]));
      }
    }
  }
  return out;
}

/**
 * The local endpoints whose map-state has entries keyed by `identity` (after it was added):
 * output u32 count, then the endpoint ids. The selector cache says which selectors select it,
 * the rules which endpoint selectors name those as peers, the endpoints-by-identity index which
 * endpoints these select: other endpoints are not looked at (unless it is the host, or an
 * identity with named ports, which every endpoint's wildcard rules may concern).
 */
export function endpointsAffected(identity: u32): i32 {
  const w = new Writer();
  const ids = new Array<u32>();
  if (identityIndex.has(identity)) {
    const slot = identityIndex.get(identity);
    const sels = new Array<i32>();
    selectorsSelecting(slot, sels);
    const subjects = new Map<i32, bool>();
    subjectsNaming(sels, subjects);
    let list: Array<Endpoint> | null = new Array<Endpoint>();
    if (slot == hostSlotOf() || namedPortsByIdentity.has(identity)) list = null;
    else if (subjects.size > 0) list = endpointsSelectedBy(subjects.keys());
    if (list === null) list = endpoints.values();
    for (let i = 0; i < list.length; i++) {
      if (hasEntriesFor(contextFor(list[i]), slot)) ids.push(list[i].id);
    }
  }
  w.u32(<u32> ids.length);
  for (let i = 0; i < ids.length; i++) w.u32(ids[i]);
  w.flush();
  return ST_OK;
}

function hostSlotOf(): i32 {
  return identityIndex.has(1) ? identityIndex.get(1) : -1;
}

function writeMapState(ctx: EpContext, only: i32): i32 {
  clearL7Conflict();
  const out = new Output();
  writeHeader(ctx, out.w);
  out.countAt = out.w.len;
  out.w.u32(0);
  if (!ctx.enforcementOff && only < 0) {
    emitDirection(ctx, DIR_INGRESS, out);
    emitDirection(ctx, DIR_EGRESS, out);
  } else if (!ctx.enforcementOff) {
    emitDirectionFor(ctx, DIR_INGRESS, out, only);
    emitDirectionFor(ctx, DIR_EGRESS, out, only);
  }
  out.w.patchU32(out.countAt, <u32> out.count);
  out.w.u32(<u32> out.l7Sets.length);
  for (let i = 0; i < out.l7Sets.length; i++) {
    const set = out.l7Sets[i];
    out.w.u32(<u32> set.length);
    for (let k = 0; k < set.length; k++) out.w.i32(set[k]);
  }
  if (l7ConflictA >= 0) {
    const w = new Writer();
    w.i32(l7ConflictA);
    w.i32(l7ConflictB);
    w.flush();
    return ST_L7_CONFLICT;
  }
  out.w.flush();
  return ST_OK;
}

/** Full map-state of endpoint `epId`. */
export function mapstateCompute(epId: u32): i32 {
  if (!endpoints.has(epId)) return ST_UNKNOWN_ENDPOINT;
  return writeMapState(contextFor(endpoints.get(epId)), -1);
}

/** The entries of endpoint `epId` keyed by one identity (incremental identity add). */
export function mapstateForIdentity(epId: u32, identity: u32): i32 {
  if (!endpoints.has(epId)) return ST_UNKNOWN_ENDPOINT;
  const ctx = contextFor(endpoints.get(epId));
  const slot = identityIndex.has(identity) ? identityIndex.get(identity) : -2;
  if (slot == -2) {
    const w = new Writer();
    writeHeader(ctx, w);
    w.u32(0);
    w.u32(0);
    w.flush();
    return ST_OK;
  }
  return writeMapState(ctx, slot);
}
