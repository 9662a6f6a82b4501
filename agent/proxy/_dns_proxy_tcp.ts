// The DNS proxy's client TCP connections (dns_proxy.ts rules 1, 3a; RFC 7766): the original
// destination of the redirected connection from the kernel (none: closed at once), then 2-byte
// length-prefixed queries, answered as they complete (pipelining) over one TCP upstream leg per
// client connection (dns_upstream.ts); more than 64 queries in flight pause the client until
// answers go out; a malformed length closes the connection, and so does an idle timeout.

import net from "node:net";
import type { Buffer } from "node:buffer";
import type { OrigDestination } from "../datapath/proxy_maps.ts";
import { frame, Frames, type TcpConnect, TcpUpstream, u8 } from "./dns_upstream.ts";
import type { DnsServeHost } from "./_dns_proxy_options.ts";

/** What a client TCP connection needs of the proxy. */
export interface DnsTcpHost extends DnsServeHost {
  connect: TcpConnect;
  timeoutMs: number;
  /** A connection with nothing in flight for this long is closed. */
  idleMs: number;
  /** The open client connections (close() destroys them). */
  conns: Set<net.Socket>;
}

/** One client TCP connection (rules 1, 3a): framed queries, answered as they complete. */
export function serveDnsTcp(c: net.Socket, h: DnsTcpHost): void {
  const client = { ip: c.remoteAddress ?? "", port: c.remotePort ?? 0 };
  const orig = h.original(client.ip, client.port);
  if (!orig) { // 1.
    c.destroy();
    return;
  }
  const o = orig;
  h.conns.add(c);
  c.setNoDelay(true);
  const up = new TcpUpstream(h.connect, h.timeoutMs);
  const frames = new Frames();
  let inflight = 0;
  let idle: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    clearTimeout(idle);
    idle = inflight === 0 ? setTimeout(() => c.destroy(), h.idleMs) : undefined;
  };
  arm();
  c.on("data", (chunk: Buffer) => {
    const msgs = frames.push(u8(chunk));
    if (msgs === "malformed") { // 3a.
      h.log.debug("DNS proxy closed a TCP connection: malformed length", { client });
      c.destroy();
      return;
    }
    for (const m of msgs) {
      inflight++;
      if (inflight > 64) c.pause();
      h.answer(m, o, client, { via: up, proto: 6 }).then((reply) => {
        if (reply && !c.destroyed) c.write(frame(reply));
      }).catch((err) => h.log.warn("DNS proxy request failed", { error: err }))
        .finally(() => {
          inflight--;
          if (inflight <= 64 && c.isPaused()) c.resume();
          arm();
        });
    }
    arm();
  });
  c.on("error", () => {});
  c.on("close", () => {
    clearTimeout(idle);
    up.close();
    h.conns.delete(c);
  });
}

/** The TCP leg without the kernel's proxy-NAT (no maps: tests). */
export function plainConnect(o: OrigDestination, localAddress: string): Promise<net.Socket> {
  const bind = localAddress && localAddress !== "0.0.0.0" ? { localAddress } : {};
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: o.ip, port: o.port, ...bind });
    s.setNoDelay(true);
    s.once("connect", () => {
      s.off("error", reject);
      resolve(s);
    });
    s.once("error", reject);
  });
}
