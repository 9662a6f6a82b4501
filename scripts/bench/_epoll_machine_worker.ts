// The Worker of the L7 I/O prototype's "machine" mode (issue 10; `bench l7 --io-prototype`): the
// synchronous HTTP/1.1 machine (agent/proxy/http1_machine.ts: strict heads, path normalisation,
// bodies, 1xx, keep-alive, pipelining, deadlines as timestamps) driven by one epoll loop on raw
// libc calls through FFI, every read into one reused buffer; each request judged by the policy
// engine (judgeHttp, in this Worker) and counted as a flow batched back to the main thread. A
// measurement tool, not the proxy: no kernel maps, no proxy-NAT, IPv4 only.
import { Http1Machine, type MachineIo } from "../../agent/proxy/http1_machine.ts";
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
import type { HttpRequest } from "../../policy-wasm/mod.ts";
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
import type { ForwarderStart } from "./_epoll_forwarder_worker.ts";

/** Queued output above HIGH stops reads of the other leg; above MAX_PENDING closes (a guard). */
const HIGH = 1 << 20, MAX_PENDING = 1 << 22;
const origin = new Uint8Array(SOCKADDR_SIZE);
let originLen = 0, listenFd = -1;

/** One proxied connection: its machine, its legs, their queued output and epoll interest. */
interface Conn {
  m: Http1Machine;
  client: number;
  up: number;
  upConnected: boolean;
  /** Output that did not go at once, per leg (bounded; then the connection is closed). */
  outClient: Uint8Array | null;
  outUp: Uint8Array | null;
  /** The epoll interest set on each fd. */
  clientEvents: number;
  upEvents: number;
  /** A leg ended (read no more from it), or a write failed (close after the machine's call). */
  clientEof: boolean;
  upEof: boolean;
  broken: boolean;
}
const byFd: (Conn | undefined)[] = [];
const conns = new Set<Conn>();

function closeFd(fd: number): void {
  if (fd < 0) return;
  ctl(EPOLL_CTL_DEL, fd, 0);
  S.close(fd);
  byFd[fd] = undefined;
}

/** Writes b to fd now; returns what did not go (a copy), or null; undefined on an error. */
function writeNow(fd: number, b: Uint8Array): Uint8Array | null | undefined {
  const p = b.buffer === scratch.buffer && b.byteOffset === 0 ? scratchP : Deno.UnsafePointer.of(b);
  const w = S.write_p(fd, p, b.length);
  if (w === b.length) return null;
  if (w < 0 && errnoView.getInt32() !== EAGAIN) return undefined;
  return b.slice(Math.max(w, 0));
}

function append(q: Uint8Array | null, b: Uint8Array): Uint8Array {
  if (!q) return b.slice();
  const m = new Uint8Array(q.length + b.length);
  m.set(q);
  m.set(b, q.length);
  return m;
}

function ioFor(c: Conn): MachineIo {
  return {
    toClient: (b) => {
      if (c.outClient) c.outClient = append(c.outClient, b);
      else {
        const left = writeNow(c.client, b);
        if (left === undefined) return void (c.broken = true);
        c.outClient = left;
      }
      if (c.outClient && c.outClient.length > MAX_PENDING) c.broken = true;
    },
    toUpstream: (b) => {
      if (c.up < 0) return;
      if (c.outUp || !c.upConnected) c.outUp = append(c.outUp, b);
      else {
        const left = writeNow(c.up, b);
        if (left === undefined) return; // the read side sees the error
        c.outUp = left;
      }
      if (c.outUp && c.outUp.length > MAX_PENDING) c.broken = true;
    },
    connect: () => {
      const up = connectNoDelay(origin, originLen);
      if (typeof up === "string") return up;
      c.up = up.fd, c.upConnected = up.connected, c.outUp = null, c.upEof = false;
      c.upEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
      byFd[up.fd] = c;
      ctl(EPOLL_CTL_ADD, up.fd, c.upEvents);
      return undefined;
    },
    closeUpstream: () => {
      closeFd(c.up);
      c.up = -1, c.outUp = null;
    },
    closeClient: () => {
      closeFd(c.client);
      conns.delete(c);
    },
  };
}

/**
 * After each call into the machine: a broken leg closes the connection; each fd is watched for
 * writing while its output waits (or it is still connecting), for reading while it has not ended,
 * the machine wants its bytes and the other leg's queue is below HIGH (backpressure: memory per
 * connection stays bounded however fast one side sends).
 */
