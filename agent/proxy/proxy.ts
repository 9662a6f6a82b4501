// The node's L7 proxy, inside the agent process: one TCP listener per (endpoint, direction, port)
// that L7 rules redirect, on a port the proxy allocates (the kernel DNATs redirected connections
// to it, bpf/lib/proxy.h). For each accepted connection it reads the original destination and
// both identities from the kernel (ProxyMaps), tells HTTP/1 from h2c by the HTTP/2 preface (gRPC:
// h2.ts) or, on a Kafka listener, serves Kafka (kafka.ts), judges every HTTP request, HTTP/2
// stream or Kafka request with the policy engine (the one evaluator),
// and makes the upstream connection from a port it picks after writing the proxy-NAT entry, so
// the kernel gives that leg the client's address and identity. Each request becomes an L7 record
// (for flows) and metrics. It owns its listeners and sockets, not policy.
//
// With `httpIo: "worker"` (agent option --l7-http-io) plain HTTP listeners are made here through
// libc and served by a Worker (http_worker_path.ts, http_worker.ts: the synchronous HTTP/1.1
// machine on epoll); verdicts still come from this thread's engine (judgeRequest), records come
// back packed in batches with their metrics counted (l7_batch.ts): `onBatch` takes them whole
// (the monitor makes flows only when read), else each becomes an `onRecord` call. Kafka
// listeners, and h2c, stay on this event loop.

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
import { type KafkaRecord, serveKafkaConnection } from "./kafka.ts";
import type { KafkaRequestInfo } from "./kafka_request.ts";
import { denoStream, nodeStream, takeOverSocket } from "./streams.ts";
import { UpstreamPorts } from "./_upstream_ports.ts";
import { type HttpVerdict, HttpWorkerPath } from "./http_worker_path.ts";
import { L7_LATENCY_BUCKETS, L7_VERDICTS, L7Batch } from "./l7_batch.ts";
import { EADDRINUSE, libc, listenTcp } from "../sys/sockets_ffi.ts";

export type Direction = "ingress" | "egress";
/** What a listener serves: HTTP (HTTP/1.1 and h2c, so gRPC) or Kafka. */
export type L7Protocol = "http" | "kafka";

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
  /** For a Kafka request: what it asked (the HTTP fields then describe it for flows). */
  kafka?: KafkaRecord;
}

export interface L7ProxyOptions {
  engine: PolicyEngine;
  /** The kernel's proxy maps; without them no connection can be matched (all are closed). */
  maps: ProxyMaps | undefined;
  log: Logger;
  metrics: Metrics;
  /** Listener ports are taken from here upwards (default 15001). */
  basePort?: number;
  /**
   * Where listener ports are kept across restarts (`<state-dir>/proxy-ports.json`): a restarted
   * agent listens for each (endpoint, direction, ports) on the port the kernel's entries name.
   */
  portsFile?: string;
  /** Upstream local ports, outside the kernel's ephemeral range (default 61000–65535). */
  upstreamPorts?: [number, number];
  headerTimeoutMs?: number;
  idleTimeoutMs?: number;
  onRecord?: (r: L7Record) => void;
  /**
   * Who serves plain HTTP listeners: "worker" (the HTTP/1.1 machine in an epoll Worker; needs
   * pinned maps; the agent's default) or "event-loop" (serveHttpConnection on the agent's loop;
   * the default here, for tests that build an L7Proxy).
   */
  httpIo?: "worker" | "event-loop";
}

interface Listener {
  port: number;
  /** A Deno listener (this event loop), or the fd of one the HTTP Worker serves. */
  listener?: Deno.Listener;
  fd?: number;
  epId: number;
  protocol: L7Protocol;
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
  /** Per-request counters bound to their labels once (labelText per request was measurable). */
  readonly #requestsBy = new Map<string, (by?: number) => void>();
  readonly #engineHttp: (by?: number) => void;
  #gateway = "";
  #gateway6 = "";
  /** Listener ports of earlier runs, by listener key (kept for keys not reopened yet). */
  readonly #saved = new Map<string, number>();
  /** The local endpoint holding an address, for the second L7 hop (undefined: not local). */
  localEndpoint: ((ip: string) => number | undefined) | undefined;
  readonly #upstreamPorts: UpstreamPorts;
  /** The HTTP Worker (httpIo "worker"), started with the first HTTP listener. */
  #httpWorker: Promise<HttpWorkerPath> | undefined;
  #path: HttpWorkerPath | undefined;
  /** Where the HTTP Worker relays h2c connections (a unix socket only root can reach). */
  #relay: { listener: Deno.Listener; path: string } | undefined;
  readonly #unsubscribe: () => void;
  #closed = false;
  onRecord: ((r: L7Record) => void) | undefined;
  /** Takes the HTTP Worker's batches whole (else each of their records goes to onRecord). */
  onBatch: ((b: L7Batch) => void) | undefined;

