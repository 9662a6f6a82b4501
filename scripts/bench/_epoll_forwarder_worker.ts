// The Worker of the L7 I/O prototype (issue 10; `bench l7 --io-prototype`): one epoll loop that
// blocks in epoll_wait and does all its socket I/O with raw libc calls through FFI (hot calls are
// V8 fast calls on pre-made pointers), so no Deno op, promise or tokio task runs per read or write.
// It accepts on a listener fd made by the main thread, connects one upstream leg per client
// connection and forwards keep-alive HTTP/1.1 requests without bodies: in "engine" mode each head
// is parsed strictly (as http1.ts does), judged by the policy engine (judgeHttp, in this Worker)
// and counted as a flow batched back to the main thread; in "forward" mode only the head's end is
// found and `GET /public` allowed. Denied requests get 403 "Access denied". A measurement tool,
// not the proxy: no request bodies, no response framing, no timeouts, no proxy-NAT, no IPv6.
import {
  EAGAIN,
  encodeSockaddr,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_CTL_MOD,
  EPOLLERR,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  SOCKADDR_SIZE,
} from "../../agent/sys/sockets_ffi.ts";
import {
  acceptNoDelay,
  addFlow,
  BUF,
  connectNoDelay,
  ctl,
  epollClose,
  epollOpen,
  epollWait,
  errnoView,
  eventsAt,
  fdAt,
  flowsWaiting,
  postFlows,
  PrototypeJudge,
  S,
  scratch,
  scratchP,
} from "./_epoll_common.ts";

/** What the main thread sends to start the loop. */
export interface ForwarderStart {
  listenFd: number;
  origin: { ip: string; port: number };
  mode: "forward" | "engine" | "cache" | "conn" | "machine";
  /** Int32 flag: the loop ends when it is set. */
  stop: SharedArrayBuffer;
  /** The policy (engine mode): the server endpoint allows what it says from the client. */
  policy: string;
}

const MAX_HEAD = 16384, MAX_PENDING = 1 << 22;
const origin = new Uint8Array(SOCKADDR_SIZE);
let originLen = 0, listenFd = -1;

// Per-fd state (fds are small integers): the other leg, which side, queued output, a partial head.
const peer: (number | undefined)[] = [];
const upstream: boolean[] = [];
const connected: boolean[] = [];
const pending: (Uint8Array | null)[] = [];
const partial: (Uint8Array | null)[] = [];

function closeFd(fd: number | undefined): void {
  if (fd === undefined || peer[fd] === undefined) return;
  ctl(EPOLL_CTL_DEL, fd, 0);
  S.close(fd);
  peer[fd] = undefined;
  pending[fd] = partial[fd] = null;
  for (const w of waiting[fd] ?? []) emit(w, 0); // closed before its response: a flow still
  waiting[fd] = undefined;
}

function closePair(fd: number): void {
  const p = peer[fd];
  closeFd(fd);
  closeFd(p);
}

