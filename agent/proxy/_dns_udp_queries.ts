// The DNS proxy UDP Worker's per-query path (dns_udp_worker.ts reads the datagrams and runs the
// loop): a query from its original destination to its answer and flow record. The verdict comes
// from the Worker's cache, else from the main thread; an allowed query goes out on a pooled
// upstream leg; its answer is released at once when the main thread said the endpoint holds its
// (name, address) pairs, else after the main thread learned them. Flow records and the refreshes
// of answers released at once go to the main thread in batches. It judges and learns nothing
// itself. Rules 1–4 are dns_udp_worker.ts's.

import type { ProxyMaps } from "../datapath/proxy_maps.ts";
import * as S from "../sys/sockets_ffi.ts";
import { DnsMessageError, type DnsQuery, makeResponse, RCODE } from "./dns_message.ts";
import { type DnsUdpLegs, usize } from "./_dns_udp_legs.ts";
import { DnsUdpMemo } from "./_dns_udp_memo.ts";
import { NO_DEST, PendingPool, type PooledPending } from "./_dns_udp_pending.ts";
import { blankParts, RecordBatcher, type RecordParts } from "./_dns_udp_records.ts";
import { type DnsUdpTrace, T } from "./_dns_udp_trace.ts";
import {
  type FromMain,
  KNOWN_MARGIN_MS,
  RECORD_BATCH_MS,
  type RecordBatch,
  SHARED,
  type ToMain,
  type WorkerStart,
} from "./_dns_udp_protocol.ts";

const scope = self as unknown as {
  postMessage(m: ToMain, transfer?: Transferable[]): void;
};

let cfg: WorkerStart;
let shared: Int32Array;
let maps: ProxyMaps;
let legs: DnsUdpLegs;
let trace: DnsUdpTrace | undefined;
const verdicts = new Map<string, { allowed: boolean; cookie: number }>();
/** `epId|names|ips` → until when (epoch ms) the datapath holds them (rule 3). */
const known = new Map<string, number>();
let generation = 0;
const waiting = new Map<number, PooledPending>();
let nextQid = 1;
/** Parsed queries, answers, addresses and keys reused while their bytes repeat. */
const memo = new DnsUdpMemo();
/** Per-query state, reused once a query is answered (_dns_udp_pending.ts). */
export const pool = new PendingPool();
const records = new RecordBatcher();
/** Answers released at once since the last batch (rule 3), by knownKey: the main thread extends them. */
const refresh = new Map<
  string,
  { epId: number; names: string[]; ips: { ip: string; ttl: number }[] }
>();
/** When the last batch of records went (the first record after a pause goes at once). */
let flushedAt = -Infinity;
/**
 * Tests only: a query for this name (CILIA_TEST_DNS_WORKER_FAULT, an FQDN) makes the loop throw,
 * as a bug would (the main thread then restarts the Worker).
 */
const faultName = envOf("CILIA_TEST_DNS_WORKER_FAULT");
let faulted = false;

