// The DNS proxy's listeners (dns_proxy.ts): a UDP socket and a TCP listener on each pod gateway,
// all on one port, the first free one from the asked port upwards (0: any; the IPv6 pair then
// takes the port the first got). UDP as bound fds for the UDP Worker (raw), else Deno sockets
// served here on the event loop (no pinned maps: tests). A port taken on any address is given up
// whole and the next tried.

import net from "node:net";
import type { Logger } from "../log.ts";
import { bindUdp, EADDRINUSE, libc } from "../sys/sockets_ffi.ts";
import type { DnsServeHost } from "./_dns_proxy_options.ts";

export interface DnsListeners {
  port: number;
  /** The UDP sockets (not raw), one per address. */
  socks: Deno.DatagramConn[];
  /** The bound UDP fds (raw), one per address. */
  fds: number[];
  tcps: net.Server[];
}

/** Binds UDP and TCP on every one of `addrs` on one port, from `port` upwards (100 tries). */
export async function bindDnsListeners(
  addrs: string[],
  port: number,
  o: { raw: boolean; receiveBuffer: number; onTcp: (c: net.Socket) => void; log: Logger },
): Promise<DnsListeners> {
  for (let p = port, tries = 0; tries < 100; p = port === 0 ? 0 : p + 1, tries++) {
    const socks: Deno.DatagramConn[] = [], tcps: net.Server[] = [];
    const fds: number[] = [];
    try {
      for (const addr of addrs) {
        if (o.raw) {
          const b = bindUdp(addr, p, { receiveBuffer: o.receiveBuffer });
          fds.push(b.fd);
          p = b.port;
        } else {
          const sock = Deno.listenDatagram({ transport: "udp", hostname: addr, port: p });
          socks.push(sock);
          p = (sock.addr as Deno.NetAddr).port; // port 0: the IPv6 pair takes the same port
        }
        const srv = net.createServer(o.onTcp);
        tcps.push(srv);
        await new Promise<void>((resolve, reject) => {
          srv.once("error", reject);
          srv.listen(p, addr, () => resolve());
        });
      }
    } catch (err) {
      socks.forEach((s) => s.close());
      fds.forEach((fd) => libc().close(fd));
      tcps.forEach((t) => t.close());
      const inUse = err instanceof Deno.errors.AddrInUse ||
        (err as { code?: string }).code === "EADDRINUSE" ||
        (err as { errno?: number }).errno === EADDRINUSE;
      if (inUse) continue;
      throw err;
    }
    for (const t of tcps) {
      t.on("error", (err) => o.log.warn("DNS proxy TCP listener error", { error: err }));
    }
    return { port: p, socks, fds, tcps };
  }
  throw new Error(`No free port for the DNS proxy on "${addrs.join('", "')}" from ${port}`);
}

/**
 * Serves UDP on the event loop until `sock` is closed (`open(sock)` false). One receive buffer,
 * reused: receive() without one allocates 64 KiB per datagram.
 */
export async function serveDnsUdp(
  sock: Deno.DatagramConn,
  h: DnsServeHost,
  open: (sock: Deno.DatagramConn) => boolean,
): Promise<void> {
  const buf = new Uint8Array(65536);
  for (;;) {
    let msg: Uint8Array, from: Deno.NetAddr;
    try {
      const got = await sock.receive(buf);
      [msg, from] = [got[0].slice(), got[1] as Deno.NetAddr];
    } catch (err) {
      if (!open(sock)) return; // closed
      h.log.warn("DNS proxy socket error", { error: err });
      continue;
    }
    handle(sock, msg, from, h, open).catch((err) =>
      h.log.warn("DNS proxy request failed", { error: err })
    );
  }
}

async function handle(
  sock: Deno.DatagramConn,
  msg: Uint8Array,
  from: Deno.NetAddr,
  h: DnsServeHost,
  open: (sock: Deno.DatagramConn) => boolean,
): Promise<void> {
  const started = performance.now();
  const orig = h.original(from.hostname, from.port);
  if (!orig) return; // 1.
  const reply = await h.answer(msg, orig, { ip: from.hostname, port: from.port }, { started });
  if (reply && open(sock)) {
    sock.send(reply, from).catch((err) => {
      if (open(sock)) h.log.debug("DNS proxy send failed", { error: err });
    });
  }
}
