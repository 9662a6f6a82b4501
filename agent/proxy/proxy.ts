// The node's L7 proxy, inside the agent process: one TCP listener per (endpoint, direction, port)
// that L7 rules redirect, on a port the proxy allocates (the kernel DNATs redirected connections
// to it, bpf/lib/proxy.h). For each accepted connection it reads the original destination and
// both identities from the kernel (ProxyMaps), tells HTTP/1 from h2c by the HTTP/2 preface (gRPC:
// h2.ts), judges every HTTP request or HTTP/2 stream with the policy engine (the one evaluator),
// and makes the upstream connection from a port it picks after writing the proxy-NAT entry, so
// the kernel gives that leg the client's address and identity. Each request becomes an L7 record
// (for flows) and metrics. It owns its listeners and sockets, not policy.

import net from "node:net";
import type { PolicyEngine } from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { Counter, Histogram, Metrics } from "../metrics.ts";
import type { OrigDestination, ProxyMaps } from "../datapath/proxy_maps.ts";
import { DIR_EGRESS, DIR_INGRESS } from "../datapath/codecs.ts";
import {
  type HttpRequestInfo,
  type RequestRecord,
  serveHttpConnection,
  type Stream,
} from "./http_conn.ts";
import { prefaceState, serveH2Connection } from "./h2.ts";
import { denoStream, nodeStream } from "./streams.ts";

export type Direction = "ingress" | "egress";

/** One judged request with where it came from and went. */
export interface L7Record extends RequestRecord {
  client: { ip: string; port: number };
  server: { ip: string; port: number };
  epId: number;
  direction: Direction;
  srcIdentity: number;
  dstIdentity: number;
  /** The deciding entry's cookie (the redirecting entry's for a denial), and its L7 rule index. */
  cookie: number;
  rule: number;
}

export interface L7ProxyOptions {
  engine: PolicyEngine;
  /** The kernel's proxy maps; without them no connection can be matched (all are closed). */
  maps: ProxyMaps | undefined;
  log: Logger;
  metrics: Metrics;
  /** Listener ports are taken from here upwards (default 15001). */
  basePort?: number;
  /** Upstream local ports, outside the kernel's ephemeral range (default 61000–65535). */
  upstreamPorts?: [number, number];
  headerTimeoutMs?: number;
  idleTimeoutMs?: number;
  onRecord?: (r: L7Record) => void;
}

interface Listener {
  port: number;
  listener: Deno.Listener;
  epId: number;
}

export { DIR_EGRESS, DIR_INGRESS };
export { denoStream };

export class L7Proxy {
  readonly #o: L7ProxyOptions;
  readonly #listeners = new Map<string, Listener>();
  readonly #pending = new Map<string, Promise<number>>();
  readonly #requests: Counter;
  readonly #latency: Histogram;
  readonly #engineSeconds: Counter;
  #gateway = "";
  #nextUpstream: number;
  readonly #busyUpstream = new Set<number>();
  #closed = false;
  onRecord: ((r: L7Record) => void) | undefined;

