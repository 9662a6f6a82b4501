// What the DNS proxy (dns_proxy.ts) is given and what it hands out: the kernel maps it reads, the
// judge, its options, the flow record of one request and what its listeners need of it. Types,
// the defaults of the UDP Worker's scheduling, and the engine's judge. It decides nothing.

import type { PolicyEngine } from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import type { OrigDestination, UpstreamNat } from "../datapath/proxy_maps.ts";
import type { TcpConnect, TcpUpstream } from "./dns_upstream.ts";
import type { DnsInput } from "../monitor/flow.ts";

/** What the proxy needs of the kernel's proxy maps (ProxyMaps). */
export interface DnsProxyMaps {
  original(clientIp: string, clientPort: number, proxyPort: number): OrigDestination | undefined;
  writeNat(n: UpstreamNat): void;
  deleteNat(n: { server: { ip: string; port: number }; localPort: number }): void;
  /**
   * The pinned maps (ProxyMaps): when given, UDP is served by a Worker (dns_udp_worker.ts) that
   * opens its own fds on them, off the agent's event loop; without them, on the event loop.
   */
  readonly pins?: { cfg: string; orig: string; nat: string };
}

/** proto: 17 (UDP) or 6 (TCP). */
export type DnsJudge = (
  o: OrigDestination,
  name: string,
  proto: number,
) => { allowed: boolean; cookie: number };

/** One DNS request as a flow record: what the monitor takes (DnsInput) and who asked whom. */
export interface DnsRecord extends DnsInput {
  epId: number;
  srcIdentity: number;
  dstIdentity: number;
  cookie: number;
  /** When the answer went out (ms since the epoch; records are handed over in batches). */
  at: number;
}

export interface DnsProxyOptions {
  judge: DnsJudge;
  maps: DnsProxyMaps | undefined;
  learn: (epId: number, names: string[], ips: { ip: string; ttl: number }[]) => Promise<
    string | undefined
  >;
  /**
   * Until when (epoch ms) the datapath holds every (name, address) of the endpoint, if it does:
   * the UDP Worker then releases such an answer without waiting for learn() (none: it always
   * waits).
   */
  knownUntil?: (epId: number, names: string[], ips: { ip: string; ttl: number }[]) =>
    | number
    | undefined;
  log: Logger;
  metrics: Metrics;
  /** The rcode of a refused query (REFUSED 5, or NXDOMAIN 3). */
  rejectRcode?: number;
  upstreamTimeoutMs?: number;
  /** The TCP leg's connect (the L7 proxy's, which writes the proxy-NAT entry first). */
  connectTcp?: TcpConnect;
  /** A client TCP connection with nothing in flight for this long is closed (default 10 s). */
  tcpIdleMs?: number;
  /**
   * The UDP sockets' receive buffer (bytes; default 1 MiB, 0 = the system's): a burst that
   * arrives while the event loop is busy waits there instead of being dropped.
   */
  receiveBuffer?: number;
  onRecord?: (r: DnsRecord) => void;
  /** The UDP Worker thread's nice value (default UDP_WORKER_NICE; 0: unchanged). */
  udpWorkerNice?: number;
  /** The UDP Worker thread's SCHED_FIFO priority (default UDP_WORKER_REALTIME; 0: none). */
  udpWorkerRealtime?: number;
}

/** What a listener (_dns_proxy_listen.ts, _dns_proxy_tcp.ts) needs of the proxy. */
export interface DnsServeHost {
  /** The redirected client's original destination (undefined: none, or the lookup failed). */
  original(ip: string, port: number): OrigDestination | undefined;
  /** DnsProxy.answer(): the response for one redirected query; undefined: none. */
  answer(
    msg: Uint8Array,
    o: OrigDestination,
    client: { ip: string; port: number },
    opts?: { started?: number; via?: TcpUpstream; proto?: number },
  ): Promise<Uint8Array | undefined>;
  log: Logger;
}

/**
 * The UDP Worker thread runs at this nice value: it sleeps in epoll_wait but for the moments a
 * query is in hand, and on a busy node it then gets a CPU sooner (the added latency is mostly
 * waiting for one).
 */
export const UDP_WORKER_NICE = -10;
/**
 * And in the real-time class at this SCHED_FIFO priority (the lowest), best effort: a datagram
 * then wakes it at once instead of after the node's other runnable tasks (the tail of the added
 * latency on a loaded node). It blocks in epoll_wait between datagrams.
 */
export const UDP_WORKER_REALTIME = 1;

/** The engine's verdict on a DNS query of a redirected flow (query()'s, without explanation). */
export function engineJudge(engine: Pick<PolicyEngine, "judgeDns">): DnsJudge {
  return (o, name, proto) => {
    const r = engine.judgeDns({
      endpoint: o.epId,
      direction: "egress",
      peer: o.dstIdentity,
      proto,
      port: o.port,
      dns: name,
    });
    const allowed = r.verdict === "allow" || r.verdict === "audit" ||
      (r.verdict === "redirect" && r.l7.status === "allowed");
    return { allowed, cookie: r.cookie || o.cookie };
  };
}
