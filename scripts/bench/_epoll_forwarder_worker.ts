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
  EINPROGRESS,
  encodeSockaddr,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_CTL_MOD,
  EPOLL_EVENT_SIZE,
  EPOLLERR,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  IPPROTO_TCP,
  libc,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOCKADDR_SIZE,
  TCP_NODELAY,
} from "../../agent/sys/sockets_ffi.ts";
import { compilePolicies, PolicyEngine, SimCluster } from "../../policy-wasm/mod.ts";

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

const S = libc();
const errnoView = new Deno.UnsafePointerView(S.__errno_location()!);
const BUF = 65536, MAX_HEAD = 16384, MAX_PENDING = 1 << 22, EV_MAX = 256;
const scratch = new Uint8Array(BUF);
const scratchP = Deno.UnsafePointer.of(scratch)!;
const evBuf = new Uint8Array(EPOLL_EVENT_SIZE * EV_MAX);
const evP = Deno.UnsafePointer.of(evBuf)!;
const evDv = new DataView(evBuf.buffer);
const ctlBuf = new Uint8Array(EPOLL_EVENT_SIZE);
const ctlP = Deno.UnsafePointer.of(ctlBuf)!;
const ctlDv = new DataView(ctlBuf.buffer);
const oneP = Deno.UnsafePointer.of(new Int32Array([1]))!;
const origin = new Uint8Array(SOCKADDR_SIZE);
let originLen = 0, ep = -1, listenFd = -1;

// Per-fd state (fds are small integers): the other leg, which side, queued output, a partial head.
const peer: (number | undefined)[] = [];
const upstream: boolean[] = [];
const connected: boolean[] = [];
const pending: (Uint8Array | null)[] = [];
const partial: (Uint8Array | null)[] = [];

function ctl(op: number, fd: number, events: number): void {
  ctlDv.setUint32(0, events, true);
  ctlDv.setUint32(4, fd, true);
  S.epoll_ctl_p(ep, op, fd, ctlP);
}

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

let engine: PolicyEngine | undefined;
/** "cache" mode: verdicts by the exact head text (one policy revision here; bounded). */
let cache: Map<string, { ok: boolean; rule: number; path: string }> | undefined;
const CACHE_MAX = 4096;
let serverId = 0, clientIdentity = 0;
const FLOW_BATCH = 1024;
const newFlows = () => ({
  n: 0,
  allowed: 0,
  denied: 0,
  rules: new Int32Array(FLOW_BATCH),
  codes: new Uint16Array(FLOW_BATCH),
  latencyMs: new Float32Array(FLOW_BATCH),
  paths: [] as string[],
});
let flows = newFlows();
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
  const r = engine!.judgeHttp({
    endpoint: serverId,
    direction: "ingress",
    peer: clientIdentity,
    proto: 6,
    port: 80,
    http: { method: m[1]!, path: m[2]!, host, headers },
  });
  const ok = r.verdict === "allow" || (r.verdict === "redirect" && r.l7.status === "allowed");
  const v = { ok, rule: r.l7.rule, path: m[2]! };
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
  const i = flows.n++;
  flows.rules[i] = w.rule;
  flows.codes[i] = code;
  flows.latencyMs[i] = performance.now() - w.t0;
  flows.paths.push(w.path);
  if (code === 403) flows.denied++;
  else flows.allowed++;
  if (flows.n === FLOW_BATCH) postFlows();
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

function postFlows(): void {
  const n = flows.n;
  const cut = { rules: flows.rules.subarray(0, n), codes: flows.codes.subarray(0, n) };
  self.postMessage({ flows: { ...flows, ...cut, latencyMs: flows.latencyMs.subarray(0, n) } });
  flows = newFlows();
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
    const c = S.accept4(listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) return;
    const u = S.socket(origin[0] === 10 ? 10 : 2, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    S.setsockopt_p(c, IPPROTO_TCP, TCP_NODELAY, oneP, 4);
    S.setsockopt_p(u, IPPROTO_TCP, TCP_NODELAY, oneP, 4);
    const r = S.connect(u, origin, originLen);
    if (u < 0 || (r < 0 && errnoView.getInt32() !== EINPROGRESS)) {
      S.close(c);
      if (u >= 0) S.close(u);
      continue;
    }
    peer[c] = u, peer[u] = c;
    upstream[c] = false, upstream[u] = true;
    connected[c] = true, connected[u] = r === 0;
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
    const n = S.epoll_wait_p(ep, evP, EV_MAX, 100);
    for (let i = 0; i < n; i++) {
      const ev = evDv.getUint32(i * EPOLL_EVENT_SIZE, true);
      const fd = evDv.getUint32(i * EPOLL_EVENT_SIZE + 4, true);
      if (fd === listenFd) onAccept();
      else if (peer[fd] !== undefined) onEvent(fd, ev);
    }
    if (flows.n > 0 && performance.now() - lastPost > 50) {
      postFlows();
      lastPost = performance.now();
    }
  }
  for (let fd = 0; fd < peer.length; fd++) closeFd(fd);
  S.close(ep);
}

async function start(m: ForwarderStart): Promise<void> {
  if (m.mode === "cache") cache = new Map();
  if (m.mode !== "forward") {
    engine = await PolicyEngine.create();
    const cluster = new SimCluster({
      endpoints: ["client", "server"].map((app) => ({ name: app, labels: { app } })),
    });
    cluster.load(engine, compilePolicies({ text: m.policy }).spec, engine.options);
    serverId = cluster.endpoint("server")!.id;
    clientIdentity = cluster.endpoint("client")!.identity;
  }
  originLen = encodeSockaddr(origin, m.origin.ip, m.origin.port);
  listenFd = m.listenFd;
  ep = S.epoll_create1(SOCK_CLOEXEC);
  ctl(EPOLL_CTL_ADD, listenFd, EPOLLIN);
  self.postMessage({ ready: true });
  loop(new Int32Array(m.stop));
  if (flows.n > 0) postFlows();
  engine?.close();
  self.postMessage({ done: { requests } });
}

self.onmessage = (e: MessageEvent<ForwarderStart>) => {
  start(e.data).catch((err) => self.postMessage({ error: String(err?.stack ?? err) }));
};