  constructor(o: L7ProxyOptions) {
    this.#o = o;
    this.onRecord = o.onRecord;
    this.#nextUpstream = (o.upstreamPorts ?? [61000, 65535])[0];
    this.#requests = o.metrics.counter(
      "cilia_l7_requests_total",
      "L7 requests judged by the proxy, by protocol and verdict (forwarded, denied, error)",
    );
    this.#latency = o.metrics.histogram(
      "cilia_l7_request_duration_seconds",
      "time from a request's head to its response's head through the L7 proxy",
      [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    );
    this.#engineSeconds = o.metrics.counter(
      "cilia_l7_engine_seconds_total",
      "wall time the L7 proxy spent in the policy engine deciding requests, by protocol",
    );
  }

  /** The address upstream connections are made from (the pod gateway on cilia_host). */
  set gateway(ip: string) {
    this.#gateway = ip;
  }

  /** The proxy port for redirects of (endpoint, direction, port): listening before it returns. */
  listen(epId: number, direction: Direction, port: number): Promise<number> {
    const key = `${epId}/${direction}/${port}`;
    const have = this.#listeners.get(key);
    if (have) return Promise.resolve(have.port);
    let p = this.#pending.get(key);
    if (!p) {
      p = this.#open(key, epId).finally(() => this.#pending.delete(key));
      this.#pending.set(key, p);
    }
    return p;
  }

  // deno-lint-ignore require-await
  async #open(key: string, epId: number): Promise<number> {
    if (this.#closed) throw new Error("The L7 proxy is closed");
    const used = new Set([...this.#listeners.values()].map((l) => l.port));
    for (let port = this.#o.basePort ?? 15001; port < 30000; port++) {
      if (used.has(port)) continue;
      let listener: Deno.Listener;
      try {
        listener = Deno.listen({ hostname: "0.0.0.0", port, transport: "tcp" });
      } catch (err) {
        if (err instanceof Deno.errors.AddrInUse) continue;
        throw err;
      }
      const l = { port, listener, epId };
      this.#listeners.set(key, l);
      this.#accept(l);
      this.#o.log.info("L7 proxy listening", { listener: key, port });
      return port;
    }
    throw new Error(`No free port for the L7 proxy listener "${key}"`);
  }

  /** Closes the listeners of an endpoint that is gone. */
  closeEndpoint(epId: number): void {
    for (const [key, l] of this.#listeners) {
      if (l.epId !== epId) continue;
      this.#listeners.delete(key);
      l.listener.close();
    }
  }

  get ports(): { key: string; port: number }[] {
    return [...this.#listeners].map(([key, l]) => ({ key, port: l.port }));
  }

  async #accept(l: Listener): Promise<void> {
    try {
      for await (const conn of l.listener) this.#handle(conn, l.port).catch(() => {});
    } catch {
      // listener closed
    }
  }

  async #handle(conn: Deno.Conn, proxyPort: number): Promise<void> {
    const remote = conn.remoteAddr as Deno.NetAddr;
    let orig: OrigDestination | undefined;
    try {
      orig = this.#o.maps?.original(remote.hostname, remote.port, proxyPort);
    } catch {
      orig = undefined;
    }
    if (!orig) { // not redirected by the kernel: nothing to judge it by (fail closed)
      conn.close();
      return;
    }
    const o = orig;
    // Head and body go out in separate writes: without this Nagle holds the second until the
    // client's delayed ACK (40 ms a response on keep-alive connections).
    (conn as Deno.TcpConn).setNoDelay?.(true);
    const direction: Direction = o.dir === DIR_EGRESS ? "egress" : "ingress";
    const client = { ip: remote.hostname, port: remote.port };
    let last = { cookie: o.cookie, rule: -1 };
    const judge = (req: HttpRequestInfo) => {
      const t0 = performance.now();
      const r = this.#o.engine.query({
        endpoint: o.epId,
        direction,
        peer: direction === "ingress" ? o.srcIdentity : o.dstIdentity,
        proto: 6,
        port: o.port,
        http: { method: req.method, path: req.path, host: req.host, headers: req.headers },
      });
      this.#engineSeconds.inc({ protocol: "http" }, (performance.now() - t0) / 1000);
      last = { cookie: r.cookie || o.cookie, rule: r.l7.rule };
      return r.verdict === "allow" || r.verdict === "audit" ||
        (r.verdict === "redirect" && r.l7.status === "allowed");
    };
    const onRequest = (rec: RequestRecord, protocol = "http") => {
      const verdict = rec.error !== undefined && rec.code !== 403
        ? "error"
        : rec.allowed
        ? "forwarded"
        : "denied";
      this.#requests.inc({ protocol, verdict });
      this.#latency.observe(rec.latencyMs / 1000);
      this.onRecord?.({
        ...rec,
        client,
        server: { ip: o.ip, port: o.port },
        epId: o.epId,
        direction,
        srcIdentity: o.srcIdentity,
        dstIdentity: o.dstIdentity,
        cookie: last.cookie,
        rule: rec.allowed ? last.rule : -1,
      });
    };
    const stream = denoStream(conn);
    const first = await this.#sniff(stream);
    if (first === null) return stream.close();
    if (prefaceState(first) === "complete") {
      return serveH2Connection(conn, first, {
        connect: () => this.#connectSocket(o, client.ip),
        judge,
        onRequest: ({ grpc, ...rec }) => onRequest(rec, grpc ? "grpc" : "http"),
        ...(this.#o.idleTimeoutMs !== undefined ? { idleTimeoutMs: this.#o.idleTimeoutMs } : {}),
      });
    }
    let replay: Uint8Array | undefined = first;
    await serveHttpConnection({
      read: () => {
        const b = replay;
        replay = undefined;
        return b ? Promise.resolve(b) : stream.read();
      },
      write: stream.write,
      close: stream.close,
    }, {
      connect: () => this.#connect(o, client.ip),
      judge,
      onRequest: (rec) => onRequest(rec),
      ...(this.#o.headerTimeoutMs !== undefined
        ? { headerTimeoutMs: this.#o.headerTimeoutMs }
        : {}),
      ...(this.#o.idleTimeoutMs !== undefined ? { idleTimeoutMs: this.#o.idleTimeoutMs } : {}),
    });
  }

  /**
   * The first bytes of a connection, enough to tell the HTTP/2 preface from HTTP/1; null when it
   * closed, or sent nothing or only part of the preface within the header timeout (a read may
   * still be pending then: the connection is only fit to be closed).
   */
  async #sniff(stream: Stream): Promise<Uint8Array | null> {
    const deadline = Date.now() + (this.#o.headerTimeoutMs ?? 10_000);
    let got = new Uint8Array(0);
    while (got.length === 0 || prefaceState(got) === "partial") {
      const left = deadline - Date.now();
      if (left <= 0) return null;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const b = await Promise.race([
        stream.read(),
        new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), left)),
      ]).finally(() => clearTimeout(timer));
      if (b === "timeout" || b === null) return null;
      const next = new Uint8Array(got.length + b.length);
      next.set(got);
      next.set(b, got.length);
      got = next;
    }
    return got;
  }

  #takeUpstreamPort(): number {
    const [lo, hi] = this.#o.upstreamPorts ?? [61000, 65535];
    for (let i = 0; i <= hi - lo; i++) {
      const p = this.#nextUpstream;
      this.#nextUpstream = p >= hi ? lo : p + 1;
      if (!this.#busyUpstream.has(p)) {
        this.#busyUpstream.add(p);
        return p;
      }
    }
    throw new Error("No free upstream port");
  }

  async #connect(o: OrigDestination, clientIp: string): Promise<Stream> {
    return nodeStream(await this.#connectSocket(o, clientIp));
  }

  /** The upstream leg: the proxy-NAT entry first, then the connect from that very port. */
  async #connectSocket(o: OrigDestination, clientIp: string, attempt = 0): Promise<net.Socket> {
    const localPort = this.#takeUpstreamPort();
    const server = { ip: o.ip, port: o.port };
    const release = () => {
      setTimeout(() => {
        try {
          this.#o.maps?.deleteNat({ server, localPort });
        } catch { /* maps closed */ }
        this.#busyUpstream.delete(localPort);
      }, 2000);
    };
    this.#o.maps?.writeNat({
      server,
      localPort,
      clientIp,
      identity: o.srcIdentity,
      epId: o.epId,
      dir: o.dir,
    });
    try {
      const sock = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({
          host: o.ip,
          port: o.port,
          ...(this.#gateway ? { localAddress: this.#gateway } : {}),
          localPort,
        });
        s.setNoDelay(true);
        s.once("connect", () => resolve(s));
        s.once("error", reject);
      });
      sock.on("error", () => {});
      sock.once("close", release);
      return sock;
    } catch (err) {
      release();
      if ((err as { code?: string }).code === "EADDRINUSE" && attempt < 16) {
        return this.#connectSocket(o, clientIp, attempt + 1);
      }
      throw err;
    }
  }

  close(): void {
    this.#closed = true;
    for (const l of this.#listeners.values()) {
      try {
        l.listener.close();
      } catch { /* closed */ }
    }
    this.#listeners.clear();
  }
}