function envOf(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

/** What the Worker set up at its start (the legs hand their answers and failures back here). */
export function initQueries(
  o: { cfg: WorkerStart; shared: Int32Array; maps: ProxyMaps; legs: DnsUdpLegs },
  tr: DnsUdpTrace | undefined,
): void {
  ({ cfg, shared, maps, legs } = o);
  trace = tr;
}

/** Throws once a query for the fault name was handled (tests: the loop fails as on a bug). */
export function throwIfFaulted(): void {
  if (faulted) throw new Error(`fault injected: a query for "${faultName}"`);
}

export function query(p: PooledPending, started: number): void {
  const client = memo.addrOf(p.addr);
  let o;
  try {
    o = maps.original(client.ip, client.port, cfg.port);
  } catch {
    o = undefined;
  }
  if (!o) return pool.give(p); // 1.
  p.o = o;
  p.client = client;
  let q: DnsQuery;
  try {
    p.qv = memo.queryInto(p.msg, p.own);
    q = p.q = p.own;
  } catch (err) {
    const error = err instanceof DnsMessageError ? err.message : String(err);
    const out = p.msg.length >= 12 ? makeResponse(p.msg, RCODE.FORMERR) : undefined;
    finish(p, { allowed: false, rcode: RCODE.FORMERR, error }, false, out);
    return;
  }
  if (faultName !== undefined && q.name === faultName) {
    faulted = true; // the loop throws once this round's datagrams are handled
    return pool.give(p);
  }
  checkGeneration();
  const v = verdicts.get(memo.verdictKey(o, q.name));
  if (v) return judged(p, v, started);
  if (waiting.size >= 4096) return pool.give(p); // the main thread is far behind: drop (the client retries)
  const qid = p.qid = nextQid++;
  waiting.set(qid, p);
  trace?.add(p.tr, T.main, 1);
  scope.postMessage({ t: "judge", qid, o, name: q.name });
}

function checkGeneration(): void {
  const g = Atomics.load(shared, SHARED.GENERATION);
  if (g === generation) return;
  generation = g;
  verdicts.clear();
  known.clear();
}

export function verdictFromMain(m: Extract<FromMain, { t: "verdict" }>): void {
  const p = waiting.get(m.qid);
  if (!p || p.qid !== m.qid) return; // (a pooled query awaits one answer: its qid)
  waiting.delete(m.qid);
  p.qid = 0;
  checkGeneration();
  const v = { allowed: m.allowed, cookie: m.cookie };
  if (m.generation === generation) { // 2.
    if (verdicts.size >= 10_000) verdicts.clear();
    verdicts.set(memo.verdictKey(p.o, p.q!.name), v);
  }
  judged(p, v);
}

/** `now`: the clock reading of the wake-up that read the query, when judged in it. */
function judged(p: PooledPending, v: { allowed: boolean; cookie: number }, now?: number): void {
  p.cookie = v.cookie;
  if (!v.allowed) {
    const rcode = cfg.rejectRcode;
    finish(p, { allowed: false, rcode }, false, makeResponse(p.msg, rcode));
    return;
  }
  const error = legs.forward(p, now);
  trace?.mark(p.tr, T.fwd);
  if (error !== undefined) finish(p, { allowed: true, rcode: RCODE.SERVFAIL, error }, true);
}

/** An answer from upstream for `p` (rule 3). */
export function answered(p: PooledPending, bytes: Uint8Array): boolean | void {
  const answer = memo.answerOf(p.q!, p.qv ?? -1, bytes);
  if (!answer) return false; // 4.
  p.answer = answer;
  if (answer.rcode !== RCODE.NOERROR || answer.ips.length === 0) {
    return finish(p, { allowed: true, rcode: answer.rcode }, false, bytes);
  }
  checkGeneration();
  const key = memo.knownKey(p.o.epId, answer);
  const until = known.get(key);
  if (until !== undefined && Date.now() + KNOWN_MARGIN_MS < until) {
    // One refresh per answer in a batch: the latest (its TTLs count from the main thread's now).
    if (refresh.get(key)?.ips !== answer.ips) {
      refresh.set(key, { epId: p.o.epId, names: answer.names, ips: answer.ips });
    }
    return finish(p, { allowed: true, rcode: answer.rcode }, false, bytes);
  }
  p.bytes = bytes.slice(); // kept until the main thread learned (bytes is a receive slot)
  const qid = p.qid = nextQid++;
  waiting.set(qid, p);
  trace?.add(p.tr, T.main, 2);
  scope.postMessage({ t: "learn", qid, epId: p.o.epId, names: answer.names, ips: answer.ips });
}

export function learnedFromMain(m: Extract<FromMain, { t: "learned" }>): void {
  const p = waiting.get(m.qid);
  if (!p?.answer || p.qid !== m.qid) return;
  waiting.delete(m.qid);
  p.qid = 0;
  if (m.error !== undefined) {
    const error = `cannot allow the answer's addresses: ${m.error}`;
    return finish(p, { allowed: true, rcode: RCODE.SERVFAIL, error }, true);
  }
  checkGeneration();
  if (m.until !== undefined && m.generation === generation) {
    if (known.size >= 10_000) known.clear();
    known.set(memo.knownKey(p.o.epId, p.answer), m.until);
  }
  finish(p, { allowed: true, rcode: p.answer.rcode }, false, p.bytes);
}

const parts: RecordParts = blankParts(NO_DEST);

/** Sends the reply (a made-up one when `servfail`), and records the query. */
export function finish(
  p: PooledPending,
  r: { allowed: boolean; rcode: number; error?: string },
  servfail: boolean,
  out?: Uint8Array,
): void {
  const reply = servfail ? makeResponse(p.msg, RCODE.SERVFAIL) : out;
  if (reply) S.libc().sendto(p.fd, reply, usize(reply.length), 0, p.addr, p.addr.length);
  trace?.mark(p.tr, T.sent);
  const r0 = parts; // one object, copied by add(): none per query
  r0.o = p.o;
  r0.client = p.client;
  r0.cookie = p.cookie ?? p.o.cookie;
  r0.query = p.q?.name ?? "";
  r0.qtype = p.q?.type ?? "";
  r0.allowed = r.allowed;
  r0.rcode = r.rcode;
  r0.answer = p.answer;
  r0.error = r.error;
  records.add(r0, performance.now() - p.started, Date.now());
  pool.give(p); // answered: nothing holds it any more (rules in _dns_udp_pending.ts)
}

/** How long epoll_wait may wait for the records' batch (ms; -1: no record waits). */
export function recordsDueIn(now: number): number {
  return records.length > 0 ? Math.max(1, Math.ceil(flushedAt + RECORD_BATCH_MS - now)) : -1;
}

/** Sends the records' batch when it is due (or full). */
export function flushIfDue(now: number): void {
  if (records.length > 0 && (now - flushedAt >= RECORD_BATCH_MS || records.length >= 256)) {
    flushRecords();
  }
}

export function flushRecords(): void {
  if (records.length === 0 && refresh.size === 0) return;
  const batch: RecordBatch = { records: records.take(), refresh: [...refresh.values()] };
  scope.postMessage({ t: "records", batch }, [batch.records.rows.buffer]);
  flushedAt = performance.now();
  refresh.clear();
}
