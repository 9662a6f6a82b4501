// The DNS proxy's UDP data path, in a Worker of its own (dns_udp_path.ts starts it), so that
// nothing else the agent does delays a query: one loop blocked in epoll_wait over the listener
// sockets, the upstream legs and a wake-up eventfd, on raw libc calls (agent/sys/sockets_ffi.ts),
// no Deno socket op. Per datagram: the original destination from the kernel (its own ProxyMaps
// fds), parse, the verdict from its cache (else asked of the main thread), the pooled upstream
// leg, the answer checked against the question, and the answer back (_dns_udp_queries.ts). Flow
// records go to the main thread in batches. It judges and learns nothing itself: verdicts and
// learned addresses come from the main thread, and are dropped when the shared generation moves
// (the engine or the DNS cache changed). It runs in SCHED_FIFO when it may (a datagram wakes it at
// once). If its loop throws, it closes what only it knows of (its epoll, its map fds) and says
// so; the main thread closes its legs and starts another Worker on the same listeners
// (dns_udp_path.ts).
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
import { RCODE } from "./dns_message.ts";
import { DnsUdpLegs } from "./_dns_udp_legs.ts";
import type { PooledPending } from "./_dns_udp_pending.ts";
import { DnsUdpTrace } from "./_dns_udp_trace.ts";
import { Mmsg, SLOTS } from "./_dns_mmsg.ts";
import { type FromMain, SHARED, type ToMain, type WorkerStart } from "./_dns_udp_protocol.ts";
import {
  answered,
  finish,
  flushIfDue,
  flushRecords,
  initQueries,
  learnedFromMain,
  pool,
  query,
  recordsDueIn,
  throwIfFaulted,
  verdictFromMain,
} from "./_dns_udp_queries.ts";
import { yieldToMessages } from "./_worker_yield.ts";

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
/** Stage timestamps per query, only when the agent runs with CILIA_DNS_TRACE. */
const trace = DnsUdpTrace.fromEnv();

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
  initQueries({ cfg, shared, maps, legs }, trace);
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
    const due = recordsDueIn(now);
    const timeout = due >= 0 ? due : legs.inflight > 0 ? 25 : 1000;
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
    flushIfDue(now);
    if (Atomics.load(shared, SHARED.POSTED) > received) {
      while (Atomics.load(shared, SHARED.POSTED) > received) await yieldToMessages();
      now = performance.now();
    }
    throwIfFaulted();
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
