// The node's DNS proxy, inside the agent: one UDP socket on the pod gateway that the kernel
// redirects DNS datagrams to when a DNS rule covers them (bpf/lib/proxy.h; the answer it sends is
// reverse-NATed, so the pod sees it come from the server it asked). For each query it reads the
// original destination from the kernel, judges the name with the endpoint's DNS rules, answers a
// refused name itself (REFUSED, or NXDOMAIN when configured), and forwards an allowed one to the
// original server from a fresh socket (after writing the proxy-NAT entry, so a server pod sees the
// client's address). The answer is checked against the question, its addresses are learned
// (toFQDNs) and written to the datapath, and only then is it returned, unchanged.
//
// Rules (fail closed):
// 1. A datagram the kernel did not redirect (no cilia_proxy_orig entry) gets no answer.
// 2. A query that does not parse gets FORMERR and is never forwarded; a refused name is never
//    forwarded.
// 3. Nothing is learned from a datagram that is not the answer (dns_message.ts rule 2); stray
//    datagrams are ignored while waiting; no answer within the timeout → SERVFAIL.
// 4. When the learned addresses cannot be written, the pod gets SERVFAIL instead of an answer
//    whose addresses its policy would drop.

import dgram from "node:dgram";
import type { Buffer } from "node:buffer";
import type { PolicyEngine } from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { Counter, Histogram, Metrics } from "../metrics.ts";
import type { OrigDestination, UpstreamNat } from "../datapath/proxy_maps.ts";
import {
  type DnsAnswer,
  DnsMessageError,
  type DnsQuery,
  makeResponse,
  parseAnswer,
  parseQuery,
  RCODE,
} from "./dns_message.ts";

/** What the proxy needs of the kernel's proxy maps (ProxyMaps). */
export interface DnsProxyMaps {
  original(clientIp: string, clientPort: number, proxyPort: number): OrigDestination | undefined;
  writeNat(n: UpstreamNat): void;
  deleteNat(n: { server: { ip: string; port: number }; localPort: number }): void;
}

export type DnsJudge = (o: OrigDestination, name: string) => { allowed: boolean; cookie: number };

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
  onRecord?: (r: DnsRecord) => void;
}

/** The engine's verdict on a DNS query of a redirected flow. */
export function engineJudge(engine: Pick<PolicyEngine, "query">): DnsJudge {
  return (o, name) => {
    const r = engine.query({
      endpoint: o.epId,
      direction: "egress",
      peer: o.dstIdentity,
      proto: 17,
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
  #sock: dgram.Socket | undefined;
  #port = 0;
  #gateway = "0.0.0.0";
  readonly #requests: Counter;
  readonly #latency: Histogram;
  onRecord: ((r: DnsRecord) => void) | undefined;

  constructor(o: DnsProxyOptions) {
    this.#o = o;
    this.onRecord = o.onRecord;
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

  /** Binds on `gateway` (the pod gateway), from `port` upwards (0: any). */
  async start(gateway: string, port = 10053): Promise<number> {
    this.#gateway = gateway;
    for (let p = port; p < port + 100 || port === 0; p++) {
      const sock = dgram.createSocket("udp4");
      try {
        await new Promise<void>((resolve, reject) => {
          sock.once("error", reject);
          sock.bind(p, gateway, () => resolve());
        });
      } catch (err) {
        sock.close();
        if ((err as { code?: string }).code === "EADDRINUSE" && port !== 0) continue;
        throw err;
      }
      sock.on("error", (err) => this.#o.log.warn("DNS proxy socket error", { error: err }));
      sock.on("message", (msg, rinfo) => {
        this.#handle(u8(msg), rinfo).catch((err) =>
          this.#o.log.warn("DNS proxy request failed", { error: err })
        );
      });
      this.#sock = sock;
      this.#port = sock.address().port;
      this.#o.log.info("DNS proxy listening", { address: gateway, port: this.#port });
      return this.#port;
    }
    throw new Error(`No free port for the DNS proxy on "${gateway}" from ${port}`);
  }

  async #handle(msg: Uint8Array, rinfo: dgram.RemoteInfo): Promise<void> {
    const started = performance.now();
    let orig: OrigDestination | undefined;
    try {
      orig = this.#o.maps?.original(rinfo.address, rinfo.port, this.#port);
    } catch {
      orig = undefined;
    }
    if (!orig) return; // 1.
    const reply = await this.answer(msg, orig, { ip: rinfo.address, port: rinfo.port }, started);
    if (reply) this.#sock?.send(reply, rinfo.port, rinfo.address);
  }

  /** The response for one redirected query (rules 2–4); undefined: none. */
  async answer(
    msg: Uint8Array,
    o: OrigDestination,
    client: { ip: string; port: number },
    started = performance.now(),
  ): Promise<Uint8Array | undefined> {
    const base = {
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
    const verdict = this.#o.judge(o, q.name);
    const head = { query: q.name, qtype: q.type, cookie: verdict.cookie };
    if (!verdict.allowed) {
      const rcode = this.#o.rejectRcode ?? RCODE.REFUSED;
      return done({ ...head, allowed: false, rcode }, {}, makeResponse(msg, rcode));
    }
    const up = await this.#forward(q, o, client.ip);
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

  /** Sends the query to the original server; its answer, or why there is none. */
  async #forward(
    q: DnsQuery,
    o: OrigDestination,
    clientIp: string,
  ): Promise<{ answer: DnsAnswer; bytes: Uint8Array } | string> {
    const sock = dgram.createSocket("udp4");
    const server = { ip: o.ip, port: o.port };
    let localPort = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        sock.once("error", reject);
        sock.bind(0, this.#gateway === "0.0.0.0" ? undefined : this.#gateway, () => resolve());
      });
      localPort = sock.address().port;
      this.#o.maps?.writeNat({
        server,
        localPort,
        clientIp,
        identity: o.srcIdentity,
        epId: o.epId,
        dir: o.dir,
      });
      return await new Promise((resolve) => {
        timer = setTimeout(
          () => resolve(`no answer from ${o.ip}:${o.port} in ${this.#timeout} ms`),
          this.#timeout,
        );
        sock.on("error", (err) => resolve(`upstream error: ${err.message}`));
        sock.on("message", (m, from) => {
          if (from.address !== o.ip || from.port !== o.port) return; // 3.
          const bytes = u8(m);
          const answer = parseAnswer(q, bytes);
          if (answer) resolve({ answer, bytes });
        });
        sock.send(q.raw, o.port, o.ip);
      });
    } catch (err) {
      return `upstream error: ${(err as Error).message}`;
    } finally {
      clearTimeout(timer);
      sock.close();
      if (localPort) {
        try {
          this.#o.maps?.deleteNat({ server, localPort });
        } catch { /* maps closed */ }
      }
    }
  }

  get #timeout(): number {
    return this.#o.upstreamTimeoutMs ?? 2000;
  }

  close(): void {
    try {
      this.#sock?.close();
    } catch { /* closed */ }
    this.#sock = undefined;
  }
}
