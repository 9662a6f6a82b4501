// Raises the receive buffer of one of this process's UDP sockets, which Deno's API cannot do: the
// socket's file descriptor is found through /proc (its local port in /proc/self/net/udp or udp6
// gives the inode, /proc/self/fd the descriptor), and libc's setsockopt() sets SO_RCVBUFFORCE
// (root with CAP_NET_ADMIN: past net.core.rmem_max), else SO_RCVBUF (up to rmem_max). It is for
// the DNS proxy's sockets: a datagram that arrives while the event loop is busy waits in the
// buffer instead of being dropped. Best effort: it reports, never throws.

const SOL_SOCKET = 1;
const SO_RCVBUF = 8;
const SO_RCVBUFFORCE = 33;

const SYMBOLS = {
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
} as const;

/** The inode of the UDP socket bound to `port` in the family's table, if any. */
function inodeOf(port: number, family: 4 | 6): string | undefined {
  const table = Deno.readTextFileSync(`/proc/self/net/${family === 4 ? "udp" : "udp6"}`);
  for (const line of table.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    const local = f[1];
    if (!local) continue;
    if (parseInt(local.slice(local.lastIndexOf(":") + 1), 16) === port) return f[9];
  }
  return undefined;
}

function fdOf(inode: string): number | undefined {
  const want = `socket:[${inode}]`;
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${e.name}`) === want) return Number(e.name);
    } catch { /* closed meanwhile */ }
  }
  return undefined;
}

/** The file descriptor of this process's UDP socket on local `port`, if any. */
export function udpSocketFd(port: number, family: 4 | 6): number | undefined {
  const inode = inodeOf(port, family);
  return inode === undefined ? undefined : fdOf(inode);
}

/**
 * Sets the receive buffer of this process's UDP socket on local `port` to `bytes`; returns the
 * size the kernel reports afterwards (it doubles the request for bookkeeping), or an error text.
 */
export function raiseReceiveBuffer(
  port: number,
  family: 4 | 6,
  bytes: number,
): number | string {
  let lib: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;
  try {
    const fd = udpSocketFd(port, family);
    if (fd === undefined) return `no UDP socket of this process on port ${port}`;
    lib = Deno.dlopen("libc.so.6", SYMBOLS);
    const v = new Int32Array([bytes]);
    const u8 = new Uint8Array(v.buffer);
    if (lib.symbols.setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, u8, 4) !== 0) {
      lib.symbols.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, u8, 4);
    }
    const len = new Uint32Array([4]);
    if (lib.symbols.getsockopt(fd, SOL_SOCKET, SO_RCVBUF, u8, new Uint8Array(len.buffer)) !== 0) {
      return `getsockopt(SO_RCVBUF) failed on port ${port}`;
    }
    return v[0]!;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  } finally {
    lib?.close();
  }
}
