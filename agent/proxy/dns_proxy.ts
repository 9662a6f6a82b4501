// The node's DNS proxy, inside the agent: one UDP socket and one TCP listener on each pod gateway
// (IPv4, and IPv6 when the node has an IPv6 pod CIDR), all on one port, that the kernel redirects
// DNS to when a DNS rule covers it (bpf/lib/proxy.h; what it sends back is reverse-NATed, so the
// pod sees it come from the server it asked). For each query it reads the original destination from
// the kernel, judges the name with the endpoint's DNS rules, answers a refused name itself
// (REFUSED, or NXDOMAIN when configured), and forwards an allowed one to the original server over a
// pooled upstream leg (dns_upstream.ts: UDP per (pod, server), TCP per client connection; a server
// pod sees the client's address). The answer is checked against the question, its addresses are
// learned (toFQDNs) and written to the datapath, and only then is it returned, unchanged but for
// the id the upstream leg restored. Over TCP (RFC 7766) a connection carries several 2-byte
// length-prefixed queries, answered as they complete (pipelining), and is closed after an idle
// timeout or on a malformed length (_dns_proxy_tcp.ts). The listeners, and UDP served on the event
// loop: _dns_proxy_listen.ts; options and the flow record: _dns_proxy_options.ts; metrics and
// flow records: _dns_proxy_flows.ts.
//
// Rules (fail closed):
// 1. A datagram the kernel did not redirect (no cilia_proxy_orig entry) gets no answer.
// 2. A query that does not parse gets FORMERR and is never forwarded; a refused name is never
//    forwarded.
// 3. Nothing is learned from a datagram that is not the answer (dns_message.ts rule 2); stray
//    datagrams are ignored while waiting; no answer within the timeout → SERVFAIL.
// 3a. A TCP frame shorter than a DNS header closes the connection; so does a client that keeps
//    more than 64 queries in flight (it is paused until answers go out).
// 4. When the learned addresses cannot be written, the pod gets SERVFAIL instead of an answer
//    whose addresses its policy would drop.

import type net from "node:net";
import type { OrigDestination } from "../datapath/proxy_maps.ts";
import { raiseReceiveBuffer } from "../sys/sock_buf.ts";
import { DnsUdpPath } from "./dns_udp_path.ts";
import { DnsMessageError, type DnsQuery, makeResponse, parseQuery, RCODE } from "./dns_message.ts";
import { type Forwarded, type TcpUpstream, UdpUpstreams } from "./dns_upstream.ts";
import {
  type DnsProxyOptions,
  type DnsRecord,
  UDP_WORKER_NICE,
  UDP_WORKER_REALTIME,
} from "./_dns_proxy_options.ts";
import { DnsFlows } from "./_dns_proxy_flows.ts";
import { bindDnsListeners, serveDnsUdp } from "./_dns_proxy_listen.ts";
import { type DnsTcpHost, plainConnect, serveDnsTcp } from "./_dns_proxy_tcp.ts";

export {
  type DnsJudge,
  type DnsProxyMaps,
  type DnsProxyOptions,
  type DnsRecord,
  engineJudge,
  UDP_WORKER_NICE,
  UDP_WORKER_REALTIME,
} from "./_dns_proxy_options.ts";

export class DnsProxy {
  readonly #o: DnsProxyOptions;
  /** The UDP sockets and TCP listeners, one of each per gateway (IPv4, IPv6). */
  #socks: Deno.DatagramConn[] = [];
  #tcps: net.Server[] = [];
  readonly #conns = new Set<net.Socket>();
  /** What the listeners need of the proxy (TCP connections and UDP on the event loop). */
  readonly #host: DnsTcpHost;
  readonly #udp: UdpUpstreams;
  #port = 0;
  #gateway = "0.0.0.0";
  #gateway6 = "";
  /** Metrics and flow records (batched off the answer's path, never dropped). */
  readonly #flows: DnsFlows;
  /** UDP served by a Worker (when the maps are pinned ones). */
  #udpPath: DnsUdpPath | undefined;

