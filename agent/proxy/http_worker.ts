// The L7 proxy's HTTP/1.1 data path in a Worker of its own (http_worker_path.ts starts it; issue
// 10): one loop blocked in epoll_wait over the HTTP listeners the main thread made and handed
// over, every client and upstream leg and a wake-up eventfd, on raw libc calls
// (_http_worker_io.ts), every read into one reused buffer. Each connection is one synchronous
// Http1Machine (http1_machine.ts: the checks, answers and records of serveHttpConnection). Per
// connection: the original destination from the kernel (its own ProxyMaps fds), each request's
// verdict from its cache or else from the main thread (the engine judges there), and the upstream
// leg bound to a port of the shared range, its proxy-NAT entry written, then connected. Records
// go to the main thread packed in batches with their metrics counted (l7_batch.ts): at once after
// a pause, then at most every L7_BATCH_MS. It judges nothing itself.
//
// Rules (as proxy.ts, fail closed):
// 1. A connection the kernel did not redirect (no original destination) is closed unread.
// 2. A cached verdict is used only while the generation it was judged at is current; its key is
//    everything the verdict depends on (endpoint, direction, both identities, the server and its
//    port, method, normalised path, host, and every header as it came).
// 3. The proxy-NAT entry is written before the upstream connect; a failed write is a 503.
// 4. Every fd the Worker owns is marked in the shared fd map, so the main thread can close them
//    all if the Worker dies (clients are cut, nothing passes unchecked).

import { type OrigDestination, ProxyMaps } from "../datapath/proxy_maps.ts";
import * as S from "../sys/sockets_ffi.ts";
import type { Head } from "./http1.ts";
import type { HttpRequestInfo, RequestRecord } from "./http_records.ts";
import { L7_BATCH_MAX, L7_BATCH_MS, L7BatchWriter } from "./l7_batch.ts";
import { UpstreamPorts } from "./_upstream_ports.ts";
import { type Conn, HttpConns } from "./_http_worker_conns.ts";
import * as IO from "./_http_worker_io.ts";
import { type FromMain, SHARED, type ToMain, type WorkerStart } from "./_http_worker_protocol.ts";
import { yieldToMessages } from "./_worker_yield.ts";

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<FromMain>) => void) | null;
  postMessage(m: ToMain, transfer?: Transferable[]): void;
  close(): void;
};

let cfg: WorkerStart;
let shared: Int32Array;
let conns: HttpConns;
/** Messages from the main thread handled so far (the main thread counts what it posted). */
let received = 0;
/** Listener fd → its proxy port and the gateways upstream legs are bound to. */
const listeners = new Map<number, { port: number; gateway: string; gateway6: string }>();
const verdicts = new Map<string, Verdict>();
let generation = 0;
const waiting = new Map<number, { conn: Conn; key: string }>();
let nextQid = 1;
const records = new L7BatchWriter();
/** When the last batch went (performance.now()), and the wall clock (ms) read once per turn. */
let flushedAt = -Infinity;
let epochMs = 0;

interface Verdict {
  allowed: boolean;
  cookie: number;
  rule: number;
  hop2: number;
}

scope.onmessage = (e) => {
  received++;
  const m = e.data;
  try {
    if (m.t === "start") start(m);
    else if (m.t === "listen") listen(m);
    else if (m.t === "unlisten") unlisten(m.port);
    else if (m.t === "verdict") verdictFromMain(m);
  } catch (err) {
    log("warn", "HTTP proxy worker: a message failed", err);
  }
};

function log(level: "warn" | "debug", msg: string, err?: unknown): void {
  scope.postMessage({ t: "log", level, msg, ...(err ? { error: String(err) } : {}) });
}

function start(m: WorkerStart): void {
  cfg = m;
  shared = new Int32Array(m.shared);
  let maps: ProxyMaps;
  try {
    maps = new ProxyMaps(m.pins);
    IO.epollOpen();
  } catch (err) {
    scope.postMessage({ t: "failed", error: String(err) });
    return;
  }
  conns = new HttpConns({
    maps,
    fds: new Int32Array(m.fds),
    ports: new UpstreamPorts(m.portRange, m.ports),
    judge,
    onRecord,
    ...(m.headerTimeoutMs !== undefined ? { headerTimeoutMs: m.headerTimeoutMs } : {}),
    ...(m.idleTimeoutMs !== undefined ? { idleTimeoutMs: m.idleTimeoutMs } : {}),
    ...(m.relay !== undefined ? { relay: m.relay } : {}),
  });
  if (IO.ctl(S.EPOLL_CTL_ADD, m.wakeFd, S.EPOLLIN) !== 0) {
    scope.postMessage({ t: "failed", error: S.sysError("epoll_ctl").message });
    return;
  }
  loop().catch((err) => scope.postMessage({ t: "failed", error: String(err?.stack ?? err) }));
}

function listen(m: Extract<FromMain, { t: "listen" }>): void {
  listeners.set(m.fd, { port: m.port, gateway: m.gateway, gateway6: m.gateway6 });
  if (IO.ctl(S.EPOLL_CTL_ADD, m.fd, S.EPOLLIN) !== 0) {
    log("warn", `HTTP proxy worker: cannot watch the listener on port ${m.port}`);
  }
}

