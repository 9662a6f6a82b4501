// Policy resolution for one subject endpoint (POLICY-SEMANTICS §5):
//
//  1. The rules that select the endpoint (subject selector × the endpoint's identity) apply;
//     a direction is default-deny when any of them asks for it (enforcement "always": always;
//     "never": nothing is enforced).
//  2. At a point (direction, peer, protocol, port) the covering entries are the allow and deny
//     entries whose peer selectors select the peer (endpoint selectors narrowed by every
//     fromRequires/toRequires of the selecting rules) and whose ports contain the point; entries
//     without ports (L3) cover every port and protocol, ICMP included.
//  3. Deny wins: any covering deny entry drops (reason 181), whatever the allows.
//  4. Allows form a union. If one covering allow has no L7 rules, the point is plainly allowed:
//     L7 wildcarding is per peer, because only entries selecting this peer cover the point.
//     Otherwise the point is redirected to the proxy with the union of the covering L7 rules.
//  5. Host → local endpoint ingress (allow-localhost) is allowed where no rule decides.
//  6. Nothing covers the point: the direction's default (drop with 133 when default-deny).
//  7. Audit mode (rules of a policy annotated `cilia.io/policy-mode: audit`): the point is
//     resolved twice, over the enforcing rules' entries (with their default) and over all
//     entries (with the default all selecting rules give). The enforcing verdict stands, except
//     where it passes the packet plainly (allow, or no entry and not default-deny) and the full
//     resolution drops it: then the verdict is AUDIT (the packet passes and is reported) with the
//     would-be reason and the deciding deny entry's cookie (181), or cookie 0 when an audit rule's
//     default-deny decided (133). A redirect stays a redirect: enforcing L7 rules still apply.
//
// resolveAudited() (steps 3-5 and 7, over resolvePoint()) is the one implementation; queries
// (query.ts) and map-state computation (mapstate.ts) both call it, so a trace and the kernel's
// map always agree.

import {
  DIR_EGRESS,
  DIR_INGRESS,
  Endpoint,
  endpointsByIdentity,
  ENFORCE_ALWAYS,
  ENFORCE_NEVER,
  entries,
  Entry,
  ID_HOST,
  identities,
  identityIndex,
  options,
  Rule,
  rules,
} from "./model";
import { selectorsSelecting, selects } from "./selectors";
import { expandPorts, Interval } from "./ports";
import {
  DROP_POLICY,
  DROP_POLICY_DENY,
  VERDICT_ALLOW,
  VERDICT_AUDIT,
  VERDICT_DENY,
  VERDICT_NONE,
  VERDICT_REDIRECT,
} from "./drop_reasons.generated";

export class Decision {
  verdict: i32 = VERDICT_NONE;
  cookie: u32 = 0;
  /** The entry that decided (first deny, first plain allow, first L7 allow), or -1. */
  entry: i32 = -1;
  /** For REDIRECT: the entries whose L7 rules apply, ascending. */
  l7: Array<i32> = new Array<i32>();
  /** Allowed by the allow-localhost fallback. */
  localhost: bool = false;
  /** For AUDIT: the drop reason the packet would have had (DROP_POLICY_DENY or DROP_POLICY). */
  reason: i32 = 0;

  equals(o: Decision): bool {
    if (this.verdict != o.verdict || this.cookie != o.cookie) return false;
    if (this.reason != o.reason) return false;
    if (this.l7.length != o.l7.length) return false;
    for (let i = 0; i < this.l7.length; i++) if (this.l7[i] != o.l7[i]) return false;
    return true;
  }
}

/** Set when a point mixes L7 families (HTTP and Kafka on one port for one peer). */
export let l7ConflictA: i32 = -1;
export let l7ConflictB: i32 = -1;

export function clearL7Conflict(): void {
  l7ConflictA = -1;
  l7ConflictB = -1;
}

