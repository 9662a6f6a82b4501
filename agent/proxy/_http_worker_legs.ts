// The upstream legs of the HTTP Worker's connections (_http_worker_conns.ts): each one bound to a
// port of the shared range on the pod gateway, its proxy-NAT entry written, then connected (rule 3
// of http_worker.ts: the kernel gives that leg the client's address and identity), and each port
// with its proxy-NAT entry given back 2 s after its leg closed. It opens and connects the leg's
// socket; watching it, reading it and marking it in the shared fd map are the caller's.

import type { ProxyMaps } from "../datapath/proxy_maps.ts";
import * as S from "../sys/sockets_ffi.ts";
import type { UpstreamPorts } from "./_upstream_ports.ts";
import type { Conn } from "./_http_worker_conn.ts";
import * as IO from "./_http_worker_io.ts";

/** An upstream port (and its proxy-NAT entry) is given back this long after its leg closed. */
const RELEASE_MS = 2000;
const EADDRINUSE = 98, EADDRNOTAVAIL = 99, SO_ERROR = 4;

export class UpstreamLegs {
  readonly #maps: ProxyMaps;
  readonly #ports: UpstreamPorts;
  #releases: { at: number; server: { ip: string; port: number }; localPort: number }[] = [];

  constructor(maps: ProxyMaps, ports: UpstreamPorts) {
    this.#maps = maps, this.#ports = ports;
  }

  /**
   * The upstream leg: a port of the range bound, the proxy-NAT entry, then the connect. Done:
   * undefined, with `c.up` connecting or connected (not yet watched nor marked); else the reason.
   */
  connect(c: Conn): string | undefined {
    const o = c.o, v6 = o.ip.includes(":"), ports = this.#ports;
    for (let attempt = 0; attempt < 16; attempt++) {
      let port: number;
      try {
        port = ports.take();
      } catch (err) {
        return (err as Error).message;
      }
      const fd = IO.bindTcp(c.gateway, port, v6);
      if (fd < 0) {
        ports.release(port);
        if (-fd === EADDRINUSE) continue;
        return `bind: ${IO.errnoText(-fd)}`;
      }
      const server = { ip: o.ip, port: o.port };
      try {
        this.#maps.writeNat({
          server,
          localPort: port,
          clientIp: c.client.ip,
          identity: o.srcIdentity,
          epId: o.epId,
          dir: o.dir,
          ...(c.hop2 !== undefined ? { ingressEpId: c.hop2 } : {}),
        });
      } catch (err) {
        IO.closeFd(fd);
        ports.release(port);
        return (err as Error).message; // 3.
      }
      const r = IO.connectTo(fd, o.ip, o.port);
      if (r < 0) {
        IO.closeFd(fd);
        this.#releases.push({ at: performance.now() + RELEASE_MS, server, localPort: port });
        if (-r === EADDRINUSE || -r === EADDRNOTAVAIL) continue;
        return IO.errnoText(-r);
      }
      c.up = fd, c.localPort = port, c.upConnected = r === 0, c.outUp = null, c.upEof = false;
      return undefined;
    }
    return "no usable upstream port";
  }

  /** `c`'s upstream port and its proxy-NAT entry go back RELEASE_MS from now. */
  releaseLater(c: Conn): void {
    if (c.localPort === 0) return;
    const server = { ip: c.o.ip, port: c.o.port };
    this.#releases.push({ at: performance.now() + RELEASE_MS, server, localPort: c.localPort });
    c.localPort = 0;
  }

  /** Gives back the upstream ports (and proxy-NAT entries) whose time came by `now`. */
  releaseDue(now: number): void {
    if (this.#releases.length === 0 || this.#releases[0]!.at > now) return;
    const due = this.#releases.filter((r) => r.at <= now);
    this.#releases = this.#releases.filter((r) => r.at > now);
    for (const r of due) {
      try {
        this.#maps.deleteNat(r);
      } catch { /* maps closed */ }
      this.#ports.release(r.localPort);
    }
  }
}

/** Why a connect failed (SO_ERROR). */
export function socketError(fd: number): string {
  const v = new Int32Array(1), len = new Uint32Array([4]);
  S.libc().getsockopt(
    fd,
    S.SOL_SOCKET,
    SO_ERROR,
    new Uint8Array(v.buffer),
    new Uint8Array(len.buffer),
  );
  return v[0] ? IO.errnoText(v[0]) : "connection failed";
}
