// The node's DNS proxy, inside the agent: one UDP socket and one TCP listener on the pod gateway,
// on one port, that the kernel redirects DNS to when a DNS rule covers it (bpf/lib/proxy.h; what
// it sends back is reverse-NATed, so the pod sees it come from the server it asked). For each
// query it reads the original destination from the kernel, judges the name with the endpoint's
// DNS rules, answers a refused name itself (REFUSED, or NXDOMAIN when configured), and forwards an
// allowed one to the original server over a pooled upstream leg (dns_upstream.ts: UDP per (pod,
// server), TCP per client connection; a server pod sees the client's address). The answer is
// checked against the question, its addresses are learned (toFQDNs) and written to the datapath,
// and only then is it returned, unchanged but for the id the upstream leg restored. Over TCP
// (RFC 7766) a connection carries several 2-byte length-prefixed queries, answered as they
// complete (pipelining), and is closed after an idle timeout or on a malformed length.
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

import net from "node:net";
import type { Buffer } from "node:buffer";
import type { PolicyEngine } from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { Counter, Histogram, Metrics } from "../metrics.ts";
import type { OrigDestination, UpstreamNat } from "../datapath/proxy_maps.ts";
import { DnsMessageError, type DnsQuery, makeResponse, parseQuery, RCODE } from "./dns_message.ts";
import {
  type Forwarded,
  frame,
  Frames,
  type TcpConnect,
  TcpUpstream,
  UdpUpstreams,
} from "./dns_upstream.ts";

/** What the proxy needs of the kernel's proxy maps (ProxyMaps). */
export interface DnsProxyMaps {
  original(clientIp: string, clientPort: number, proxyPort: number): OrigDestination | undefined;
  writeNat(n: UpstreamNat): void;
  deleteNat(n: { server: { ip: string; port: number }; localPort: number }): void;
}

/** proto: 17 (UDP) or 6 (TCP). */
export type DnsJudge = (
  o: OrigDestination,
  name: string,
  proto: number,
) => { allowed: boolean; cookie: number };

/** One DNS request as a flow record. */
export interface DnsRecord {
  epId: number;
  client: { ip: string; port: number };
  server: { ip: string; port: number };
  srcIdentity: number;
  dstIdentity: number;
  cookie: number;
  query: string;
  qtype: string;
  allowed: boolean;
  rcode: number;
  /** The CNAME chain after the question name. */
  cnames: string[];
  ips: string[];
  latencyMs: number;
  error?: string;
  /** Over TCP (else UDP). */
  tcp?: boolean;
}

export interface DnsProxyOptions {
  judge: DnsJudge;
  maps: DnsProxyMaps | undefined;
  learn: (epId: number, names: string[], ips: { ip: string; ttl: number }[]) => Promise<
    string | undefined
  >;
  log: Logger;
  metrics: Metrics;
  /** The rcode of a refused query (REFUSED 5, or NXDOMAIN 3). */
  rejectRcode?: number;
  upstreamTimeoutMs?: number;
  /** The TCP leg's connect (the L7 proxy's, which writes the proxy-NAT entry first). */
  connectTcp?: TcpConnect;
  /** A client TCP connection with nothing in flight for this long is closed (default 10 s). */
  tcpIdleMs?: number;
  onRecord?: (r: DnsRecord) => void;
}