/** Steps 3-5 for the covering entries (ascending indices). */
export function resolvePoint(covering: Array<i32>, localhostFallback: bool): Decision {
  const d = new Decision();
  for (let i = 0; i < covering.length; i++) {
    const e = entries[covering[i]];
    if (e.deny) {
      d.verdict = VERDICT_DENY;
      d.cookie = e.cookie;
      d.entry = covering[i];
      return d;
    }
  }
  let firstAllow = -1;
  for (let i = 0; i < covering.length; i++) {
    const ei = covering[i];
    const e = entries[ei];
    if (firstAllow < 0) firstAllow = ei;
    if (e.l7 == 0) {
      d.verdict = VERDICT_ALLOW;
      d.cookie = e.cookie;
      d.entry = ei;
      d.l7.length = 0;
      return d;
    }
    if (d.l7.length > 0 && entries[d.l7[0]].l7 != e.l7 && l7ConflictA < 0) {
      l7ConflictA = d.l7[0];
      l7ConflictB = ei;
    }
    d.l7.push(ei);
  }
  if (firstAllow >= 0) {
    d.verdict = VERDICT_REDIRECT;
    d.entry = firstAllow;
    d.cookie = entries[firstAllow].cookie;
    return d;
  }
  if (localhostFallback) {
    d.verdict = VERDICT_ALLOW;
    d.localhost = true;
  }
  return d;
}

function audited(full: Decision, reason: i32): Decision {
  const d = new Decision();
  d.verdict = VERDICT_AUDIT;
  d.reason = reason;
  if (reason == DROP_POLICY_DENY) {
    d.cookie = full.cookie;
    d.entry = full.entry;
  }
  return d;
}

/** Steps 3-5 and 7 for the covering entries of `dir` (ascending indices). */
export function resolveAudited(
  ctx: EpContext,
  dir: u8,
  covering: Array<i32>,
  fallback: bool,
): Decision {
  const full = resolvePoint(covering, fallback);
  if (!ctx.audits(dir)) return full;
  const enforcing = new Array<i32>();
  for (let i = 0; i < covering.length; i++) {
    if (!rules[entries[covering[i]].rule].audit) enforcing.push(covering[i]);
  }
  const d = enforcing.length == covering.length ? full : resolvePoint(enforcing, fallback);
  if (d.verdict == VERDICT_DENY || d.verdict == VERDICT_REDIRECT) return d;
  if (d.verdict == VERDICT_NONE && ctx.defaultDeny(dir)) return d;
  if (full.verdict == VERDICT_DENY) return audited(full, DROP_POLICY_DENY);
  if (full.verdict == VERDICT_NONE && ctx.defaultDenyAudit(dir)) return audited(full, DROP_POLICY);
  return d;
}

/** What applies to one subject endpoint: selecting rules, defaults, entries per direction. */
export class EpContext {
  ep: Endpoint;
  slot: i32 = -1;
  selecting: Array<i32> = new Array<i32>();
  enforcementOff: bool = false;
  ddIngress: bool = false;
  ddEgress: bool = false;
  ddRuleIngress: i32 = -1;
  ddRuleEgress: i32 = -1;
  /** Audit mode: the first audit rule that asks for default-deny, per direction, or -1. */
  ddAuditRuleIngress: i32 = -1;
  ddAuditRuleEgress: i32 = -1;
  /** Audit mode: some audit rule selecting the endpoint has entries or default-deny there. */
  auditIngress: bool = false;
  auditEgress: bool = false;
  requiresIngress: Array<i32> = new Array<i32>();
  requiresEgress: Array<i32> = new Array<i32>();
  requiresIngressDeny: Array<i32> = new Array<i32>();
  requiresEgressDeny: Array<i32> = new Array<i32>();
  entriesIngress: Array<i32> = new Array<i32>();
  entriesEgress: Array<i32> = new Array<i32>();
  /** Port intervals of every entry whose ports do not depend on the peer, by entry index. */
  intervals: Map<i32, Array<Interval>> = new Map<i32, Array<Interval>>();

  constructor(ep: Endpoint) {
    this.ep = ep;
    if (identityIndex.has(ep.identity)) this.slot = identityIndex.get(ep.identity);
  }

  entriesOf(dir: u8): Array<i32> {
    return dir == DIR_INGRESS ? this.entriesIngress : this.entriesEgress;
  }

  /** The requirements that narrow the endpoint selectors of allow (or deny) entries of `dir`. */
  requiresOf(dir: u8, deny: bool): Array<i32> {
    if (deny) return dir == DIR_INGRESS ? this.requiresIngressDeny : this.requiresEgressDeny;
    return dir == DIR_INGRESS ? this.requiresIngress : this.requiresEgress;
  }

