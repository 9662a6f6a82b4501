// The DNS proxy's UDP data path, in a Worker of its own (dns_udp_path.ts starts it), so that
// nothing else the agent does delays a query: one loop blocked in epoll_wait over the listener
// sockets, the upstream legs and a wake-up eventfd, on raw libc calls (agent/sys/sockets_ffi.ts),
// no Deno socket op. Per datagram: the original destination from the kernel (its own ProxyMaps
// fds), parse, the verdict from its cache (else asked of the main thread), the pooled upstream
// leg, the answer checked against the question, and the answer back. Flow records go to the main
// thread in batches. It judges and learns nothing itself: verdicts and learned addresses come
// from the main thread, and are dropped when the shared generation moves (the engine or the DNS
// cache changed). It runs in SCHED_FIFO when it may (a datagram wakes it at once). If its loop
// throws, it closes what only it knows of (its epoll, its map fds) and says so; the main thread
// closes its legs and starts another Worker on the same listeners (dns_udp_path.ts).
//
// Rules (as dns_proxy.ts, fail closed):
// 1. A datagram the kernel did not redirect gets no answer; one that does not parse gets FORMERR;
//    a refused name gets the reject rcode and is never forwarded.
// 2. A cached verdict is used only while the generation it was judged at is current.
// 3. An answer with addresses is released at once only when the main thread said, at the current
//    generation, that the endpoint holds every (name, address) for at least KNOWN_MARGIN_MS more;
//    otherwise the main thread learns them (datapath written) first. A failed learn → SERVFAIL.
// 4. An answer is taken only from the leg's server, with an id in flight, matching the question;
//    a query without an answer is sent again (_dns_udp_legs.ts); none within the timeout →
//    SERVFAIL.

import { ProxyMaps } from "../datapath/proxy_maps.ts";
import * as S from "../sys/sockets_ffi.ts";
import { setThreadFifo } from "../sys/thread_sched.ts";
import { DnsMessageError, type DnsQuery, makeResponse, RCODE } from "./dns_message.ts";
import { DnsUdpLegs, usize } from "./_dns_udp_legs.ts";
import { DnsUdpMemo } from "./_dns_udp_memo.ts";
import { NO_DEST, PendingPool, type PooledPending } from "./_dns_udp_pending.ts";
import { blankParts, RecordBatcher, type RecordParts } from "./_dns_udp_records.ts";
import { DnsUdpTrace, T } from "./_dns_udp_trace.ts";
import { Mmsg, SLOTS } from "./_dns_mmsg.ts";
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
  onmessage: ((e: MessageEvent<FromMain>) => void) | null;
  postMessage(m: ToMain, transfer?: Transferable[]): void;
  close(): void;
};

/** setpriority()'s "which" for one thread (its tid). */
const PRIO_PROCESS = 0;

let cfg: WorkerStart;
let shared: Int32Array;
let maps: ProxyMaps | undefined;
let legs: DnsUdpLegs;
/** Messages from the main thread handled so far (the main thread counts what it posted). */
let received = 0;
const verdicts = new Map<string, { allowed: boolean; cookie: number }>();
/** `epId|names|ips` → until when (epoch ms) the datapath holds them (rule 3). */
const known = new Map<string, number>();
let generation = 0;
const waiting = new Map<number, PooledPending>();
let nextQid = 1;
/** Parsed queries, answers, addresses and keys reused while their bytes repeat. */
const memo = new DnsUdpMemo();
/** Per-query state, reused once a query is answered (_dns_udp_pending.ts). */
const pool = new PendingPool();
const records = new RecordBatcher();
/** Answers released at once since the last batch (rule 3), by knownKey: the main thread extends them. */
const refresh = new Map<
  string,
  { epId: number; names: string[]; ips: { ip: string; ttl: number }[] }
>();
/** When the last batch of records went (the first record after a pause goes at once). */
let flushedAt = -Infinity;
/** Stage timestamps per query, only when the agent runs with CILIA_DNS_TRACE. */
const trace = DnsUdpTrace.fromEnv();
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

scope.onmessage = (e) => {
  received++;
  const m = e.data;
  try {
    if (m.t === "start") start(m);
    else if (m.t === "verdict") verdictFromMain(m);
    else if (m.t === "learned") learnedFromMain(m);
  } catch (err) {
    log("warn", "DNS proxy worker: a message failed", err);
  }
};

function log(level: "warn" | "debug", msg: string, err?: unknown): void {
  scope.postMessage({ t: "log", level, msg, ...(err ? { error: String(err) } : {}) });
}

function start(m: WorkerStart): void {
  cfg = m;
  shared = new Int32Array(m.shared);
  S.acquire();
  try {
    maps = new ProxyMaps(m.pins);
  } catch (err) {
    scope.postMessage({ t: "failed", error: String(err) });
    return;
  }
  legs = new DnsUdpLegs({
    maps,
    gateway: m.gateway,
    gateway6: m.gateway6,
    receiveBuffer: m.receiveBuffer,
    timeoutMs: m.timeoutMs,
    ...(trace ? { trace } : {}),
    onLeg: (l, open) => scope.postMessage({ t: "leg", open, ...l }),
    // The legs are handed only this Worker's pooled queries.
    onAnswer: (p, bytes) => answered(p as PooledPending, bytes),
    onFail: (p, error) =>
      finish(p as PooledPending, { allowed: true, rcode: RCODE.SERVFAIL, error }, true),
  });
  loop().catch((err) => {
    // What only this thread knows of goes with it; the listeners and the legs' sockets are the
    // main thread's to close or hand to the next Worker.
    if (legs.epoll >= 0) S.libc().close(legs.epoll);
    try {
      maps?.close();
    } catch { /* closed */ }
    scope.postMessage({ t: "failed", error: String(err) });
  });
}

