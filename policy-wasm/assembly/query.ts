// One verdict query with its explanation: (subject endpoint, direction, peer identity, protocol,
// port[, L7 request]) → verdict, drop reason, the deciding entry, the rules that select the
// subject, the deny and allow entries that matched, and the L7 outcome. Uses resolveAudited(), the
// same function map-state computation uses (audit mode included). queryVerdict() is the same
// evaluation without the explanation, for the L7 proxy's per-request path.

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
  EpContext,
  resolveAudited,
} from "./resolve";
import { MSG_QUERY } from "./messages";
import { httpCheck, readHttpRequest } from "./http";
import { kafkaCheck, readKafkaRequest } from "./kafka";
import { dnsCheck } from "./dns";
import { L7Result } from "./l7";
import { ensureOutput, output_ptr, setOutputLen } from "./io";
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

/** One evaluated query: the verdict, its explanation (when asked for) and the L7 outcome. */
class Evaluation {
  verdict: i32 = VERDICT_NONE;
  decided: u8 = 0;
  reason: i32 = 0;
  cookie: u32 = 0;
  entry: i32 = -1;
  dir: u8 = 0;
  ctx: EpContext | null = null;
  denies: Array<i32> = new Array<i32>();
  allows: Array<i32> = new Array<i32>();
  peerOnly: Array<i32> = new Array<i32>();
  narrowed: Array<i32> = new Array<i32>();
  l7: Array<i32> = new Array<i32>();
  l7res: L7Result = new L7Result();
  covering: Array<i32> = new Array<i32>();

  /** Empties the evaluation for the next query, keeping its arrays' room. */
  reset(): Evaluation {
    this.verdict = VERDICT_NONE;
    this.decided = 0;
    this.reason = 0;
    this.cookie = 0;
    this.entry = -1;
    this.dir = 0;
    this.ctx = null;
    this.denies.length = 0;
    this.allows.length = 0;
    this.peerOnly.length = 0;
    this.narrowed.length = 0;
    this.l7.length = 0;
    this.l7res = NOT_EVALUATED;
    this.covering.length = 0;
    return this;
  }
}

/** The L7 outcome of a query whose L7 part was not evaluated (never written to). */
const NOT_EVALUATED = new L7Result();
/** One evaluation reused by every query: queries are not re-entrant, and this spares the GC. */
const scratch = new Evaluation();

/**
 * Evaluates the query message the host wrote (`len` bytes); ST_OK and the result in `ev`, or a
 * status. Without `explain` the lists that only explain the verdict are left empty; the verdict
 * and the L7 outcome are the same either way.
 */
function evaluate(len: i32, explain: bool, ev: Evaluation): i32 {
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
  ev.ctx = ctx;
  ev.dir = dir;

  const denies = ev.denies;
  const allows = ev.allows;
  const peerOnly = ev.peerOnly;
  const narrowed = ev.narrowed;
  const covering = ev.covering;
  const list = ctx.entriesOf(dir);
  for (let i = 0; i < list.length; i++) {
    const ei = list[i];
    const e = entries[ei];
    if (!entryMatchesPeer(ctx, e, slot)) {
      if (explain && entryNarrowedByRequires(ctx, e, slot)) narrowed.push(ei);
      continue;
    }
    if (!entryCoversPort(ctx, ei, peerId, proto, port)) {
      if (explain) peerOnly.push(ei);
      continue;
    }
    covering.push(ei);
    if (!explain) continue;
    if (e.deny) denies.push(ei);
    else allows.push(ei);
  }

  let verdict = VERDICT_NONE;
  let decided: u8 = 0;
  let reason = 0;
  let cookie: u32 = 0;
  let entry = -1;
  const l7 = ev.l7;
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

  if (verdict == VERDICT_REDIRECT && l7kind != L7_NONE) {
    ev.l7res = checkL7(r, l7kind, l7);
    if (r.failed) return ST_TRUNCATED;
  }
  ev.verdict = verdict;
  ev.decided = decided;
  ev.reason = reason;
  ev.cookie = cookie;
  ev.entry = entry;
  return ST_OK;
}

/** query(): the verdict with its full explanation (query_codec.ts decodeQuery). */
export function query(len: i32): i32 {
  const ev = scratch.reset();
  const st = evaluate(len, true, ev);
  if (st != ST_OK) return st;
  const ctx = ev.ctx!;
  const dir = ev.dir;
  const verdict = ev.verdict;
  const decided = ev.decided;
  const reason = ev.reason;
  const cookie = ev.cookie;
  const entry = ev.entry;
  const denies = ev.denies;
  const allows = ev.allows;
  const peerOnly = ev.peerOnly;
  const narrowed = ev.narrowed;
  const l7 = ev.l7;
  const l7res = ev.l7res;

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

/**
 * The verdict alone, for the L7 proxy's per-request path: same evaluation as query(), no
 * explanation. Output (16 bytes): verdict u8, L7 status u8, u16 0, cookie u32, L7 entry i32,
 * L7 rule i32.
 */
export function queryVerdict(len: i32): i32 {
  const ev = scratch.reset();
  const st = evaluate(len, false, ev);
  if (st != ST_OK) return st;
  ensureOutput(16);
  const out = output_ptr();
  store<u8>(out, <u8> ev.verdict);
  store<u8>(out, ev.l7res.status, 1);
  store<u16>(out, 0, 2);
  store<u32>(out, ev.cookie, 4);
  store<i32>(out, ev.l7res.entry, 8);
  store<i32>(out, ev.l7res.rule, 12);
  setOutputLen(16);
  return ST_OK;
}
