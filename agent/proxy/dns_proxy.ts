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
// timeout or on a malformed length.
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
import type { Histogram, Metrics } from "../metrics.ts";
import type { OrigDestination, UpstreamNat } from "../datapath/proxy_maps.ts";
import { raiseReceiveBuffer } from "../sys/sock_buf.ts";
import { bindUdp, EADDRINUSE, libc } from "../sys/sockets_ffi.ts";
import { DnsUdpPath } from "./dns_udp_path.ts";
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

/** Records are handed to onRecord in batches, at most this long after their answer went out. */
const RECORD_BATCH_MS = 5;

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

const u8 = (b: Buffer) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);

export class DnsProxy {
  readonly #o: DnsProxyOptions;
  /** The UDP sockets and TCP listeners, one of each per gateway (IPv4, IPv6). */
  #socks: Deno.DatagramConn[] = [];
  #tcps: net.Server[] = [];
  readonly #conns = new Set<net.Socket>();
  readonly #udp: UdpUpstreams;
  #port = 0;
  #gateway = "0.0.0.0";
  #gateway6 = "";
  /** cilia_dns_requests_total by verdict, the label text made once (the per-query path). */
  readonly #requests: Record<"forwarded" | "refused" | "error", () => void>;
  readonly #latency: Histogram;
  /** Records not handed over yet (flows: batched off the answer's path, never dropped). */
  #records: DnsRecord[] = [];
  #recordTimer: ReturnType<typeof setTimeout> | undefined;
  /** UDP served by a Worker (when the maps are pinned ones). */
  #udpPath: DnsUdpPath | undefined;
  onRecord: ((r: DnsRecord) => void) | undefined;
  /** When set, records go here a batch at a time instead of to onRecord. */
  onBatch: ((records: DnsRecord[]) => void) | undefined;

  constructor(o: DnsProxyOptions) {
    this.#o = o;
    this.onRecord = o.onRecord;
    this.#udp = new UdpUpstreams({
      maps: o.maps,
      timeoutMs: this.#timeout,
      receiveBuffer: this.#receiveBuffer,
    });
    const requests = o.metrics.counter(
      "cilia_dns_requests_total",
      "DNS queries judged by the DNS proxy, by verdict (forwarded, refused, error)",
    );
    this.#requests = {
      forwarded: requests.bound({ verdict: "forwarded" }),
      refused: requests.bound({ verdict: "refused" }),
      error: requests.bound({ verdict: "error" }),
    };
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
    for (let p = port, tries = 0; tries < 100; p = port === 0 ? 0 : p + 1, tries++) {
      const socks: Deno.DatagramConn[] = [], tcps: net.Server[] = [];
      const fds: number[] = [];
      try {
        for (const addr of addrs) {
          if (pins) {
            const b = bindUdp(addr, p, { receiveBuffer: this.#receiveBuffer });
            fds.push(b.fd);
            p = b.port;
          } else {
            const sock = Deno.listenDatagram({ transport: "udp", hostname: addr, port: p });
            socks.push(sock);
            p = (sock.addr as Deno.NetAddr).port; // port 0: the IPv6 pair takes the same port
          }
          const srv = net.createServer((c) => this.#serveTcp(c));
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
        t.on("error", (err) => this.#o.log.warn("DNS proxy TCP listener error", { error: err }));
      }
      this.#tcps = tcps;
      this.#socks = socks;
      this.#port = p;
      if (pins) await this.#startWorker(fds, pins);
      for (const [i, sock] of socks.entries()) {
        this.#raiseBuffer(p, addrs[i]!.includes(":") ? 6 : 4);
        this.#receive(sock);
      }
      this.#o.log.info("DNS proxy listening", { address: addrs.join(", "), port: p });
      return p;
    }
    throw new Error(`No free port for the DNS proxy on "${addrs.join('", "')}" from ${port}`);
  }

  /** UDP off the event loop: the Worker owns the bound sockets `fds` from now on. */
  async #startWorker(fds: number[], pins: { cfg: string; orig: string; nat: string }) {
    const path = new DnsUdpPath({
      judge: this.#o.judge,
      learn: this.#o.learn,
      ...(this.#o.knownUntil ? { knownUntil: this.#o.knownUntil } : {}),
      deleteNat: (n) => this.#o.maps?.deleteNat(n),
      log: this.#o.log,
      onRecords: (records) => {
        for (const r of records) {
          this.#requests[r.error !== undefined ? "error" : r.allowed ? "forwarded" : "refused"]();
          this.#latency.observe(r.latencyMs / 1000);
        }
        // Already a batch: to the monitor as it is (no second timer, no copy).
        this.#hand(records);
      },
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
      ((o) => plainConnect(o, o.ip.includes(":") ? this.#gateway6 : this.#gateway));
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
        if (!this.#socks.includes(sock)) return; // closed
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
    if (reply && this.#socks.includes(sock)) {
      sock.send(reply, from).catch((err) => {
        if (this.#socks.includes(sock)) this.#o.log.debug("DNS proxy send failed", { error: err });
      });
    }
  }

  /** Queues a flow record; the batch goes to onRecord after the answers of this turn went out. */
  #record(r: DnsRecord): void {
    if (!this.onRecord && !this.onBatch) return;
    this.#records.push(r);
    this.#recordTimer ??= setTimeout(() => this.flushRecords(), RECORD_BATCH_MS);
  }

  /** Hands every queued record to onRecord now (close() does too: records are never dropped). */
  flushRecords(): void {
    clearTimeout(this.#recordTimer);
    this.#recordTimer = undefined;
    const batch = this.#records;
    this.#records = [];
    this.#hand(batch);
  }

  #hand(batch: DnsRecord[]): void {
    if (this.onBatch) {
      try {
        if (batch.length > 0) this.onBatch(batch);
      } catch (err) {
        this.#o.log.warn("DNS proxy: a batch of flow records failed", { error: err });
      }
      return;
    }
    for (const r of batch) {
      try {
        this.onRecord?.(r);
      } catch (err) {
        this.#o.log.warn("DNS proxy: a flow record failed", { error: err });
      }
    }
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
      this.#requests[verdict]();
      this.#latency.observe(latencyMs / 1000);
      this.#record({ ...base, ...r, ...extra, latencyMs, at: Date.now() });
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

/** The TCP leg without the kernel's proxy-NAT (no maps: tests). */
function plainConnect(o: OrigDestination, localAddress: string): Promise<net.Socket> {
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
