// The system calls of the L7 proxy's HTTP Worker (http_worker.ts), on raw libc through FFI
// (agent/sys/sockets_ffi.ts): this thread's epoll set driven through pointers made once (the hot
// calls are V8 fast calls), one reused read buffer, non-blocking accept with the client's address,
// upstream sockets bound to a chosen local port before they connect (the proxy-NAT entry is
// written in between), and writes that return what did not go. Module state is per thread; only the Worker imports it. It decides nothing.

import * as S from "../sys/sockets_ffi.ts";

S.acquire();
const c = S.libc();
const errnoView = new Deno.UnsafePointerView(c.__errno_location()!);
/** This thread's errno, right after a failed call. */
export const errno = (): number => errnoView.getInt32();

export const BUF = 65536, EV_MAX = 256;
/** The one buffer every read of this thread goes into. */
export const scratch = new Uint8Array(BUF);
const scratchP = Deno.UnsafePointer.of(scratch)!;
const evBuf = new Uint8Array(S.EPOLL_EVENT_SIZE * EV_MAX);
const evP = Deno.UnsafePointer.of(evBuf)!;
const evDv = new DataView(evBuf.buffer);
const ctlBuf = new Uint8Array(S.EPOLL_EVENT_SIZE);
const ctlP = Deno.UnsafePointer.of(ctlBuf)!;
const ctlDv = new DataView(ctlBuf.buffer);
const oneP = Deno.UnsafePointer.of(new Int32Array([1]))!;
const sa = new Uint8Array(S.SOCKADDR_SIZE);
const saP = Deno.UnsafePointer.of(sa)!;
const saLen = new Uint32Array(1);
const saLenP = Deno.UnsafePointer.of(saLen)!;
const saDv = new DataView(sa.buffer);
let ep = -1;

/** Creates this thread's epoll set. */
export function epollOpen(): void {
  ep = c.epoll_create1(S.SOCK_CLOEXEC);
  if (ep < 0) throw S.sysError("epoll_create1");
}

export function epollClose(): void {
  if (ep >= 0) c.close(ep);
  ep = -1;
}

/** epoll_ctl on this thread's set; 0 or -1. */
export function ctl(op: number, fd: number, events: number): number {
  ctlDv.setUint32(0, events >>> 0, true);
  ctlDv.setUint32(4, fd, true);
  return c.epoll_ctl_p(ep, op, fd, ctlP);
}

/** epoll_wait for at most `ms`; the events are then read with eventsAt(i) and fdAt(i). */
export const epollWait = (ms: number): number => c.epoll_wait_p(ep, evP, EV_MAX, ms);
export const eventsAt = (i: number): number => evDv.getUint32(i * S.EPOLL_EVENT_SIZE, true);
export const fdAt = (i: number): number => evDv.getUint32(i * S.EPOLL_EVENT_SIZE + 4, true);

/** Reads a socket into `scratch`: the count, 0 at the end, -1 with errno. */
export const readScratch = (fd: number): number => c.recv_p(fd, scratchP, BUF, 0);

export const closeFd = (fd: number): number => c.close(fd);

/**
 * The next connection on a non-blocking listener, with TCP_NODELAY, and the client's address
 * (an IPv4-mapped address as IPv4); undefined when there is none.
 */
export function accept(listenFd: number): { fd: number; ip: string; port: number } | undefined {
  saLen[0] = S.SOCKADDR_SIZE;
  const fd = c.accept4(listenFd, saP, saLenP, S.SOCK_NONBLOCK | S.SOCK_CLOEXEC);
  if (fd < 0) return undefined;
  c.setsockopt_p(fd, S.IPPROTO_TCP, S.TCP_NODELAY, oneP, 4);
  const port = saDv.getUint16(2, false);
  if (saDv.getUint16(0, true) === S.AF_INET) {
    return { fd, ip: `${sa[4]}.${sa[5]}.${sa[6]}.${sa[7]}`, port };
  }
  let mapped = sa[18] === 0xff && sa[19] === 0xff;
  for (let i = 8; mapped && i < 18; i++) mapped = sa[i] === 0;
  if (mapped) return { fd, ip: `${sa[20]}.${sa[21]}.${sa[22]}.${sa[23]}`, port };
  return { fd, ...S.decodeSockaddr(sa) };
}

/**
 * A non-blocking TCP socket with TCP_NODELAY bound to `ip`:`port` ("" = any address of the
 * family): its fd, or -errno (EADDRINUSE: try another port).
 */
export function bindTcp(ip: string, port: number, v6: boolean): number {
  const fd = c.socket(
    v6 ? S.AF_INET6 : S.AF_INET,
    S.SOCK_STREAM | S.SOCK_NONBLOCK | S.SOCK_CLOEXEC,
    0,
  );
  if (fd < 0) return -errno();
  c.setsockopt_p(fd, S.SOL_SOCKET, S.SO_REUSEADDR, oneP, 4);
  c.setsockopt_p(fd, S.IPPROTO_TCP, S.TCP_NODELAY, oneP, 4);
  const len = S.encodeSockaddr(sa, ip || (v6 ? "::" : "0.0.0.0"), port);
  if (c.bind(fd, sa, len) !== 0) {
    const e = errno();
    c.close(fd);
    return -e;
  }
  return fd;
}

/** Starts connecting `fd` to `ip`:`port`: 0 connected, 1 in progress, or -errno. */
export function connectTo(fd: number, ip: string, port: number): number {
  const len = S.encodeSockaddr(sa, ip, port);
  if (c.connect(fd, sa, len) === 0) return 0;
  const e = errno();
  return e === S.EINPROGRESS ? 1 : -e;
}

/** Writes b to fd now; returns what did not go (a copy), or null; undefined on an error. */
export function writeNow(fd: number, b: Uint8Array): Uint8Array | null | undefined {
  const p = b.buffer === scratch.buffer && b.byteOffset === 0 ? scratchP : Deno.UnsafePointer.of(b);
  const w = c.send_p(fd, p, b.length, S.MSG_NOSIGNAL);
  if (w === b.length) return null;
  if (w < 0 && errno() !== S.EAGAIN && errno() !== S.EINTR) return undefined;
  return b.slice(Math.max(w, 0));
}

/** Reads the wake-up eventfd empty. */
export function drainEventFd(fd: number): void {
  c.read_p(fd, scratchP, 8);
}

/** Text for an errno: `Connection refused (errno 111)`. */
export function errnoText(e: number): string {
  return S.sysError("x", e).message.replace(/^"x" failed: /, "");
}

const AF_UNIX = 1;

/** A non-blocking stream socket connected to the unix socket at `path`: its fd, or -errno. */
export function connectUnix(path: string): number {
  const p = new TextEncoder().encode(path);
  if (p.length > 107) return -36; // ENAMETOOLONG
  const addr = new Uint8Array(2 + p.length + 1);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(p, 2);
  const fd = c.socket(AF_UNIX, S.SOCK_STREAM | S.SOCK_NONBLOCK | S.SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno();
  if (c.connect(fd, addr, addr.length) !== 0) {
    const e = errno();
    c.close(fd);
    return -e;
  }
  return fd;
}