  constructor(o: DnsProxyOptions) {
    this.#o = o;
    this.#udp = new UdpUpstreams({
      maps: o.maps,
      timeoutMs: this.#timeout,
      receiveBuffer: this.#receiveBuffer,
    });
    this.#flows = new DnsFlows(o.metrics, o.log, o.onRecord);
    this.#host = {
      original: (ip, port) => this.#original(ip, port),
      answer: (msg, orig, client, opts) => this.answer(msg, orig, client, opts),
      connect: o.connectTcp ??
        ((d) => plainConnect(d, d.ip.includes(":") ? this.#gateway6 : this.#gateway)),
      timeoutMs: this.#timeout,
      idleMs: o.tcpIdleMs ?? 10_000,
      log: o.log,
      conns: this.#conns,
    };
  }

  get onRecord(): ((r: DnsRecord) => void) | undefined {
    return this.#flows.onRecord;
  }
  set onRecord(f: ((r: DnsRecord) => void) | undefined) {
    this.#flows.onRecord = f;
  }
  /** When set, records go here a batch at a time instead of to onRecord. */
  get onBatch(): ((records: DnsRecord[]) => void) | undefined {
    return this.#flows.onBatch;
  }
  set onBatch(f: ((records: DnsRecord[]) => void) | undefined) {
    this.#flows.onBatch = f;
  }

  /** The port redirects go to (0 until started). */
  get port(): number {
    return this.#port;
  }

  /**
   * Binds UDP and TCP on `gateway` (the IPv4 pod gateway) and, if given, on `gateway6` (the IPv6
   * one), all on one port, from `port` upwards (0: any).
   */
  async start(gateway: string, port = 10053, gateway6 = ""): Promise<number> {
    this.#gateway = gateway;
    this.#gateway6 = gateway6;
    this.#udp.gateway = gateway;
    this.#udp.gateway6 = gateway6;
    const addrs = gateway6 ? [gateway, gateway6] : [gateway];
    const pins = this.#o.maps?.pins;
    const l = await bindDnsListeners(addrs, port, {
      raw: pins !== undefined,
      receiveBuffer: this.#receiveBuffer,
      onTcp: (c) => serveDnsTcp(c, this.#host),
      log: this.#o.log,
    });
    const p = l.port;
    this.#tcps = l.tcps;
    this.#socks = l.socks;
    this.#port = p;
    if (pins) await this.#startWorker(l.fds, pins);
    for (const [i, sock] of l.socks.entries()) {
      this.#raiseBuffer(p, addrs[i]!.includes(":") ? 6 : 4);
      serveDnsUdp(sock, this.#host, (s) => this.#socks.includes(s));
    }
    this.#o.log.info("DNS proxy listening", { address: addrs.join(", "), port: p });
    return p;
  }

  /** UDP off the event loop: the Worker owns the bound sockets `fds` from now on. */
  async #startWorker(fds: number[], pins: { cfg: string; orig: string; nat: string }) {
    const path = new DnsUdpPath({
      judge: this.#o.judge,
      learn: this.#o.learn,
      ...(this.#o.knownUntil ? { knownUntil: this.#o.knownUntil } : {}),
      deleteNat: (n) => this.#o.maps?.deleteNat(n),
      log: this.#o.log,
      onRecords: (records) => this.#flows.addBatch(records),
    });
    this.#udpPath = path;
    try {
      await path.start({
        listeners: fds.map((fd) => ({ fd })),
        port: this.#port,
        gateway: this.#gateway,
        gateway6: this.#gateway6,
        pins,
        rejectRcode: this.#o.rejectRcode ?? RCODE.REFUSED,
        timeoutMs: this.#timeout,
        idleMs: 30_000,
        receiveBuffer: this.#receiveBuffer,
        nice: this.#o.udpWorkerNice ?? UDP_WORKER_NICE,
        realtime: this.#o.udpWorkerRealtime ?? UDP_WORKER_REALTIME,
      });
    } catch (err) {
      this.#udpPath = undefined;
      await this.close();
      throw err;
    }
  }

  /** What the UDP Worker cached (verdicts, learned addresses) is stale from now on. */
  invalidate(): void {
    this.#udpPath?.invalidate();
  }

  /** The kernel's original destination of a redirected client (rule 1: none, no answer). */
  #original(ip: string, port: number): OrigDestination | undefined {
    try {
      return this.#o.maps?.original(ip, port, this.#port);
    } catch {
      return undefined;
    }
  }

  /** Hands every queued record to onRecord now (close() does too: records are never dropped). */
  flushRecords(): void {
    this.#flows.flush();
  }

  /** The response for one redirected query (rules 2–4); undefined: none. */
  async answer(
    msg: Uint8Array,
    o: OrigDestination,
    client: { ip: string; port: number },
    opts: { started?: number; via?: TcpUpstream; proto?: number } = {},
  ): Promise<Uint8Array | undefined> {
    const started = opts.started ?? performance.now();
    const base = {
      ...(opts.proto === 6 ? { tcp: true } : {}),
      epId: o.epId,
      client,
      server: { ip: o.ip, port: o.port },
      srcIdentity: o.srcIdentity,
      dstIdentity: o.dstIdentity,
      cookie: o.cookie,
      cnames: [] as string[],
      ips: [] as string[],
    };
    const done = (
      r: { query: string; qtype: string; allowed: boolean; rcode: number; cookie?: number },
      extra: Partial<DnsRecord>,
      out: Uint8Array | undefined,
    ) => {
      const latencyMs = performance.now() - started;
      this.#flows.add({ ...base, ...r, ...extra, latencyMs, at: Date.now() });
      return out;
    };
    let q: DnsQuery;
    try {
      q = parseQuery(msg);
    } catch (err) {
      const error = err instanceof DnsMessageError ? err.message : String(err);
      const r = { query: "", qtype: "", allowed: false, rcode: RCODE.FORMERR };
      return done(r, { error }, msg.length >= 12 ? makeResponse(msg, RCODE.FORMERR) : undefined);
    }
    const verdict = this.#o.judge(o, q.name, opts.proto ?? 17);
    const head = { query: q.name, qtype: q.type, cookie: verdict.cookie };
    if (!verdict.allowed) {
      const rcode = this.#o.rejectRcode ?? RCODE.REFUSED;
      return done({ ...head, allowed: false, rcode }, {}, makeResponse(msg, rcode));
    }
    const up: Forwarded = await (opts.via ?? this.#udp).forward(q, o, client.ip);
    if (typeof up === "string") {
      return done(
        { ...head, allowed: true, rcode: RCODE.SERVFAIL },
        { error: up },
        makeResponse(msg, RCODE.SERVFAIL),
      );
    }
    const { answer, bytes } = up;
    const learned = { cnames: answer.names.slice(1), ips: answer.ips.map((i) => i.ip) };
    if (answer.rcode === RCODE.NOERROR && answer.ips.length > 0) {
      const error = await this.#o.learn(o.epId, answer.names, answer.ips);
      if (error !== undefined) { // 4.
        return done(
          { ...head, allowed: true, rcode: RCODE.SERVFAIL },
          { ...learned, error: `cannot allow the answer's addresses: ${error}` },
          makeResponse(msg, RCODE.SERVFAIL),
        );
      }
    }
    return done({ ...head, allowed: true, rcode: answer.rcode }, learned, bytes);
  }

  get #receiveBuffer(): number {
    return this.#o.receiveBuffer ?? 1 << 20;
  }

  #raiseBuffer(port: number, family: 4 | 6): void {
    if (this.#receiveBuffer <= 0) return;
    const got = raiseReceiveBuffer(port, family, this.#receiveBuffer);
    if (typeof got === "string") {
      this.#o.log.warn("DNS proxy: cannot raise a UDP receive buffer", { port, error: got });
    }
  }

  get #timeout(): number {
    return this.#o.upstreamTimeoutMs ?? 2000;
  }

  async close(): Promise<void> {
    const udpPath = this.#udpPath;
    this.#udpPath = undefined;
    await udpPath?.close();
    this.flushRecords();
    const socks = this.#socks;
    this.#socks = [];
    for (const sock of socks) {
      try {
        sock.close();
      } catch { /* closed */ }
    }
    for (const t of this.#tcps) t.close();
    this.#tcps = [];
    for (const c of this.#conns) c.destroy();
    this.#conns.clear();
    this.#udp.close();
  }
}
