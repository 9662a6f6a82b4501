// libc's socket and epoll system calls through Deno FFI, for the proxies' data paths that must not
// go through Deno's socket ops (a Worker that serves datagrams in its own loop, off the agent's
// event loop): socket, bind, listen, accept4, connect, setsockopt, getsockname, recvfrom, sendto,
// read, write, epoll, eventfd, close, and errno (hot-path variants take pointers: see `read_p`).
// It also encodes and decodes sockaddr_in / sockaddr_in6. It decides nothing and keeps no
// state but the open library: opened by the first acquire() and closed by the last release() of
// this thread (each Worker has its own), so no handle outlives its use. Calls return what libc
// returns (-1 and errno on failure); sysError() turns that into an Error.

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  recvfrom: {
    parameters: ["i32", "buffer", "usize", "i32", "buffer", "buffer"],
    result: "isize",
  },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  /** epoll_wait on a thread of Deno's pool: the caller's event loop keeps running. */
  epoll_wait_async: {
    name: "epoll_wait",
    parameters: ["i32", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  // TCP (the L7 proxy's I/O prototype, issue 10).
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // Hot-path variants (a loop making several calls per request): Deno turns a call whose
  // parameters and result are all i32/u32/pointer into a V8 fast call, ~10 ns here, where a
  // "buffer" parameter costs ~110 ns, a "usize" given a number ~200 ns, and an "isize" result is
  // a BigInt. Pass Deno.UnsafePointer.of(a buffer made once) and lengths below 2 GiB.
  read_p: { name: "read", parameters: ["i32", "pointer", "u32"], result: "i32" },
  write_p: { name: "write", parameters: ["i32", "pointer", "u32"], result: "i32" },
  // recv/send on a socket skip read/write's VFS layers (~1.5 µs of kernel time a request on the
  // L7 proxy's four calls, measured against read/write).
  recv_p: { name: "recv", parameters: ["i32", "pointer", "u32", "i32"], result: "i32" },
  send_p: { name: "send", parameters: ["i32", "pointer", "u32", "i32"], result: "i32" },
  epoll_ctl_p: { name: "epoll_ctl", parameters: ["i32", "i32", "i32", "pointer"], result: "i32" },
  epoll_wait_p: { name: "epoll_wait", parameters: ["i32", "pointer", "i32", "i32"], result: "i32" },
  setsockopt_p: {
    name: "setsockopt",
    parameters: ["i32", "i32", "i32", "pointer", "u32"],
    result: "i32",
  },
  // Scheduling of the calling thread (a data-path Worker raises its own priority).
  gettid: { parameters: [], result: "i32" },
  setpriority: { parameters: ["i32", "u32", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const;

export const AF_INET = 2, AF_INET6 = 10;
export const SOCK_DGRAM = 2, SOCK_NONBLOCK = 0o4000, SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1, SO_REUSEADDR = 2, SO_RCVBUF = 8, SO_RCVBUFFORCE = 33;
export const IPPROTO_IPV6 = 41, IPV6_V6ONLY = 26;
export const EPOLLIN = 1, EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2;
export const EAGAIN = 11, EINTR = 4, EADDRINUSE = 98;
export const EFD_NONBLOCK = 0o4000, EFD_CLOEXEC = 0o2000000;
export const SOCK_STREAM = 1, IPPROTO_TCP = 6, TCP_NODELAY = 1;
export const EPOLLOUT = 4, EPOLLERR = 8, EPOLLHUP = 16, EPOLLRDHUP = 0x2000, EPOLL_CTL_MOD = 3;
export const EINPROGRESS = 115;
/** send(2): no SIGPIPE on a connection the peer closed (EPIPE instead). */
export const MSG_NOSIGNAL = 0x4000;
/** sizeof(struct epoll_event) on x86-64 (packed: u32 events, u64 data). */
export const EPOLL_EVENT_SIZE = 12;
/** Large enough for a sockaddr_in6. */
export const SOCKADDR_SIZE = 28;

export type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
let lib: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;
let users = 0;

/** Opens the library for one user of this thread; pair every call with release(). */
export function acquire(): void {
  users++;
  lib ??= Deno.dlopen("libc.so.6", SYMBOLS);
}

/** Closes the library when the last user of this thread released it. */
export function release(): void {
  if (users > 0 && --users === 0) closeLibc();
}

/** The library's calls (opened on first use if no user acquired it). */
export function libc(): Libc {
  lib ??= Deno.dlopen("libc.so.6", SYMBOLS);
  return lib.symbols;
}

/** Closes the library now, whoever uses it (a process or Worker that is about to end). */
export function closeLibc(): void {
  lib?.close();
  lib = undefined;
  users = 0;
}

/** This thread's errno, right after a failed call. */
export function errno(): number {
  const p = libc().__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
}

/** An Error for a failed call: `"bind" failed: Address already in use (errno 98)`. */
export function sysError(call: string, err = errno()): Error & { errno: number } {
  const p = libc().strerror(err);
  const text = p ? Deno.UnsafePointerView.getCString(p) : "unknown error";
  return Object.assign(new Error(`"${call}" failed: ${text} (errno ${err})`), { errno: err });
}

/** Writes `ip`:`port` into `out` as a sockaddr_in(6); returns its length. */
export function encodeSockaddr(out: Uint8Array, ip: string, port: number): number {
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out.fill(0, 0, SOCKADDR_SIZE);
  if (!ip.includes(":")) {
    const p = ip.split(".").map(Number);
    if (p.length !== 4 || p.some((x) => !(x >= 0 && x <= 255))) {
      throw new TypeError(`Invalid IPv4 address "${ip}"`);
    }
    v.setUint16(0, AF_INET, true);
    v.setUint16(2, port, false);
    out.set(p, 4);
    return 16;
  }
  v.setUint16(0, AF_INET6, true);
  v.setUint16(2, port, false);
  out.set(ipv6Bytes(ip), 8);
  return 28;
}

function ipv6Bytes(ip: string): Uint8Array {
  const [head = "", tail, extra] = ip.split("::");
  if (extra !== undefined) throw new TypeError(`Invalid IPv6 address "${ip}"`);
  const groups = (s: string) => s === "" ? [] : s.split(":");
  const h = groups(head), t = tail === undefined ? [] : groups(tail);
  const missing = 8 - h.length - t.length;
  if (missing < 0 || (tail === undefined && missing !== 0)) {
    throw new TypeError(`Invalid IPv6 address "${ip}"`);
  }
  const all = [...h, ...Array(missing).fill("0"), ...t];
  const out = new Uint8Array(16);
  for (const [i, g] of all.entries()) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) throw new TypeError(`Invalid IPv6 address "${ip}"`);
    const n = parseInt(g, 16);
    out[2 * i] = n >> 8;
    out[2 * i + 1] = n & 0xff;
  }
  return out;
}

/** The address in a sockaddr_in(6) as text and port (IPv6 in the shortest form). */
export function decodeSockaddr(b: Uint8Array): { ip: string; port: number } {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const family = v.getUint16(0, true), port = v.getUint16(2, false);
  if (family === AF_INET) return { ip: `${b[4]}.${b[5]}.${b[6]}.${b[7]}`, port };
  if (family !== AF_INET6) throw new TypeError(`Unknown address family ${family}`);
  const g: string[] = [];
  for (let i = 0; i < 8; i++) g.push(v.getUint16(8 + 2 * i, false).toString(16));
  // The longest run of zero groups (at least two) becomes "::" (RFC 5952).
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && g[j] === "0") j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const ip = best < 0
    ? g.join(":")
    : `${g.slice(0, best).join(":")}::${g.slice(best + bestLen).join(":")}`;
  return { ip, port };
}

/** An int as the bytes setsockopt() takes. */
const int32 = (n: number) => new Uint8Array(new Int32Array([n]).buffer);

/**
 * A non-blocking socket of `type` bound to `ip`:`port` (0: any): `before(fd, v6)` runs before the
 * bind (options) and `after(fd)` after it; any failure closes it again. Returns the fd and the
 * bound port.
 */
function bound(
  ip: string,
  port: number,
  o: { type: number; before: (fd: number, v6: boolean) => void; after: (fd: number) => void },
): { fd: number; port: number } {
  const c = libc();
  const v6 = ip.includes(":");
  const fd = c.socket(v6 ? AF_INET6 : AF_INET, o.type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw sysError("socket");
  try {
    o.before(fd, v6);
    const sa = new Uint8Array(SOCKADDR_SIZE);
    const len = encodeSockaddr(sa, ip, port);
    if (c.bind(fd, sa, len) !== 0) throw sysError(`bind ${v6 ? `[${ip}]` : ip}:${port}`);
    o.after(fd);
    const salen = new Uint32Array([SOCKADDR_SIZE]);
    if (c.getsockname(fd, sa, new Uint8Array(salen.buffer)) !== 0) throw sysError("getsockname");
    return { fd, port: decodeSockaddr(sa).port };
  } catch (err) {
    c.close(fd);
    throw err;
  }
}

/**
 * A non-blocking UDP socket bound to `ip`:`port` (0: any), with SO_RCVBUFFORCE (else SO_RCVBUF)
 * set to `receiveBuffer` bytes when given (best effort). Returns the fd and the bound port.
 */
export function bindUdp(
  ip: string,
  port: number,
  o: { receiveBuffer?: number } = {},
): { fd: number; port: number } {
  const c = libc();
  return bound(ip, port, {
    type: SOCK_DGRAM,
    before: (fd, v6) => {
      if (v6) c.setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, int32(1), 4);
    },
    after: (fd) => {
      if (!o.receiveBuffer) return;
      const size = int32(o.receiveBuffer);
      if (c.setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, size, 4) !== 0) {
        c.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, size, 4);
      }
    },
  });
}

/** The socket's receive buffer as the kernel reports it (it doubles what was asked). */
export function receiveBufferOf(fd: number): number {
  const v = new Int32Array(1), len = new Uint32Array([4]);
  const rc = libc().getsockopt(
    fd,
    SOL_SOCKET,
    SO_RCVBUF,
    new Uint8Array(v.buffer),
    new Uint8Array(len.buffer),
  );
  if (rc !== 0) throw sysError("getsockopt SO_RCVBUF");
  return v[0]!;
}

/**
 * A non-blocking TCP listener on `ip`:`port` (0: any; "::" is dual-stack) with SO_REUSEADDR and
 * `backlog`. Returns the fd and the bound port.
 */
export function listenTcp(ip: string, port: number, backlog = 1024): { fd: number; port: number } {
  const c = libc();
  return bound(ip, port, {
    type: SOCK_STREAM,
    before: (fd) => c.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, int32(1), 4),
    after: (fd) => {
      if (c.listen(fd, backlog) !== 0) throw sysError("listen");
    },
  });
}