/** Lets pending messages from the main thread run (a message event, not a clamped timer). */
function yieldToMessages(): Promise<void> {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => {
      ch.port1.close();
      resolve();
    };
    ch.port2.postMessage(0);
  });
}

async function loop(): Promise<void> {
  const c = S.libc();
  const ep = c.epoll_create1(S.SOCK_CLOEXEC); // EPOLL_CLOEXEC has the same value
  if (ep < 0) throw S.sysError("epoll_create1");
  legs.epoll = ep;
  const ev = new Uint8Array(S.EPOLL_EVENT_SIZE), evv = new DataView(ev.buffer);
  for (const fd of [cfg.wakeFd, ...cfg.listeners.map((l) => l.fd)]) {
    evv.setUint32(0, S.EPOLLIN, true);
    evv.setUint32(4, fd, true);
    if (c.epoll_ctl(ep, S.EPOLL_CTL_ADD, fd, ev) !== 0) throw S.sysError("epoll_ctl");
  }
  const listeners = new Set(cfg.listeners.map((l) => l.fd));
  if (trace) { for (const fd of listeners) rx.timestamp(fd); }
  const evs = new Uint8Array(S.EPOLL_EVENT_SIZE * 64), evsv = new DataView(evs.buffer);
  const eight = new Uint8Array(8);
  // Best effort (needs CAP_SYS_NICE): on a busy node this thread then waits less for a CPU.
  if (cfg.nice !== 0) c.setpriority(PRIO_PROCESS, c.gettid(), cfg.nice);
  // Real time (best effort): the thread runs the moment a datagram wakes it, instead of waiting
  // behind the node's other tasks (at load 14 on 2 cores: 0.9 ms → 15–50 µs at p50, trace).
  const rt = cfg.realtime > 0 ? setThreadFifo(cfg.realtime) : undefined;
  if (rt !== undefined) log("debug", `DNS proxy worker: no real-time priority: ${rt}`);
  scope.postMessage({ t: "ready" });
  let now = performance.now(), lastSweep = now;
  while (Atomics.load(shared, SHARED.STOP) === 0) {
    const timeout = records.length > 0
      ? Math.max(1, Math.ceil(flushedAt + RECORD_BATCH_MS - now))
      : legs.inflight > 0
      ? 25
      : 1000;
    const waitFrom = trace?.now() ?? 0;
    const n = c.epoll_wait(ep, evs, 64, timeout);
    if (trace && n > 0) trace.batch(n, waitFrom);
    else if (trace && timeout === 1000) trace.flush(); // idle: nothing waits for this thread
    // One clock read per wake-up (performance.now() costs ~0.5 µs): this round's queries, legs
    // and deadlines go by it; they are microseconds apart.
    now = wokeAt = performance.now();
    for (let i = 0; i < n; i++) {
      const fd = evsv.getUint32(S.EPOLL_EVENT_SIZE * i + 4, true);
      if (fd === cfg.wakeFd) c.read(cfg.wakeFd, eight, 8n);
      else if (listeners.has(fd)) drainListener(fd);
      else legs.drain(fd);
    }
    legs.expire(now);
    if (now - lastSweep >= 1000) {
      legs.sweepIdle(now, cfg.idleMs);
      lastSweep = now;
    }
    if (records.length > 0 && (now - flushedAt >= RECORD_BATCH_MS || records.length >= 256)) {
      flushRecords();
    }
    if (Atomics.load(shared, SHARED.POSTED) > received) {
      while (Atomics.load(shared, SHARED.POSTED) > received) await yieldToMessages();
      now = performance.now();
    }
    if (faulted) throw new Error(`fault injected: a query for "${faultName}"`);
  }
  flushRecords();
  legs.close();
  c.close(ep);
  for (const l of cfg.listeners) c.close(l.fd);
  maps?.close();
  trace?.close();
  rx.close();
  S.release();
  scope.postMessage({ t: "closed" });
  scope.close();
}

/** When epoll_wait last returned (performance.now()). */
let wokeAt = 0;
/** The listeners' batched reads (one recvmmsg per wake-up; the legs have their own). */
const rx = new Mmsg(trace ? { timestamps: true } : {});

function drainListener(fd: number): void {
  for (let round = 0; round < 16; round++) {
    const n = rx.receive(fd);
    if (n <= 0) return; // EAGAIN (or an error the next datagram repeats)
    for (let i = 0; i < n; i++) {
      const started = wokeAt;
      const msg = rx.data(i);
      if (!msg) continue; // truncated: not a DNS query over UDP
      const from = rx.from(i);
      const tr = trace?.query(msg, from, rx.arrival(i));
      // No allocation per query: the pod's query and address are copied into pooled buffers.
      const p = pool.take(fd, msg, from, started);
      if (tr !== undefined) p.tr = tr;
      try {
        query(p, started);
      } catch (err) {
        log("warn", "DNS proxy worker: a query failed", err);
      }
    }
    if (n < SLOTS) return; // the socket was empty
  }
}

function query(p: PooledPending, started: number): void {
  const client = memo.addrOf(p.addr);
  let o;
  try {
    o = maps!.original(client.ip, client.port, cfg.port);
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

function verdictFromMain(m: Extract<FromMain, { t: "verdict" }>): void {
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
function answered(p: PooledPending, bytes: Uint8Array): boolean | void {
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

function learnedFromMain(m: Extract<FromMain, { t: "learned" }>): void {
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
function finish(
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

function flushRecords(): void {
  if (records.length === 0 && refresh.size === 0) return;
  const batch: RecordBatch = { records: records.take(), refresh: [...refresh.values()] };
  scope.postMessage({ t: "records", batch }, [batch.records.rows.buffer]);
  flushedAt = performance.now();
  refresh.clear();
}