  defaultDeny(dir: u8): bool {
    return dir == DIR_INGRESS ? this.ddIngress : this.ddEgress;
  }

  defaultDenyRule(dir: u8): i32 {
    return dir == DIR_INGRESS ? this.ddRuleIngress : this.ddRuleEgress;
  }

  /** Not default-deny by the enforcing rules, but by an audit rule (step 7). */
  defaultDenyAudit(dir: u8): bool {
    return !this.defaultDeny(dir) && this.defaultDenyAuditRule(dir) >= 0;
  }

  defaultDenyAuditRule(dir: u8): i32 {
    return dir == DIR_INGRESS ? this.ddAuditRuleIngress : this.ddAuditRuleEgress;
  }

  audits(dir: u8): bool {
    return dir == DIR_INGRESS ? this.auditIngress : this.auditEgress;
  }

  /** Allow-localhost applies to ingress from the host identity. */
  localhostFallback(dir: u8, peerId: u32): bool {
    return dir == DIR_INGRESS && options.allowLocalhost && peerId == ID_HOST;
  }
}

function addRule(ctx: EpContext, ri: i32, rule: Rule): void {
  ctx.selecting.push(ri);
  if (rule.audit) {
    if (rule.ddIngress && ctx.ddAuditRuleIngress < 0) ctx.ddAuditRuleIngress = ri;
    if (rule.ddEgress && ctx.ddAuditRuleEgress < 0) ctx.ddAuditRuleEgress = ri;
    if (rule.ddIngress) ctx.auditIngress = true;
    if (rule.ddEgress) ctx.auditEgress = true;
  } else {
    if (rule.ddIngress && ctx.ddRuleIngress < 0) ctx.ddRuleIngress = ri;
    if (rule.ddEgress && ctx.ddRuleEgress < 0) ctx.ddRuleEgress = ri;
  }
  for (let i = 0; i < rule.requiresIngress.length; i++) {
    ctx.requiresIngress.push(rule.requiresIngress[i]);
  }
  for (let i = 0; i < rule.requiresEgress.length; i++) {
    ctx.requiresEgress.push(rule.requiresEgress[i]);
  }
  for (let i = 0; i < rule.requiresIngressDeny.length; i++) {
    ctx.requiresIngressDeny.push(rule.requiresIngressDeny[i]);
  }
  for (let i = 0; i < rule.requiresEgressDeny.length; i++) {
    ctx.requiresEgressDeny.push(rule.requiresEgressDeny[i]);
  }
  for (let i = 0; i < rule.entries.length; i++) {
    const ei = rule.entries[i];
    const e = entries[ei];
    if (e.dir == DIR_INGRESS) ctx.entriesIngress.push(ei);
    else if (e.dir == DIR_EGRESS) ctx.entriesEgress.push(ei);
    if (rule.audit && e.dir == DIR_INGRESS) ctx.auditIngress = true;
    if (rule.audit && e.dir == DIR_EGRESS) ctx.auditEgress = true;
    if (e.egressNamed) continue;
    const list = new Array<Interval>();
    expandPorts(ei, e, ctx.ep, 0, list);
    ctx.intervals.set(ei, list);
  }
}

let contexts = new Map<u32, EpContext>();

/** Drops every cached context; called by every message that changes rules, identities or endpoints. */
export function invalidateContexts(): void {
  contexts = new Map<u32, EpContext>();
}

/**
 * Drops the cached contexts of the endpoints whose own identity is `identity` (it was added,
 * replaced or removed). A context depends on identities only through its endpoint's identity:
 * which rules select it. Peers are read from the selector cache when resolving.
 */
export function invalidateContextsOf(identity: u32): void {
  if (!endpointsByIdentity.has(identity)) return;
  const list = endpointsByIdentity.get(identity);
  for (let i = 0; i < list.length; i++) dropContext(list[i]);
}

/** Drops the cached context of one endpoint (it was replaced or removed). */
export function dropContext(epId: u32): void {
  if (contexts.has(epId)) contexts.delete(epId);
}

/** The (cached) context of an endpoint. */
export function contextFor(ep: Endpoint): EpContext {
  if (contexts.has(ep.id)) {
    const c = contexts.get(ep.id);
    if (c.ep == ep) return c;
  }
  const c = buildContext(ep);
  contexts.set(ep.id, c);
  return c;
}

