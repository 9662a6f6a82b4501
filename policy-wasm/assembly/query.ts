// One verdict query with its explanation: (subject endpoint, direction, peer identity, protocol,
// port[, L7 request]) → verdict, drop reason, the deciding entry, the rules that select the
// subject, the deny and allow entries that matched, and the L7 outcome. Uses resolveAudited(), the
// same function map-state computation uses (audit mode included).

import {
  DROP_POLICY,
  DROP_POLICY_DENY,
  VERDICT_ALLOW,
  VERDICT_AUDIT,
  VERDICT_DENY,
  VERDICT_NONE,
  VERDICT_REDIRECT,
} from "./drop_reasons.generated";
import { endpoints, entries, identityIndex, L7_DNS, L7_HTTP, L7_KAFKA, L7_NONE } from "./model";
import {
  contextFor,
  entryCoversPort,
  entryMatchesPeer,
  entryNarrowedByRequires,
  resolveAudited,
} from "./resolve";
import { MSG_QUERY } from "./messages";
import { httpCheck, readHttpRequest } from "./http";
import { kafkaCheck, readKafkaRequest } from "./kafka";
import { dnsCheck } from "./dns";
import { L7Result } from "./l7";
import { Reader, ST_BAD_HEADER, ST_OK, ST_TRUNCATED, ST_UNKNOWN_ENDPOINT, Writer } from "./wire";

export const DECIDED_ENFORCEMENT_NEVER: u8 = 1;
export const DECIDED_LOCALHOST: u8 = 2;
export const DECIDED_DENY_RULE: u8 = 3;
export const DECIDED_ALLOW_RULE: u8 = 4;
export const DECIDED_REDIRECT: u8 = 5;
export const DECIDED_DEFAULT_DENY: u8 = 6;
export const DECIDED_DEFAULT_ALLOW: u8 = 7;
/** Audit mode: passed; an audit rule's deny entry (or its default-deny) would have dropped it. */
export const DECIDED_AUDIT_DENY_RULE: u8 = 8;
export const DECIDED_AUDIT_DEFAULT_DENY: u8 = 9;

function writeList(w: Writer, list: Array<i32>): void {
  w.u32(<u32> list.length);
  for (let i = 0; i < list.length; i++) w.i32(list[i]);
}

/** Evaluates the L7 request read from `r` (kind `kind`) against the entries in `l7`. */
function checkL7(r: Reader, kind: u8, l7: Array<i32>): L7Result {
  if (kind == L7_HTTP) return httpCheck(readHttpRequest(r), l7);
  if (kind == L7_KAFKA) return kafkaCheck(readKafkaRequest(r), l7);
  if (kind == L7_DNS) return dnsCheck(r.strOrEmpty(), l7);
  return new L7Result();
}

export function query(len: i32): i32 {
  const r = Reader.fromInput(len);
  if (!r.header(MSG_QUERY)) return ST_BAD_HEADER;
  const epId = r.u32();
  const dir = r.u8();
  const peerId = r.u32();
  const proto = r.u8();
  const port = <i32> r.u16();
  const l7kind = r.u8();
  if (r.failed) return ST_TRUNCATED;
  if (!endpoints.has(epId)) return ST_UNKNOWN_ENDPOINT;
  const ctx = contextFor(endpoints.get(epId));
  const slot = identityIndex.has(peerId) ? identityIndex.get(peerId) : -1;

  const denies = new Array<i32>();
  const allows = new Array<i32>();
  const peerOnly = new Array<i32>();
  const narrowed = new Array<i32>();
  const covering = new Array<i32>();
  const list = ctx.entriesOf(dir);
  for (let i = 0; i < list.length; i++) {
    const ei = list[i];
    const e = entries[ei];
    if (!entryMatchesPeer(ctx, e, slot)) {
      if (entryNarrowedByRequires(ctx, e, slot)) narrowed.push(ei);
      continue;
    }
    if (!entryCoversPort(ctx, ei, peerId, proto, port)) {
      peerOnly.push(ei);
      continue;
    }
    covering.push(ei);
    if (e.deny) denies.push(ei);
    else allows.push(ei);
  }

  let verdict = VERDICT_NONE;
  let decided: u8 = 0;
  let reason = 0;
  let cookie: u32 = 0;
  let entry = -1;
  const l7 = new Array<i32>();
  if (ctx.enforcementOff) {
    verdict = VERDICT_ALLOW;
    decided = DECIDED_ENFORCEMENT_NEVER;
  } else {
    const d = resolveAudited(ctx, dir, covering, ctx.localhostFallback(dir, peerId));
    verdict = d.verdict;
    cookie = d.cookie;
    entry = d.entry;
    for (let i = 0; i < d.l7.length; i++) l7.push(d.l7[i]);
    if (verdict == VERDICT_AUDIT) {
      decided = d.reason == DROP_POLICY_DENY ? DECIDED_AUDIT_DENY_RULE : DECIDED_AUDIT_DEFAULT_DENY;
      reason = d.reason;
    } else if (verdict == VERDICT_DENY) {
      decided = DECIDED_DENY_RULE;
      reason = DROP_POLICY_DENY;
    } else if (d.localhost) {
      decided = DECIDED_LOCALHOST;
    } else if (verdict == VERDICT_ALLOW) {
      decided = DECIDED_ALLOW_RULE;
    } else if (verdict == VERDICT_REDIRECT) {
      decided = DECIDED_REDIRECT;
    } else if (ctx.defaultDeny(dir)) {
      verdict = VERDICT_DENY;
      decided = DECIDED_DEFAULT_DENY;
      reason = DROP_POLICY;
    } else {
      verdict = VERDICT_ALLOW;
      decided = DECIDED_DEFAULT_ALLOW;
    }
  }

  let l7res = new L7Result();
  if (verdict == VERDICT_REDIRECT && l7kind != L7_NONE) {
    l7res = checkL7(r, l7kind, l7);
    if (r.failed) return ST_TRUNCATED;
  }

  const w = new Writer();
  w.u8(<u32> verdict);
  w.u8(decided);
  w.u16(<u32> reason);
  w.u32(cookie);
  w.i32(entry);
  w.u8(ctx.defaultDeny(dir) ? 1 : 0);
  w.u8(ctx.defaultDenyAudit(dir) ? 1 : 0);
  w.u16(0);
  // The enforcing rule that makes the direction default-deny, else the audit rule that would.
  const ddRule = ctx.defaultDenyRule(dir);
  w.i32(ddRule >= 0 ? ddRule : ctx.defaultDenyAuditRule(dir));
  writeList(w, ctx.selecting);
  writeList(w, denies);
  writeList(w, allows);
  writeList(w, peerOnly);
  writeList(w, l7);
  w.u8(l7res.status);
  w.i32(l7res.entry);
  w.i32(l7res.rule);
  w.i32(l7res.detail);
  writeList(w, narrowed);
  w.flush();
  return ST_OK;
}