/** The engine's verdict on a DNS query of a redirected flow. */
export function engineJudge(engine: Pick<PolicyEngine, "query">): DnsJudge {
  return (o, name, proto) => {
    const r = engine.query({
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

const u8 = (b: Buffer) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);

export class DnsProxy {
  readonly #o: DnsProxyOptions;
  #sock: Deno.DatagramConn | undefined;
  #tcp: net.Server | undefined;
  readonly #conns = new Set<net.Socket>();
  readonly #udp: UdpUpstreams;
  #port = 0;
  #gateway = "0.0.0.0";
  readonly #requests: Counter;
  readonly #latency: Histogram;
  onRecord: ((r: DnsRecord) => void) | undefined;

  constructor(o: DnsProxyOptions) {
    this.#o = o;
    this.onRecord = o.onRecord;
    this.#udp = new UdpUpstreams({ maps: o.maps, timeoutMs: this.#timeout });
    this.#requests = o.metrics.counter(
      "cilia_dns_requests_total",
      "DNS queries judged by the DNS proxy, by verdict (forwarded, refused, error)",
    );
    this.#latency = o.metrics.histogram(
      "cilia_dns_request_duration_seconds",
      "time from a query to its answer through the DNS proxy (upstream included)",
      [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    );
  }

  /** The port redirects go to (0 until started). */
  get port(): number {
    return this.#port;
  }

  /** Binds UDP and TCP on `gateway` (the pod gateway), one port from `port` upwards (0: any). */
  async start(gateway: string, port = 10053): Promise<number> {
    this.#gateway = gateway;
    this.#udp.gateway = gateway;
    for (let p = port, tries = 0; tries < 100; p = port === 0 ? 0 : p + 1, tries++) {
      let sock: Deno.DatagramConn | undefined;
      let tcp: net.Server | undefined;
      try {
        sock = Deno.listenDatagram({ transport: "udp", hostname: gateway, port: p });
        tcp = net.createServer((c) => this.#serveTcp(c));
        const srv = tcp, bound = (sock.addr as Deno.NetAddr).port;
        await new Promise<void>((resolve, reject) => {
          srv.once("error", reject);
          srv.listen(bound, gateway, () => resolve());
        });
      } catch (err) {
        sock?.close();
        tcp?.close();
        const inUse = err instanceof Deno.errors.AddrInUse ||
          (err as { code?: string }).code === "EADDRINUSE";
        if (inUse) continue;
        throw err;
      }
      tcp.on("error", (err) => this.#o.log.warn("DNS proxy TCP listener error", { error: err }));
      this.#tcp = tcp;
      this.#sock = sock;
      this.#port = (sock.addr as Deno.NetAddr).port;
      this.#receive(sock);
      this.#o.log.info("DNS proxy listening", { address: gateway, port: this.#port });
      return this.#port;
    }
    throw new Error(`No free port for the DNS proxy on "${gateway}" from ${port}`);
  }

  /** One client TCP connection (rules 1, 3a): framed queries, answered as they complete. */
  #serveTcp(c: net.Socket): void {
    const client = { ip: c.remoteAddress ?? "", port: c.remotePort ?? 0 };
    let orig: OrigDestination | undefined;
    try {
      orig = this.#o.maps?.original(client.ip, client.port, this.#port);
    } catch {
      orig = undefined;
    }
    if (!orig) { // 1.
      c.destroy();
      return;
    }
    const o = orig;
    this.#conns.add(c);
    c.setNoDelay(true);
    const connect: TcpConnect = this.#o.connectTcp ??
      ((o) => plainConnect(o, this.#gateway === "0.0.0.0" ? undefined : this.#gateway));
    const up = new TcpUpstream(connect, this.#timeout);
    const frames = new Frames();
    let inflight = 0;
    let idle: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(idle);
      idle = inflight === 0
        ? setTimeout(() => c.destroy(), this.#o.tcpIdleMs ?? 10_000)
        : undefined;
    };
    arm();
    c.on("data", (chunk: Buffer) => {
      const msgs = frames.push(u8(chunk));
      if (msgs === "malformed") { // 3a.
        this.#o.log.debug("DNS proxy closed a TCP connection: malformed length", { client });
        c.destroy();
        return;
      }
      for (const m of msgs) {
        inflight++;
        if (inflight > 64) c.pause();
        this.answer(m, o, client, { via: up, proto: 6 }).then((reply) => {
          if (reply && !c.destroyed) c.write(frame(reply));
        }).catch((err) => this.#o.log.warn("DNS proxy request failed", { error: err }))
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
      this.#conns.delete(c);
    });
  }

  /** One receive buffer, reused: receive() without one allocates 64 KiB per datagram. */
  async #receive(sock: Deno.DatagramConn): Promise<void> {
    const buf = new Uint8Array(65536);
    for (;;) {
      let msg: Uint8Array, from: Deno.NetAddr;
      try {
        const got = await sock.receive(buf);
        [msg, from] = [got[0].slice(), got[1] as Deno.NetAddr];
      } catch (err) {
        if (this.#sock !== sock) return; // closed
        this.#o.log.warn("DNS proxy socket error", { error: err });
        continue;
      }
      this.#handle(sock, msg, from).catch((err) =>
        this.#o.log.warn("DNS proxy request failed", { error: err })
      );
    }
  }

  async #handle(sock: Deno.DatagramConn, msg: Uint8Array, from: Deno.NetAddr): Promise<void> {
    const started = performance.now();
    let orig: OrigDestination | undefined;
    try {
      orig = this.#o.maps?.original(from.hostname, from.port, this.#port);
    } catch {
      orig = undefined;
    }
    if (!orig) return; // 1.
    const reply = await this.answer(msg, orig, { ip: from.hostname, port: from.port }, {
      started,
    });
    if (reply && this.#sock === sock) await sock.send(reply, from);
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
      const verdict = extra.error !== undefined ? "error" : r.allowed ? "forwarded" : "refused";
      this.#requests.inc({ verdict });
      this.#latency.observe(latencyMs / 1000);
      this.onRecord?.({ ...base, ...r, ...extra, latencyMs });
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

  get #timeout(): number {
    return this.#o.upstreamTimeoutMs ?? 2000;
  }

  close(): void {
    try {
      this.#sock?.close();
    } catch { /* closed */ }
    this.#sock = undefined;
    this.#tcp?.close();
    this.#tcp = undefined;
    for (const c of this.#conns) c.destroy();
    this.#conns.clear();
    this.#udp.close();
  }
}

/** The TCP leg without the kernel's proxy-NAT (no maps: tests). */
function plainConnect(o: OrigDestination, localAddress: string | undefined): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: o.ip, port: o.port, ...(localAddress ? { localAddress } : {}) });
    s.setNoDelay(true);
    s.once("connect", () => {
      s.off("error", reject);
      resolve(s);
    });
    s.once("error", reject);
  });
}
