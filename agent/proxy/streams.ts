// The proxy's two kinds of socket as its Stream (read a chunk, write with backpressure, close):
// a Deno TCP connection (the client legs, from the listeners) and a node:net socket (the upstream
// legs, which need node's `localPort` for the proxy-NAT; taken over as Deno connections where the
// runtime allows). Both are on the hot path of every request: no per-read buffer allocation, no
// per-write loop turn. They own no policy.

import type net from "node:net";
import type { Stream } from "./http_conn.ts";

/** A Deno TCP connection as the proxy's Stream. */
export function denoStream(conn: Deno.Conn): Stream {
  // One read buffer per connection; each read hands out a copy of just the bytes read (a fresh
  // 64 KiB buffer per read cost more than the copy of a small request).
  const buf = new Uint8Array(65536);
  return {
    read: async () => {
      const n = await conn.read(buf).catch(() => null);
      return n === null ? null : buf.slice(0, n);
    },
    write: async (b) => {
      for (let off = 0; off < b.length;) off += await conn.write(b.subarray(off));
    },
    close: () => {
      try {
        conn.close();
      } catch { /* closed */ }
    },
  };
}

type TcpConnClass = new (rid: number, remote: Deno.NetAddr, local: Deno.NetAddr) => Deno.TcpConn;

/**
 * A connected node:net socket (made with node's `localPort`, which Deno.connect lacks) as a Deno
 * TCP connection: the runtime's TCP handle gives its stream up (`takeStream()`, what Deno's own
 * TLS upgrade uses) and it is wrapped in the class of `like`, a Deno connection of the proxy's.
 * Deno's reads and writes then skip node's stream machinery (about 10 µs of CPU per proxied
 * request). Undefined when this Deno has no such handle (the caller keeps the node socket);
 * closing the Stream closes both.
 */
export function takeOverSocket(sock: net.Socket, like: Deno.Conn): Stream | undefined {
  const handle = (sock as unknown as { _handle?: { takeStream?: () => number } })._handle;
  const Conn = Object.getPrototypeOf(like)?.constructor as TcpConnClass | undefined;
  if (typeof handle?.takeStream !== "function" || typeof Conn?.prototype?.read !== "function") {
    return undefined;
  }
  const addr = (hostname = "", port = 0): Deno.NetAddr => ({ transport: "tcp", hostname, port });
  // Read while the handle still has its stream.
  const remote = addr(sock.remoteAddress, sock.remotePort);
  const local = addr(sock.localAddress, sock.localPort);
  let rid: number;
  try {
    rid = handle.takeStream();
  } catch {
    return undefined; // still the node socket's
  }
  let conn: Deno.TcpConn;
  try {
    conn = new Conn(rid, remote, local);
  } catch (err) {
    sock.destroy();
    throw err;
  }
  const s = denoStream(conn);
  return {
    read: s.read,
    write: s.write,
    close: () => {
      s.close();
      sock.destroy(); // its "close" releases the upstream port
    },
  };
}

/** A node:net socket as a Stream: "data" events queued (paused above 1 MiB), no async iterator. */
export function nodeStream(sock: net.Socket): Stream {
  const queue: Uint8Array[] = [];
  let queued = 0, ended = false;
  let waiter: (() => void) | undefined;
  const wake = () => {
    const w = waiter;
    waiter = undefined;
    w?.();
  };
  sock.on("data", (v: Uint8Array) => {
    queue.push(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    queued += v.byteLength;
    if (queued > 1 << 20) sock.pause();
    wake();
  });
  sock.once("close", () => {
    ended = true;
    wake();
  });
  return {
    read: async () => {
      while (queue.length === 0) {
        if (ended) return null;
        await new Promise<void>((resolve) => waiter = resolve);
      }
      const b = queue.shift()!;
      queued -= b.byteLength;
      if (sock.isPaused() && queued <= 1 << 20) sock.resume();
      return b;
    },
    // Resolved as soon as the socket took the bytes (waiting for each write's callback cost a
    // loop turn per request); "drain" is the backpressure, "close" ends a wait that never drains.
    write: (b) => {
      if (sock.destroyed) return Promise.reject(new Error("The upstream connection is closed"));
      if (sock.write(b)) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const drained = () => {
          sock.off("close", closed);
          resolve();
        };
        const closed = () => {
          sock.off("drain", drained);
          reject(new Error("The upstream connection closed"));
        };
        sock.once("drain", drained);
        sock.once("close", closed);
      });
    },
    close: () => sock.destroy(),
  };
}
