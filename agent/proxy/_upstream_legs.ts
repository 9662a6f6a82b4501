// The L7 proxy's upstream legs on its event loop (the HTTP Worker makes its own): a local port from
// the upstream range, the proxy-NAT entry written for it, then the connect from the pod gateway and
// that very port, so the kernel gives the leg the client's address and identity (bpf/lib/proxy.h).
// The port and the entry are given back 2 s after the leg closed. It judges nothing.

import net from "node:net";
import type { OrigDestination, ProxyMaps } from "../datapath/proxy_maps.ts";
import type { Stream } from "./http_conn.ts";
import { nodeStream, takeOverSocket } from "./streams.ts";
import { UpstreamPorts } from "./_upstream_ports.ts";

export class UpstreamLegs {
  /** The address upstream connections are made from (the pod gateway on cilia_host). */
  gateway = "";
  /** The IPv6 address upstream connections to IPv6 servers are made from. */
  gateway6 = "";
  /** The upstream local ports, shared with the HTTP Worker. */
  readonly ports: UpstreamPorts;
  readonly #maps: ProxyMaps | undefined;

  constructor(maps: ProxyMaps | undefined, range: [number, number]) {
    this.#maps = maps;
    this.ports = new UpstreamPorts(range);
  }

  /** The upstream leg as a Stream (a Deno connection like the client's `like` when possible). */
  async connect(
    o: OrigDestination,
    clientIp: string,
    opts: { ingressEpId: number | undefined; like: Deno.Conn },
  ): Promise<Stream> {
    const sock = await this.connectSocket(o, clientIp, { ingressEpId: opts.ingressEpId });
    return takeOverSocket(sock, opts.like) ?? nodeStream(sock);
  }

  /**
   * The upstream leg: the proxy-NAT entry first, then the connect from that very port.
   * ingressEpId: the server endpoint whose ingress policy the proxy judged as well (second hop).
   */
  async connectSocket(
    o: OrigDestination,
    clientIp: string,
    opts: { ingressEpId?: number | undefined; attempt?: number } = {},
  ): Promise<net.Socket> {
    const attempt = opts.attempt ?? 0;
    const localPort = this.ports.take();
    const server = { ip: o.ip, port: o.port };
    const release = () => {
      setTimeout(() => {
        try {
          this.#maps?.deleteNat({ server, localPort });
        } catch { /* maps closed */ }
        this.ports.release(localPort);
      }, 2000);
    };
    this.#maps?.writeNat({
      server,
      localPort,
      clientIp,
      identity: o.srcIdentity,
      epId: o.epId,
      dir: o.dir,
      ...(opts.ingressEpId !== undefined ? { ingressEpId: opts.ingressEpId } : {}),
    });
    try {
      const sock = await this.#dial(o, localPort);
      sock.on("error", () => {});
      sock.once("close", release);
      return sock;
    } catch (err) {
      release();
      if ((err as { code?: string }).code === "EADDRINUSE" && attempt < 16) {
        return this.connectSocket(o, clientIp, { ...opts, attempt: attempt + 1 });
      }
      throw err;
    }
  }

  /** Connects to the original destination from the gateway of its family and `localPort`. */
  #dial(o: OrigDestination, localPort: number): Promise<net.Socket> {
    const gateway = o.ip.includes(":") ? this.gateway6 : this.gateway;
    return new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({
        host: o.ip,
        port: o.port,
        ...(gateway ? { localAddress: gateway } : {}),
        localPort,
      });
      s.setNoDelay(true);
      s.once("connect", () => resolve(s));
      s.once("error", reject);
    });
  }
}