  constructor(o: L7ProxyOptions) {
    this.#o = o;
    this.onRecord = o.onRecord;
    this.#upstreamPorts = new UpstreamPorts(o.upstreamPorts ?? [61000, 65535]);
    // The HTTP Worker caches verdicts: any change of the engine makes them stale (before it).
    this.#unsubscribe = o.engine.onChange(() => this.#path?.invalidate());
    for (const [k, v] of Object.entries(readPorts(o.portsFile))) this.#saved.set(k, v);
    this.#requests = o.metrics.counter(
      "cilia_l7_requests_total",
      "L7 requests judged by the proxy, by protocol and verdict (forwarded, denied, error)",
    );
    this.#latency = o.metrics.histogram(
      "cilia_l7_request_duration_seconds",
      "time from a request's head to its response's head through the L7 proxy",
      L7_LATENCY_BUCKETS,
    );
    this.#engineSeconds = o.metrics.counter(
      "cilia_l7_engine_seconds_total",
      "wall time the L7 proxy spent in the policy engine deciding requests, by protocol",
    );
    this.#engineHttp = this.#engineSeconds.bound({ protocol: "http" });
  }

  /** The Worker serving HTTP listeners (httpIo "worker", once one was opened). */
  get httpWorker(): HttpWorkerPath | undefined {
    return this.#path;
  }

  /** The address upstream connections are made from (the pod gateway on cilia_host). */
  set gateway(ip: string) {
    this.#gateway = ip;
  }

  /** The IPv6 address upstream connections to IPv6 servers are made from. */
  set gateway6(ip: string) {
    this.#gateway6 = ip;
  }

  /**
   * The proxy port for redirects of (endpoint, direction, port or port range): listening before
   * it returns. One listener serves a whole range (adjacent L7 ports merge into one in the map
   * state): each connection is judged on the port the client dialled.
   */
  listen(
    epId: number,
    direction: Direction,
    ports: number | readonly [number, number],
    protocol: L7Protocol = "http",
  ): Promise<number> {
    const [lo, hi] = typeof ports === "number" ? [ports, ports] : ports;
    const key = `${epId}/${direction}/${lo === hi ? lo : `${lo}-${hi}`}${
      protocol === "http" ? "" : `/${protocol}`
    }`;
    const have = this.#listeners.get(key);
    if (have) return Promise.resolve(have.port);
    let p = this.#pending.get(key);
    if (!p) {
      p = this.#open(key, epId, protocol).finally(() => this.#pending.delete(key));
      this.#pending.set(key, p);
    }
    return p;
  }

  async #open(key: string, epId: number, protocol: L7Protocol): Promise<number> {
    if (this.#closed) throw new Error("The L7 proxy is closed");
    const used = new Set([...this.#listeners.values()].map((l) => l.port));
    // Ports of earlier runs stay with their keys: the kernel's entries still name them.
    const reserved = new Set([...this.#saved].filter(([k]) => k !== key).map(([, p]) => p));
    const before = this.#saved.get(key);
    const base = this.#o.basePort ?? 15001;
    const candidates = before !== undefined && !used.has(before) ? [before] : [];
    for (let port = base; port < 30000; port++) {
      if (!used.has(port) && !reserved.has(port) && port !== before) candidates.push(port);
    }
    const worker = protocol === "http" ? await this.#worker() : undefined;
    for (const port of candidates) {
      let l: Listener;
      try {
        // "::" takes IPv4 too (dual stack): one socket for both families of redirects.
        if (worker) {
          const { fd } = listenTcp("::", port);
          l = { port, fd, epId, protocol };
          try {
            worker.listen(fd, port, { gateway: this.#gateway, gateway6: this.#gateway6 });
          } catch (err) {
            libc().close(fd); // (the Worker died meanwhile)
            throw err;
          }
        } else {
          const listener = Deno.listen({ hostname: "::", port, transport: "tcp" });
          l = { port, listener, epId, protocol };
        }
      } catch (err) {
        if (err instanceof Deno.errors.AddrInUse) continue;
        if ((err as { errno?: number }).errno === EADDRINUSE) continue;
        throw err;
      }
      this.#listeners.set(key, l);
      if (l.listener) this.#accept(l);
      if (before !== port) this.#savePort(key, port);
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
      this.#closeListener(l);
      this.#savePort(key, undefined);
    }
  }

  /** Forgets the saved ports of endpoints that did not come back after a restart. */
  retainEndpoints(live: ReadonlySet<number>): void {
    const gone = [...this.#saved.keys()].filter((k) => !live.has(Number(k.split("/")[0])));
    if (gone.length === 0) return;
    for (const k of gone) this.#saved.delete(k);
    this.#savePort(gone[0]!, undefined);
  }

  #savePort(key: string, port: number | undefined): void {
    if (port === undefined) this.#saved.delete(key);
    else this.#saved.set(key, port);
    if (!this.#o.portsFile) return;
    try {
      const tmp = `${this.#o.portsFile}.tmp`;
      Deno.writeTextFileSync(tmp, JSON.stringify(Object.fromEntries(this.#saved)) + "\n");
      Deno.renameSync(tmp, this.#o.portsFile);
    } catch (err) {
      this.#o.log.warn("cannot save L7 proxy ports", { file: this.#o.portsFile, error: err });
    }
  }

  get ports(): { key: string; port: number }[] {
    return [...this.#listeners].map(([key, l]) => ({ key, port: l.port }));
  }

  async #accept(l: Listener): Promise<void> {
    try {
      for await (const conn of l.listener!) {
        this.#handle(conn, l.port, l.protocol).catch(() => {});
      }
    } catch {
      // listener closed
    }
  }

  #handle(conn: Deno.Conn, proxyPort: number, protocol: L7Protocol): Promise<void> {
    const addr = conn.remoteAddr as Deno.NetAddr;
    // The dual-stack listener shows IPv4 clients as "::ffff:a.b.c.d".
    const remote = { hostname: addr.hostname.replace(/^::ffff:(?=\d+\.)/i, ""), port: addr.port };
    let orig: OrigDestination | undefined;
    try {
      orig = this.#o.maps?.original(remote.hostname, remote.port, proxyPort);
    } catch {
      orig = undefined;
    }
    if (!orig) { // not redirected by the kernel: nothing to judge it by (fail closed)
      conn.close();
      return Promise.resolve();
    }
    return this.#serve(conn, orig, { ip: remote.hostname, port: remote.port }, protocol);
  }

  /**
   * One redirected connection from `client` to `o`; `first`: its first bytes, an h2c preface
   * the HTTP Worker saw (the connection is its relay).
   */
  async #serve(
    conn: Deno.Conn,
    o: OrigDestination,
    client: { ip: string; port: number },
    protocol: L7Protocol,
    relayed?: Uint8Array,
  ): Promise<void> {
    // Head and body go out in separate writes: without this Nagle holds the second until the
    // client's delayed ACK (40 ms a response on keep-alive connections).
    (conn as Deno.TcpConn).setNoDelay?.(true);
    const direction: Direction = o.dir === DIR_EGRESS ? "egress" : "ingress";
    let last = { cookie: o.cookie, rule: -1 };
    // Two L7 hops: an egress redirect to a server on this node is judged here by the server's
    // ingress policy as well (with the client's identity), and the kernel skips that redirect.
    const hop2 = this.#secondHop(o);
    const judge = (req: HttpRequestInfo) => {
      const v = this.judgeRequest(o, req, hop2);
      last = { cookie: v.cookie, rule: v.rule };
      return v.allowed;
    };
    const onRequest = (rec: RequestRecord, protocol = "http", kafka?: KafkaRecord) => {
      this.#emit({
        ...rec,
        client,
        server: { ip: o.ip, port: o.port },
        epId: o.epId,
        direction,
        srcIdentity: o.srcIdentity,
        dstIdentity: o.dstIdentity,
        cookie: kafka?.cookie ?? last.cookie,
        rule: rec.allowed ? kafka?.rule ?? last.rule : -1,
        ...(kafka ? { kafka } : {}),
      }, protocol);
    };
    const stream = denoStream(conn);
    if (protocol === "kafka") {
      const judgeKafka = (req: KafkaRequestInfo) => {
        const t0 = performance.now();
        const kafka = {
          apiKey: req.apiKey,
          apiVersion: req.apiVersion,
          clientID: req.clientId,
          topics: [...new Set(req.topics.map((t) => t.name))],
        };
        let r = this.#o.engine.query({
          endpoint: o.epId,
          direction,
          peer: direction === "ingress" ? o.srcIdentity : o.dstIdentity,
          proto: 6,
          port: o.port,
          kafka,
        });
        if (passes(r) && hop2 !== undefined) {
          r = this.#o.engine.query({
            endpoint: hop2,
            direction: "ingress",
            peer: o.srcIdentity,
            proto: 6,
            port: o.port,
            kafka,
          });
        }
        this.#engineSeconds.inc({ protocol: "kafka" }, (performance.now() - t0) / 1000);
        return { allowed: passes(r), cookie: r.cookie || o.cookie, rule: r.l7.rule };
      };
      return serveKafkaConnection(stream, {
        connect: () => this.#connect(o, client.ip, { ingressEpId: hop2, like: conn }),
        judge: judgeKafka,
        onRequest: (k) => onRequest(kafkaRequestRecord(k), "kafka", k),
        ...(this.#o.headerTimeoutMs !== undefined
          ? { headerTimeoutMs: this.#o.headerTimeoutMs }
          : {}),
      });
    }
    const first = relayed ?? await this.#sniff(stream);
    if (first === null) return stream.close();
    if (prefaceState(first) === "complete") {
      return serveH2Connection(conn, first, {
        connect: () => this.#connectSocket(o, client.ip, { ingressEpId: hop2 }),
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
      connect: () => this.#connect(o, client.ip, { ingressEpId: hop2, like: conn }),
      judge,
      onRequest: (rec) => onRequest(rec),
      ...(this.#o.headerTimeoutMs !== undefined
        ? { headerTimeoutMs: this.#o.headerTimeoutMs }
        : {}),
      ...(this.#o.idleTimeoutMs !== undefined ? { idleTimeoutMs: this.#o.idleTimeoutMs } : {}),
    });
  }

  /**
   * The verdict on one HTTP request of a redirected connection (`hop2`: the server endpoint on
   * this node whose ingress policy judges it as well), with the deciding entry's cookie and rule.
   */
  judgeRequest(o: OrigDestination, req: HttpRequestInfo, hop2: number | undefined): HttpVerdict {
    const t0 = performance.now();
    const direction: Direction = o.dir === DIR_EGRESS ? "egress" : "ingress";
    const http = { method: req.method, path: req.path, host: req.host, headers: req.headers };
    // judgeHttp(): query()'s verdict without the explanation, written and read in place.
    const r = this.#o.engine.judgeHttp({
      endpoint: o.epId,
      direction,
      peer: direction === "ingress" ? o.srcIdentity : o.dstIdentity,
      proto: 6,
      port: o.port,
      http,
    });
    let v: HttpVerdict = {
      allowed: passes(r),
      cookie: r.cookie || o.cookie,
      rule: r.l7.rule,
      hop2,
    };
    if (v.allowed && hop2 !== undefined) {
      const r2 = this.#o.engine.judgeHttp({
        endpoint: hop2,
        direction: "ingress",
        peer: o.srcIdentity,
        proto: 6,
        port: o.port,
        http,
      });
      if (!passes(r2)) {
        v = { allowed: false, cookie: r2.cookie || o.cookie, rule: r2.l7.rule, hop2 };
      }
    }
    this.#engineHttp((performance.now() - t0) / 1000);
    return v;
  }

  /** One request's record: counted, its latency observed, and on to flows. */
  #emit(rec: L7Record, protocol = "http"): void {
    const kafka = rec.kafka;
    const verdict = (kafka ? kafka.errorCode === -1 : rec.error !== undefined && rec.code !== 403)
      ? "error"
      : rec.allowed
      ? "forwarded"
      : "denied";
    this.#countRequest(protocol, verdict);
    this.#latency.observe(rec.latencyMs / 1000);
    this.onRecord?.(rec);
  }

  /** A batch of the HTTP Worker's records: its counts to the metrics, it to flows. */
  #emitBatch(b: L7Batch): void {
    const w = b.wire;
    w.verdicts.forEach((n, i) => n > 0 && this.#countRequest("http", L7_VERDICTS[i]!, n));
    this.#latency.add(w.latency, w.latencySum);
    if (this.onBatch) return this.onBatch(b);
    if (this.onRecord) { for (let i = 0; i < b.size; i++) this.onRecord(b.record(i)); }
  }

  /** The HTTP Worker (started on first use), or undefined when HTTP stays on this loop. */
  #worker(): Promise<HttpWorkerPath> | undefined {
    const pins = this.#o.maps?.pins;
    if (this.#o.httpIo !== "worker" || !pins) return undefined;
    if (this.#httpWorker) return this.#httpWorker;
    const relay = this.#openRelay();
    const path = new HttpWorkerPath({
      pins,
      relay,
      ports: this.#upstreamPorts,
      log: this.#o.log,
      judge: (o, req) => this.judgeRequest(o, req, this.#secondHop(o)),
      onRecords: (wire) => this.#emitBatch(new L7Batch(wire)),
      onFailed: () => this.#workerFailed(),
      headerTimeoutMs: this.#o.headerTimeoutMs,
      idleTimeoutMs: this.#o.idleTimeoutMs,
    });
    this.#path = path;
    this.#httpWorker = path.start().then(() => {
      this.#o.log.info("L7 proxy: HTTP/1.1 redirects served by a Worker");
      return path;
    });
    this.#httpWorker.catch(() => this.#httpWorker = undefined);
    return this.#httpWorker;
  }

  /** The unix socket the Worker relays h2c connections to (its path), accepting. */
  #openRelay(): string | undefined {
    if (this.#relay) return this.#relay.path;
    const dir = this.#o.portsFile
      ? this.#o.portsFile.slice(0, this.#o.portsFile.lastIndexOf("/") + 1) || "./"
      : `${Deno.makeTempDirSync({ prefix: "cilia-l7-" })}/`;
    const path = `${dir}proxy-h2c.sock`;
    try {
      Deno.removeSync(path);
    } catch { /* none */ }
    let listener: Deno.Listener;
    try {
      listener = Deno.listen({ transport: "unix", path });
      Deno.chmodSync(path, 0o600);
    } catch (err) {
      this.#o.log.warn("L7 proxy: no h2c relay for the HTTP Worker (h2c is closed)", {
        path,
        error: err,
      });
      return undefined;
    }
    this.#relay = { listener, path };
    (async () => {
      try {
        for await (const conn of listener) this.#relayed(conn).catch(() => {});
      } catch { /* closed */ }
    })();
    return path;
  }

  /** An h2c connection the Worker relays: a line with what the kernel said, then its bytes. */
  async #relayed(conn: Deno.Conn): Promise<void> {
    let got = new Uint8Array(0), nl = -1;
    const buf = new Uint8Array(16384);
    while (nl < 0 || prefaceState(got.subarray(nl + 1)) !== "complete") {
      const n = await conn.read(buf).catch(() => null);
      if (n === null || got.length > 65536) return conn.close();
      const next = new Uint8Array(got.length + n);
      next.set(got);
      next.set(buf.subarray(0, n), got.length);
      got = next;
      nl = got.indexOf(10);
    }
    let ctx: { o: OrigDestination; client: { ip: string; port: number } };
    try {
      ctx = JSON.parse(new TextDecoder().decode(got.subarray(0, nl)));
    } catch {
      return conn.close();
    }
    return this.#serve(conn, ctx.o, ctx.client, "http", got.subarray(nl + 1));
  }

  /** The Worker died and closed nothing: its listeners are gone (the kernel drops: 178). */
  #workerFailed(): void {
    this.#httpWorker = undefined;
    this.#path = undefined;
    const lost: [string, Listener][] = [];
    for (const [key, l] of this.#listeners) {
      if (l.fd === undefined) continue;
      this.#listeners.delete(key);
      lost.push([key, l]);
    }
    // A new Worker listens again on the same ports (the kernel's entries name them) after 1 s.
    setTimeout(() => {
      for (const [key, l] of lost) {
        if (this.#closed || this.#listeners.has(key) || this.#pending.has(key)) continue;
        const p = this.#open(key, l.epId, l.protocol).finally(() => this.#pending.delete(key));
        this.#pending.set(key, p);
        p.catch((err) => this.#o.log.error("L7 proxy: cannot listen again", { key, error: err }));
      }
    }, 1000);
  }

  #closeListener(l: Listener): void {
    if (l.listener) {
      try {
        l.listener.close();
      } catch { /* closed */ }
    } else if (l.fd !== undefined) {
      const w = this.#httpWorker;
      if (w) w.then((p) => p.unlisten(l.port), () => {});
      else libc().close(l.fd);
    }
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

  #countRequest(protocol: string, verdict: string, by = 1): void {
    const key = `${protocol}/${verdict}`;
    let inc = this.#requestsBy.get(key);
    if (!inc) {
      inc = this.#requests.bound({ protocol, verdict });
      this.#requestsBy.set(key, inc);
    }
    inc(by);
  }

  #takeUpstreamPort(): number {
    return this.#upstreamPorts.take();
  }

  /** The server's endpoint when an egress redirect leads to a pod on this node. */
  #secondHop(o: OrigDestination): number | undefined {
    if (o.dir !== DIR_EGRESS) return undefined;
    const ep = this.localEndpoint?.(o.ip);
    return ep !== undefined && ep !== o.epId ? ep : undefined;
  }

  /** The upstream leg as a Stream (a Deno connection like the client's `like` when possible). */
  async #connect(
    o: OrigDestination,
    clientIp: string,
    opts: { ingressEpId: number | undefined; like: Deno.Conn },
  ): Promise<Stream> {
    const sock = await this.#connectSocket(o, clientIp, { ingressEpId: opts.ingressEpId });
    return takeOverSocket(sock, opts.like) ?? nodeStream(sock);
  }

  /** The upstream leg for another proxy on this node (the DNS proxy over TCP). */
  connectUpstream(o: OrigDestination, clientIp: string): Promise<net.Socket> {
    return this.#connectSocket(o, clientIp);
  }

  /**
   * The upstream leg: the proxy-NAT entry first, then the connect from that very port.
   * ingressEpId: the server endpoint whose ingress policy the proxy judged as well (second hop).
   */
  async #connectSocket(
    o: OrigDestination,
    clientIp: string,
    opts: { ingressEpId?: number | undefined; attempt?: number } = {},
  ): Promise<net.Socket> {
    const attempt = opts.attempt ?? 0;
    const localPort = this.#takeUpstreamPort();
    const server = { ip: o.ip, port: o.port };
    const release = () => {
      setTimeout(() => {
        try {
          this.#o.maps?.deleteNat({ server, localPort });
        } catch { /* maps closed */ }
        this.#upstreamPorts.release(localPort);
      }, 2000);
    };
    this.#o.maps?.writeNat({
      server,
      localPort,
      clientIp,
      identity: o.srcIdentity,
      epId: o.epId,
      dir: o.dir,
      ...(opts.ingressEpId !== undefined ? { ingressEpId: opts.ingressEpId } : {}),
    });
    const gateway = o.ip.includes(":") ? this.#gateway6 : this.#gateway;
    try {
      const sock = await new Promise<net.Socket>((resolve, reject) => {
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
      sock.on("error", () => {});
      sock.once("close", release);
      return sock;
    } catch (err) {
      release();
      if ((err as { code?: string }).code === "EADDRINUSE" && attempt < 16) {
        return this.#connectSocket(o, clientIp, { ...opts, attempt: attempt + 1 });
      }
      throw err;
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#unsubscribe();
    for (const l of this.#listeners.values()) if (l.listener) this.#closeListener(l);
    this.#listeners.clear();
    const w = this.#httpWorker;
    this.#httpWorker = this.#path = undefined;
    if (w) await w.then((p) => p.close(), () => {});
    if (this.#relay) {
      try {
        this.#relay.listener.close();
        Deno.removeSync(this.#relay.path);
      } catch { /* gone */ }
      this.#relay = undefined;
    }
  }
}

/** Whether a verdict lets a request through (an L7 redirect: only when its rules allow it). */
function passes(r: { verdict: string; l7: { status: string } }): boolean {
  return r.verdict === "allow" || r.verdict === "audit" ||
    (r.verdict === "redirect" && r.l7.status === "allowed");
}

/** Listener ports saved by an earlier run ({} when there are none or the file is unreadable). */
function readPorts(file: string | undefined): Record<string, number> {
  if (!file) return {};
  try {
    const v = JSON.parse(Deno.readTextFileSync(file));
    const out: Record<string, number> = {};
    for (const [k, p] of Object.entries(v ?? {})) {
      if (Number.isInteger(p) && (p as number) > 0 && (p as number) < 65536) out[k] = p as number;
    }
    return out;
  } catch {
    return {};
  }
}

/** A Kafka request in the fields HTTP records have (what flows and metrics read). */
function kafkaRequestRecord(k: KafkaRecord): RequestRecord {
  return {
    method: `kafka/${k.apiKey}`,
    url: k.topics.join(","),
    host: k.clientId,
    protocol: "HTTP/1.1",
    code: k.errorCode,
    allowed: k.allowed,
    latencyMs: k.latencyMs,
    ...(k.error !== undefined ? { error: k.error } : {}),
  };
}
