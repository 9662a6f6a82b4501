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
import {
  DnsMessageError,
  type DnsQuery,
  makeResponse,
  parseAnswer,
  parseQuery,
  RCODE,
} from "./dns_message.ts";
import type { DnsRecord } from "./dns_proxy.ts";
import { decodeAddr, DnsUdpLegs, type Pending } from "./_dns_udp_legs.ts";
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
  postMessage(m: ToMain): void;
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
const waiting = new Map<number, Pending>();
let nextQid = 1;
let records: DnsRecord[] = [];
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
    onAnswer: answered,
    onFail: (p, error) => finish(p, { allowed: true, rcode: RCODE.SERVFAIL, error }, true),
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
      const from = rx.from(i), len = msg.length;
      const tr = trace?.query(msg, from, rx.arrival(i));
      // One allocation per query: the pod's query, a copy for upstream, the pod's address.
      const own = new Uint8Array(2 * len + from.length);
      own.set(msg);
      own.set(msg, len);
      own.set(from, 2 * len);
      try {
        query(
          fd,
          own.subarray(0, len),
          own.subarray(2 * len),
          started,
          tr,
          own.subarray(len, 2 * len),
        );
      } catch (err) {
        log("warn", "DNS proxy worker: a query failed", err);
      }
    }
    if (n < SLOTS) return; // the socket was empty
  }
}

function query(
  fd: number,
  msg: Uint8Array,
  addr: Uint8Array,
  started: number,
  tr?: number,
  up?: Uint8Array,
): void {
  const client = decodeAddr(addr);
  let o;
  try {
    o = maps!.original(client.ip, client.port, cfg.port);
  } catch {
    o = undefined;
  }
  if (!o) return; // 1.
  const p: Pending = { fd, addr, msg, o, client, started };
  if (up !== undefined) p.up = up;
  if (tr !== undefined) p.tr = tr;
  let q: DnsQuery;
  try {
    q = parseQuery(msg);
  } catch (err) {
    const error = err instanceof DnsMessageError ? err.message : String(err);
    const out = msg.length >= 12 ? makeResponse(msg, RCODE.FORMERR) : undefined;
    finish(p, { allowed: false, rcode: RCODE.FORMERR, error }, false, out);
    return;
  }
  p.q = q;
  if (faultName !== undefined && q.name === faultName) {
    faulted = true; // the loop throws once this round's datagrams are handled
    return;
  }
  checkGeneration();
  const key = `${o.epId}/${o.dstIdentity}/${o.port}/${q.name}`;
  const v = verdicts.get(key);
  if (v) return judged(p, v, started);
  if (waiting.size >= 4096) return; // the main thread is far behind: drop (the client retries)
  const qid = nextQid++;
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
  if (!p) return;
  waiting.delete(m.qid);
  checkGeneration();
  const v = { allowed: m.allowed, cookie: m.cookie };
  if (m.generation === generation) { // 2.
    if (verdicts.size >= 10_000) verdicts.clear();
    verdicts.set(`${p.o.epId}/${p.o.dstIdentity}/${p.o.port}/${p.q!.name}`, v);
  }
  judged(p, v);
}

/** `now`: the clock reading of the wake-up that read the query, when judged in it. */
function judged(p: Pending, v: { allowed: boolean; cookie: number }, now?: number): void {
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

const knownKey = (epId: number, names: string[], ips: { ip: string }[]) =>
  `${epId}|${names.join(" ")}|${ips.map((i) => i.ip).join(" ")}`;

/** An answer from upstream for `p` (rule 3). */
function answered(p: Pending, bytes: Uint8Array): boolean | void {
  const answer = parseAnswer(p.q!, bytes);
  if (!answer) return false; // 4.
  p.answer = answer;
  if (answer.rcode !== RCODE.NOERROR || answer.ips.length === 0) {
    return finish(p, { allowed: true, rcode: answer.rcode }, false, bytes);
  }
  checkGeneration();
  const key = knownKey(p.o.epId, answer.names, answer.ips);
  const until = known.get(key);
  if (until !== undefined && Date.now() + KNOWN_MARGIN_MS < until) {
    // One refresh per answer in a batch: the latest (its TTLs count from now).
    refresh.set(key, { epId: p.o.epId, names: answer.names, ips: answer.ips });
    return finish(p, { allowed: true, rcode: answer.rcode }, false, bytes);
  }
  p.bytes = bytes.slice(); // kept until the main thread learned (bytes is a receive slot)
  const qid = nextQid++;
  waiting.set(qid, p);
  trace?.add(p.tr, T.main, 2);
  scope.postMessage({ t: "learn", qid, epId: p.o.epId, names: answer.names, ips: answer.ips });
}

function learnedFromMain(m: Extract<FromMain, { t: "learned" }>): void {
  const p = waiting.get(m.qid);
  if (!p?.answer) return;
  waiting.delete(m.qid);
  if (m.error !== undefined) {
    const error = `cannot allow the answer's addresses: ${m.error}`;
    return finish(p, { allowed: true, rcode: RCODE.SERVFAIL, error }, true);
  }
  checkGeneration();
  if (m.until !== undefined && m.generation === generation) {
    if (known.size >= 10_000) known.clear();
    known.set(knownKey(p.o.epId, p.answer.names, p.answer.ips), m.until);
  }
  finish(p, { allowed: true, rcode: p.answer.rcode }, false, p.bytes);
}

/** Sends the reply (a made-up one when `servfail`), and records the query. */
function finish(
  p: Pending,
  r: { allowed: boolean; rcode: number; error?: string },
  servfail: boolean,
  out?: Uint8Array,
): void {
  const reply = servfail ? makeResponse(p.msg, RCODE.SERVFAIL) : out;
  if (reply) S.libc().sendto(p.fd, reply, BigInt(reply.length), 0, p.addr, p.addr.length);
  trace?.mark(p.tr, T.sent);
  const a = p.answer;
  const rec: DnsRecord = {
    epId: p.o.epId,
    client: p.client,
    server: { ip: p.o.ip, port: p.o.port },
    srcIdentity: p.o.srcIdentity,
    dstIdentity: p.o.dstIdentity,
    cookie: p.cookie ?? p.o.cookie,
    query: p.q?.name ?? "",
    qtype: p.q?.type ?? "",
    allowed: r.allowed,
    rcode: r.rcode,
    cnames: a ? a.names.slice(1) : [],
    ips: a ? a.ips.map((i) => i.ip) : [],
    latencyMs: performance.now() - p.started,
    ...(r.error !== undefined ? { error: r.error } : {}),
    at: Date.now(),
  };
  records.push(rec);
}

function flushRecords(): void {
  if (records.length === 0 && refresh.size === 0) return;
  const batch: RecordBatch = { records, refresh: [...refresh.values()] };
  scope.postMessage({ t: "records", json: JSON.stringify(batch) });
  flushedAt = performance.now();
  records = [];
  refresh.clear();
}