function queue(fd: number, data: Uint8Array): void {
  const q = pending[fd];
  if (!q) ctl(EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
  const m = new Uint8Array((q?.length ?? 0) + data.length);
  if (q) m.set(q);
  m.set(data, q?.length ?? 0);
  if (m.length > MAX_PENDING) return closePair(fd); // bounded memory: a peer that never reads
  pending[fd] = m;
}

/** Writes data (a view of scratch from 0, or any array) to fd; what does not go is queued. */
function send(fd: number, data: Uint8Array): void {
  if (pending[fd] || !connected[fd]) return queue(fd, data);
  const p = data.buffer === scratch.buffer && data.byteOffset === 0
    ? scratchP
    : Deno.UnsafePointer.of(data);
  const w = S.write_p(fd, p, data.length);
  if (w === data.length) return;
  if (w < 0 && errnoView.getInt32() !== EAGAIN) return closePair(fd);
  queue(fd, data.slice(Math.max(w, 0)));
}

function flush(fd: number): void {
  connected[fd] = true;
  const q = pending[fd];
  if (q) {
    const w = S.write_p(fd, Deno.UnsafePointer.of(q), q.length);
    if (w < 0 && errnoView.getInt32() !== EAGAIN) return closePair(fd);
    if (w < q.length) {
      pending[fd] = q.slice(Math.max(w, 0));
      return;
    }
    pending[fd] = null;
  }
  ctl(EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLRDHUP);
}

/** The end of the head (after CRLF CRLF) in b[from, n), or -1. */
function headEnd(b: Uint8Array, from: number, n: number): number {
  for (let i = b.indexOf(13, from); i >= 0 && i + 3 < n; i = b.indexOf(13, i + 1)) {
    if (b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i + 4;
  }
  return -1;
}

const FORBIDDEN = new TextEncoder().encode(
  "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nAccess denied",
);
const PUBLIC_GET = new TextEncoder().encode("GET /public");
const ascii = new TextDecoder();
const TCHAR = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const REQUEST_LINE = /^([^ ]+) ([^ ]+) HTTP\/1\.[01]$/;

let engine: PrototypeJudge | undefined;
/** "cache" mode: verdicts by the exact head text (one policy revision here; bounded). */
let cache: Map<string, { ok: boolean; rule: number; path: string }> | undefined;
const CACHE_MAX = 4096;
/** Per client fd: its forwarded requests waiting for their response (for the flow's code). */
const waiting: ({ rule: number; path: string; t0: number }[] | undefined)[] = [];
/** The client connection whose bytes are being judged. */
let current = -1;
let requests = 0;

/** Forward mode: allowed when the head starts with `GET /public`. */
function judgeBytes(b: Uint8Array, from: number): boolean {
  for (let k = 0; k < PUBLIC_GET.length; k++) if (b[from + k] !== PUBLIC_GET[k]) return false;
  return true;
}

/** Engine mode: the head parsed as http1.ts does (CRLF only, tokens), judged, a flow recorded. */
function judgeHead(b: Uint8Array, from: number, end: number): boolean {
  for (let i = from; i < end; i++) {
    const c = b[i]!;
    if (c >= 0x80 || (c === 13 && b[i + 1] !== 10) || (c === 10 && b[i - 1] !== 13)) return false;
  }
  const t0 = performance.now();
  const text = ascii.decode(b.subarray(from, end));
  const hit = cache?.get(text);
  if (hit) return record(hit.ok, hit.rule, hit.path, t0);
  let at = text.indexOf("\r\n");
  const m = REQUEST_LINE.exec(text.slice(0, at));
  if (!m || !TCHAR.test(m[1]!)) return false;
  const headers: Record<string, string> = {};
  let host = "";
  for (let f = at + 2; (at = text.indexOf("\r\n", f)) !== f; f = at + 2) {
    const line = text.slice(f, at), colon = line.indexOf(":");
    const name = line.slice(0, colon);
    if (colon <= 0 || !TCHAR.test(name)) return false;
    const lower = name.toLowerCase(), value = line.slice(colon + 1).trim();
    if (lower === "content-length" || lower === "transfer-encoding") return false; // no bodies here
    if (lower === "host") host = value;
    headers[name] = value;
  }
  const ok = engine!.judge({ method: m[1]!, path: m[2]!, host, headers });
  const v = { ok, rule: engine!.rule, path: m[2]! };
  if (cache) {
    if (cache.size >= CACHE_MAX) cache.clear();
    cache.set(text, v);
  }
  return record(ok, v.rule, v.path, t0);
}

/** One request's flow; returns `ok`. */
function record(ok: boolean, rule: number, path: string, t0: number): boolean {
  if (!ok) emit({ rule: -1, path, t0 }, 403);
  else (waiting[current] ??= []).push({ rule, path, t0 });
  return ok;
}

/** A request's flow, once its response head (or the proxy's own 403) is known. */
function emit(w: { rule: number; path: string; t0: number }, code: number): void {
  const latencyMs = performance.now() - w.t0;
  addFlow({ rule: w.rule, code, latencyMs, path: w.path, allowed: code !== 403 });
}

/** Upstream bytes: a response head's status ends the oldest waiting request's flow. */
function onUpstream(fd: number, n: number): void {
  const client = peer[fd]!;
  if (engine && n > 12 && scratch[0] === 72 && scratch[5] === 49) { // "HTTP/1"
    const w = waiting[client]?.shift();
    const code = (scratch[9]! - 48) * 100 + (scratch[10]! - 48) * 10 + scratch[11]! - 48;
    if (w) emit(w, code);
  }
  send(client, scratch.subarray(0, n));
}

/** Client bytes: each whole head judged; allowed runs forwarded as they came, denied answered. */
function onClient(fd: number, n: number): void {
  let b = scratch.subarray(0, n);
  const part = partial[fd];
  if (part) {
    b = new Uint8Array(part.length + n);
    b.set(part);
    b.set(scratch.subarray(0, n), part.length);
    partial[fd] = null;
  }
  const up = peer[fd]!;
  current = fd;
  let from = 0, fwdFrom = 0;
  while (from < b.length) {
    const end = headEnd(b, from, b.length);
    if (end < 0) {
      if (b.length - from > MAX_HEAD) return closePair(fd);
      partial[fd] = b.slice(from);
      break;
    }
    requests++;
    if (!(engine ? judgeHead(b, from, end) : judgeBytes(b, from))) {
      if (from > fwdFrom) send(up, b.subarray(fwdFrom, from));
      send(fd, FORBIDDEN); // (the proxy keeps response order; a prototype answers at once)
      fwdFrom = end;
    }
    from = end;
  }
  if (from > fwdFrom) send(up, b.subarray(fwdFrom, from));
}

function onAccept(): void {
  for (;;) {
    const c = acceptNoDelay(listenFd);
    if (c < 0) return;
    const up = connectNoDelay(origin, originLen);
    if (typeof up === "string") {
      S.close(c);
      continue;
    }
    const u = up.fd;
    peer[c] = u, peer[u] = c;
    upstream[c] = false, upstream[u] = true;
    connected[c] = true, connected[u] = up.connected;
    pending[c] =
      pending[u] =
      partial[c] =
      partial[u] =
        null;
    ctl(EPOLL_CTL_ADD, c, EPOLLIN | EPOLLRDHUP);
    ctl(EPOLL_CTL_ADD, u, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
  }
}

function onEvent(fd: number, ev: number): void {
  if (ev & EPOLLOUT) flush(fd);
  if (peer[fd] === undefined || !(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return;
  const n = S.read_p(fd, scratchP, BUF);
  if (n <= 0) {
    if (n < 0 && errnoView.getInt32() === EAGAIN) return;
    return closePair(fd);
  }
  if (upstream[fd]) onUpstream(fd, n);
  else onClient(fd, n);
}

function loop(stop: Int32Array): void {
  let lastPost = performance.now();
  while (Atomics.load(stop, 0) === 0) {
    const n = epollWait(100);
    for (let i = 0; i < n; i++) {
      const fd = fdAt(i);
      if (fd === listenFd) onAccept();
      else if (peer[fd] !== undefined) onEvent(fd, eventsAt(i));
    }
    if (flowsWaiting() > 0 && performance.now() - lastPost > 50) {
      postFlows();
      lastPost = performance.now();
    }
  }
  for (let fd = 0; fd < peer.length; fd++) closeFd(fd);
  epollClose();
}

async function start(m: ForwarderStart): Promise<void> {
  if (m.mode === "cache") cache = new Map();
  if (m.mode !== "forward") engine = await PrototypeJudge.create(m.policy);
  originLen = encodeSockaddr(origin, m.origin.ip, m.origin.port);
  listenFd = m.listenFd;
  epollOpen();
  ctl(EPOLL_CTL_ADD, listenFd, EPOLLIN);
  self.postMessage({ ready: true });
  loop(new Int32Array(m.stop));
  if (flowsWaiting() > 0) postFlows();
  engine?.close();
  self.postMessage({ done: { requests } });
}

self.onmessage = (e: MessageEvent<ForwarderStart>) => {
  start(e.data).catch((err) => self.postMessage({ error: String(err?.stack ?? err) }));
};
