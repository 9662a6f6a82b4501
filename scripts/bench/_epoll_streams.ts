// Promise streams over raw non-blocking sockets and one edge-triggered epoll set, for the L7 I/O
// prototype's "conn" mode (issue 10): the proxy's own connection code (serveHttpConnection, which
// reads and writes a `Stream`) served by an epoll loop in a Worker instead of Deno's socket ops.
// A read or write is tried at once (one fast FFI call); only when the socket would block does it
// wait for the socket's next edge. The loop blocks in epoll_wait for at most `tickMs`, then yields
// one macrotask so promise continuations, timers and messages run. A measurement tool, not the
// proxy: IPv4 only, no proxy-NAT. Module state: one epoll set per thread that imports it.
import type { Stream } from "../../agent/proxy/http_conn.ts";
import {
  EAGAIN,
  encodeSockaddr,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLLERR,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  SOCKADDR_SIZE,
} from "../../agent/sys/sockets_ffi.ts";
import {
  acceptNoDelay,
  BUF,
  connectNoDelay,
  ctl,
  epollClose,
  epollOpen,
  epollWait,
  errnoView,
  eventsAt,
  fdAt,
  S,
  scratch,
  scratchP,
} from "./_epoll_common.ts";

const EPOLLET = 1 << 31;
const DONE = Promise.resolve();
epollOpen();
const socks: (FdStream | undefined)[] = [];
const acceptors = new Map<number, (fd: number) => void>();

/** One socket as a Stream; reads and writes wait for epoll edges only when they would block. */
export class FdStream implements Stream {
  #readable = true;
  #writable: boolean;
  #closed = false;
  #onRead: ((b: Uint8Array | null) => void) | undefined;
  #out: Uint8Array | null = null;
  #onWrite: { resolve: () => void; reject: (e: Error) => void } | undefined;

  constructor(readonly fd: number, connected: boolean) {
    this.#writable = connected;
    socks[fd] = this;
    ctl(EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
  }

  /** Reads once now; null at the end of the stream or on an error; undefined: would block. */
  #tryRead(): Uint8Array | null | undefined {
    const n = S.read_p(this.fd, scratchP, BUF);
    if (n > 0) {
      if (n < BUF) this.#readable = false; // drained: the next arrival is a new edge
      return scratch.slice(0, n);
    }
    if (n < 0 && errnoView.getInt32() === EAGAIN) {
      this.#readable = false;
      return undefined;
    }
    return null;
  }

  read(): Promise<Uint8Array | null> {
    touch();
    if (this.#closed) return Promise.resolve(null);
    if (this.#readable) {
      const r = this.#tryRead();
      if (r !== undefined) return Promise.resolve(r);
    }
    return new Promise((resolve) => this.#onRead = resolve);
  }

  write(b: Uint8Array): Promise<void> {
    touch();
    if (this.#closed) return Promise.reject(new Error("Write on a closed socket"));
    if (this.#writable && !this.#out) {
      const w = S.write_p(this.fd, Deno.UnsafePointer.of(b), b.length);
      if (w === b.length) return DONE;
      if (w < 0 && errnoView.getInt32() !== EAGAIN) {
        return Promise.reject(new Error(`Write failed: errno ${errnoView.getInt32()}`));
      }
      b = b.subarray(Math.max(w, 0));
    }
    this.#out = b;
    return new Promise((resolve, reject) => this.#onWrite = { resolve, reject });
  }

  /** An epoll event for this socket. */
  event(ev: number): void {
    if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
      this.#writable = true;
      const out = this.#out, w = this.#onWrite;
      if (out && w) {
        const n = S.write_p(this.fd, Deno.UnsafePointer.of(out), out.length);
        if (n === out.length) {
          this.#out = null, this.#onWrite = undefined;
          w.resolve();
        } else if (n < 0 && errnoView.getInt32() !== EAGAIN) {
          this.#out = null, this.#onWrite = undefined;
          w.reject(new Error("Write failed"));
        } else this.#out = out.subarray(Math.max(n, 0));
      }
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
      this.#readable = true;
      const r = this.#onRead;
      if (r) {
        const got = this.#tryRead();
        if (got !== undefined) {
          this.#onRead = undefined;
          r(got);
        }
      }
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    ctl(EPOLL_CTL_DEL, this.fd, 0);
    S.close(this.fd);
    socks[this.fd] = undefined;
    this.#onRead?.(null);
    this.#onWrite?.reject(new Error("Socket closed"));
    this.#onRead = this.#onWrite = undefined;
  }
}

/** A non-blocking connect to ip:port (IPv4) as a Stream; writes wait until it is connected. */
export function connectTcp(ip: string, port: number): FdStream {
  const sa = new Uint8Array(SOCKADDR_SIZE);
  const up = connectNoDelay(sa, encodeSockaddr(sa, ip, port));
  if (typeof up === "string") throw new Error(`Cannot connect to ${ip}:${port}: ${up}`);
  return new FdStream(up.fd, up.connected);
}

/** Accepts on `listenFd` (made elsewhere; fds are process-wide) and hands each socket over. */
export function acceptOn(listenFd: number, onStream: (s: FdStream) => void): void {
  acceptors.set(listenFd, () => {
    for (;;) {
      const c = acceptNoDelay(listenFd);
      if (c < 0) return;
      onStream(new FdStream(c, true));
    }
  });
  ctl(EPOLL_CTL_ADD, listenFd, EPOLLIN);
}

const macrotask = () => new Promise<void>((r) => setTimeout(r, 0));
let activity = 0;
/** Marks progress of a stream (a read, write or close happened): the loop keeps polling. */
const touch = () => activity++;

/**
 * Runs the loop until `stop[0]` is set. Promise continuations run between polls (a few microtask
 * hops per poll); the loop blocks in epoll_wait (at most `tickMs`) only after polls that found
 * nothing to do. A timer or message needs a macrotask, which costs milliseconds of wall time here
 * (Deno's timer granularity), so one is yielded only when idle or every `yieldMs`.
 */
export async function runLoop(stop: Int32Array, tickMs = 20, yieldMs = 500): Promise<void> {
  let quiet = 0, seen = activity, lastYield = performance.now();
  while (Atomics.load(stop, 0) === 0) {
    const n = epollWait(quiet >= 4 ? tickMs : 0);
    for (let i = 0; i < n; i++) {
      const fd = fdAt(i);
      const a = acceptors.get(fd);
      if (a) a(fd);
      else socks[fd]?.event(eventsAt(i));
    }
    for (let k = 0; k < 4; k++) await null;
    if (n > 0 || activity !== seen) quiet = 0, seen = activity;
    else quiet++;
    const now = performance.now();
    if ((quiet >= 5 && n === 0) || now - lastYield > yieldMs) {
      await macrotask();
      lastYield = performance.now();
    }
  }
  for (const s of socks) s?.close();
  epollClose();
}