function unlisten(port: number): void {
  for (const [fd, l] of listeners) {
    if (l.port !== port) continue;
    listeners.delete(fd);
    conns.release(fd);
    IO.ctl(S.EPOLL_CTL_DEL, fd, 0);
    IO.closeFd(fd);
  }
}

async function loop(): Promise<void> {
  scope.postMessage({ t: "ready" });
  let lastTick = performance.now();
  while (Atomics.load(shared, SHARED.STOP) === 0) {
    Atomics.add(shared, SHARED.BEAT, 1);
    const wait = records.size > 0
      ? Math.max(0, Math.ceil(flushedAt + L7_BATCH_MS - performance.now()))
      : 100;
    const n = IO.epollWait(wait);
    if (Atomics.load(shared, SHARED.ABORT) !== 0) return scope.close(); // (its fds: the main's)
    const now = performance.now();
    epochMs = Date.now(); // (not timeOrigin + now: the monotonic clock drifts from the wall clock)
    for (let i = 0; i < n; i++) {
      const fd = IO.fdAt(i);
      if (fd === cfg.wakeFd) IO.drainEventFd(fd);
      else {
        const l = listeners.get(fd);
        if (l) accepted(fd, l, now);
        else conns.event(fd, IO.eventsAt(i), now);
      }
    }
    if (now - lastTick >= 100) {
      conns.tick(now);
      lastTick = now;
    }
    if (
      records.size > 0 && (now - flushedAt >= L7_BATCH_MS || records.size >= L7_BATCH_MAX)
    ) flushRecords(now);
    while (Atomics.load(shared, SHARED.POSTED) > received) await yieldToMessages();
  }
  flushRecords(performance.now());
  conns.closeAll();
  for (const fd of listeners.keys()) conns.release(fd), IO.closeFd(fd);
  listeners.clear();
  IO.epollClose();
  S.release();
  scope.postMessage({ t: "closed" });
  scope.close();
}

/** New connections on a listener (rule 1). */
function accepted(
  listenFd: number,
  l: { port: number; gateway: string; gateway6: string },
  now: number,
): void {
  for (let i = 0; i < 256; i++) {
    const a = IO.accept(listenFd);
    if (!a) return;
    let o: OrigDestination | undefined;
    try {
      o = conns.maps.original(a.ip, a.port, l.port);
    } catch {
      o = undefined;
    }
    if (!o) {
      IO.closeFd(a.fd);
      continue;
    }
    const gateway = o.ip.includes(":") ? l.gateway6 : l.gateway;
    conns.add(a.fd, { o, client: { ip: a.ip, port: a.port }, gateway }, now);
  }
}

function checkGeneration(): void {
  const g = Atomics.load(shared, SHARED.GENERATION);
  if (g === generation) return;
  generation = g;
  verdicts.clear();
}

/** The verdict on one request of `conn` (rule 2); undefined: asked of the main thread. */
function judge(conn: Conn, req: HttpRequestInfo, head: Head): boolean | undefined {
  let key: string;
  if (conn.lastHead === head) key = conn.lastKey; // (the same head: the same fields)
  else {
    key = conn.key + `${req.method} ${req.path}\n${req.host}`;
    for (const [n, v] of head.headers) key += `\n${n}:${v}`;
    conn.lastHead = head, conn.lastKey = key;
  }
  checkGeneration();
  const v = verdicts.get(key);
  if (v) return apply(conn, v);
  const qid = nextQid++;
  waiting.set(qid, { conn, key });
  const { method, path, host, headers } = req;
  scope.postMessage({ t: "judge", qid, o: conn.o, req: { method, path, host, headers } });
  return undefined;
}

function apply(conn: Conn, v: Verdict): boolean {
  conn.cookie = v.cookie || conn.o.cookie;
  conn.rule = v.rule;
  conn.hop2 = v.hop2 >= 0 ? v.hop2 : undefined;
  return v.allowed;
}

function verdictFromMain(m: Extract<FromMain, { t: "verdict" }>): void {
  const w = waiting.get(m.qid);
  if (!w) return;
  waiting.delete(m.qid);
  checkGeneration();
  const v: Verdict = { allowed: m.allowed, cookie: m.cookie, rule: m.rule, hop2: m.hop2 };
  if (m.generation === generation) {
    if (verdicts.size >= 10_000) verdicts.clear();
    verdicts.set(w.key, v);
  }
  if (w.conn.m.closed) return;
  const now = performance.now();
  w.conn.m.verdict(apply(w.conn, v), now);
  conns.settle(w.conn);
}

function onRecord(conn: Conn, rec: RequestRecord): void {
  records.add(conn, rec, epochMs);
}

function flushRecords(now: number): void {
  const batch = records.take();
  if (!batch) return;
  flushedAt = now;
  scope.postMessage({ t: "records", batch }, [batch.nums.buffer]);
}