// Endpoint rules by subject selector, for the rules in force (rebuilt when they are replaced).
let subjectsOf: Array<Rule> | null = null;
let rulesBySubject = new Map<i32, Array<i32>>();

/** The endpoint rules (not node rules) whose subject selects identity slot `slot`, ascending. */
function rulesSelecting(slot: i32): Array<i32> {
  if (subjectsOf !== rules) {
    rulesBySubject = new Map<i32, Array<i32>>();
    for (let ri = 0; ri < rules.length; ri++) {
      const rule = rules[ri];
      if (rule.nodeSubject || rule.subject < 0) continue;
      if (!rulesBySubject.has(rule.subject)) rulesBySubject.set(rule.subject, new Array<i32>());
      rulesBySubject.get(rule.subject).push(ri);
    }
    subjectsOf = rules;
  }
  const sels = new Array<i32>();
  selectorsSelecting(slot, sels);
  const out = new Array<i32>();
  for (let i = 0; i < sels.length; i++) {
    const s = unchecked(sels[i]);
    if (!rulesBySubject.has(s)) continue;
    const list = rulesBySubject.get(s);
    for (let k = 0; k < list.length; k++) out.push(unchecked(list[k]));
  }
  out.sort((a, b) => a - b);
  return out;
}

export function buildContext(ep: Endpoint): EpContext {
  const ctx = new EpContext(ep);
  if (options.enforcement == ENFORCE_NEVER) {
    ctx.enforcementOff = true;
    return ctx;
  }
  if (ctx.slot >= 0 && identities[ctx.slot].alive) {
    const selecting = rulesSelecting(ctx.slot);
    for (let i = 0; i < selecting.length; i++) {
      const ri = unchecked(selecting[i]);
      addRule(ctx, ri, rules[ri]);
    }
  }
  ctx.entriesIngress.sort((a, b) => a - b);
  ctx.entriesEgress.sort((a, b) => a - b);
  ctx.ddIngress = ctx.ddRuleIngress >= 0;
  ctx.ddEgress = ctx.ddRuleEgress >= 0;
  if (options.enforcement == ENFORCE_ALWAYS) {
    ctx.ddIngress = true;
    ctx.ddEgress = true;
  }
  return ctx;
}

function satisfiesRequires(reqs: Array<i32>, slot: i32): bool {
  for (let i = 0; i < reqs.length; i++) if (!selects(reqs[i], slot)) return false;
  return true;
}

/** L3 match: does entry `e` select the peer in identity slot `slot` (-1: unknown identity)? */
export function entryMatchesPeer(ctx: EpContext, e: Entry, slot: i32): bool {
  if (e.wildcard) return true;
  if (slot < 0) return false;
  const reqs = ctx.requiresOf(e.dir, e.deny);
  for (let i = 0; i < e.peers.length; i++) {
    if (!selects(e.peers[i], slot)) continue;
    if (e.peerRequires[i] && !satisfiesRequires(reqs, slot)) continue;
    return true;
  }
  return false;
}

/** True when an endpoint selector of `e` selects the peer but fromRequires/toRequires reject it. */
export function entryNarrowedByRequires(ctx: EpContext, e: Entry, slot: i32): bool {
  if (e.wildcard || slot < 0) return false;
  for (let i = 0; i < e.peers.length; i++) {
    if (e.peerRequires[i] && selects(e.peers[i], slot)) return true;
  }
  return false;
}

/** The port intervals of entry `ei` for peer identity `peer` (cached unless peer-dependent). */
export function intervalsOf(ctx: EpContext, ei: i32, peer: u32): Array<Interval> {
  if (ctx.intervals.has(ei)) return ctx.intervals.get(ei);
  const list = new Array<Interval>();
  expandPorts(ei, entries[ei], ctx.ep, peer, list);
  return list;
}

/** L4 match: does entry `ei` cover (proto, port) for `peer`? Entries without ports cover all. */
export function entryCoversPort(ctx: EpContext, ei: i32, peer: u32, proto: u8, port: i32): bool {
  if (entries[ei].ports.length == 0) return true;
  const list = intervalsOf(ctx, ei, peer);
  for (let i = 0; i < list.length; i++) {
    const iv = list[i];
    if (iv.proto == proto && port >= iv.lo && port <= iv.hi) return true;
  }
  return false;
}