function settle(c: Conn): void {
  if (c.broken) c.m.close();
  if (c.m.closed) return;
  const readC = c.m.wantsClient && !c.clientEof && (c.outUp?.length ?? 0) < HIGH;
  const ev = (readC ? EPOLLIN | EPOLLRDHUP : 0) | (c.outClient ? EPOLLOUT : 0);
  if (ev !== c.clientEvents) ctl(EPOLL_CTL_MOD, c.client, ev), c.clientEvents = ev;
  if (c.up < 0) return;
  const readU = !c.upEof && (c.outClient?.length ?? 0) < HIGH;
  const uev = (readU ? EPOLLIN | EPOLLRDHUP : 0) | (c.outUp || !c.upConnected ? EPOLLOUT : 0);
  if (uev !== c.upEvents) ctl(EPOLL_CTL_MOD, c.up, uev), c.upEvents = uev;
}

let judge: PrototypeJudge;
let requests = 0;

const machineOptions = {
  judge: (req: HttpRequest) => judge.judge(req),
  onRequest: (rec: { allowed: boolean; url: string; code: number; latencyMs: number }) => {
    requests++;
    const { allowed, code, latencyMs } = rec;
    addFlow({ rule: allowed ? judge.rule : -1, code, latencyMs, path: rec.url, allowed });
  },
  headerTimeoutMs: 10_000,
  idleTimeoutMs: 60_000,
};

function onAccept(now: number): void {
  for (;;) {
    const fd = acceptNoDelay(listenFd);
    if (fd < 0) return;
    const c: Conn = {
      m: undefined as unknown as Http1Machine,
      client: fd,
      up: -1,
      upConnected: false,
      outClient: null,
      outUp: null,
      clientEvents: EPOLLIN | EPOLLRDHUP,
      upEvents: 0,
      clientEof: false,
      upEof: false,
      broken: false,
    };
    c.m = new Http1Machine(ioFor(c), { ...machineOptions, now });
    byFd[fd] = c;
    conns.add(c);
    ctl(EPOLL_CTL_ADD, fd, c.clientEvents);
  }
}

function onEvent(c: Conn, fd: number, ev: number, now: number): void {
  handle(c, fd, ev, now);
  settle(c);
}

function handle(c: Conn, fd: number, ev: number, now: number): void {
  const isUp = fd === c.up;
  if (ev & EPOLLOUT) {
    if (isUp) {
      if (!c.upConnected && ev & (EPOLLERR | EPOLLHUP)) {
        return c.m.upstreamFailed(`errno on connect`, now);
      }
      c.upConnected = true;
      if (c.outUp) {
        const left = writeNow(fd, c.outUp);
        if (left === undefined) return c.m.close();
        c.outUp = left;
      }
    } else if (c.outClient) {
      const left = writeNow(fd, c.outClient);
      if (left === undefined) return c.m.close();
      c.outClient = left;
    }
  }
  if (!(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) || byFd[fd] !== c) return;
  // (A paused or ended leg still reports HUP/ERR: read it only when its bytes are wanted.)
  if (isUp ? c.upEof : !c.m.wantsClient && !(ev & (EPOLLHUP | EPOLLERR))) return;
  const n = S.read_p(fd, scratchP, BUF);
  if (n < 0 && errnoView.getInt32() === EAGAIN) return;
  if (isUp) {
    if (n > 0) return c.m.upstream(scratch.subarray(0, n), now);
    c.upEof = true; // (read no more; the machine drops the leg when it is done with it)
    return c.m.upstreamEnd(now);
  }
  if (n > 0) return c.m.client(scratch.subarray(0, n), now);
  if (n < 0) return c.m.close();
  c.clientEof = true;
  c.m.clientEnd(now);
}

function loop(stop: Int32Array): void {
  let lastPost = performance.now(), lastTick = lastPost;
  while (Atomics.load(stop, 0) === 0) {
    const n = epollWait(100);
    const now = performance.now();
    for (let i = 0; i < n; i++) {
      const fd = fdAt(i);
      if (fd === listenFd) onAccept(now);
      else {
        const c = byFd[fd];
        if (c) onEvent(c, fd, eventsAt(i), now);
      }
    }
    if (now - lastTick > 100) {
      for (const c of conns) if (c.m.deadline <= now) c.m.tick(now), settle(c);
      lastTick = now;
    }
    if (flowsWaiting() > 0 && now - lastPost > 50) {
      postFlows();
      lastPost = now;
    }
  }
  for (const c of [...conns]) c.m.close();
  epollClose();
}

async function start(m: ForwarderStart): Promise<void> {
  judge = await PrototypeJudge.create(m.policy);
  originLen = encodeSockaddr(origin, m.origin.ip, m.origin.port);
  listenFd = m.listenFd;
  epollOpen();
  ctl(EPOLL_CTL_ADD, listenFd, EPOLLIN);
  self.postMessage({ ready: true });
  loop(new Int32Array(m.stop));
  if (flowsWaiting() > 0) postFlows();
  judge.close();
  self.postMessage({ done: { requests } });
}

self.onmessage = (e: MessageEvent<ForwarderStart>) => {
  start(e.data).catch((err) => self.postMessage({ error: String(err?.stack ?? err) }));
};
