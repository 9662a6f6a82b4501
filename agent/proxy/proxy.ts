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
//
// Its parts: the listeners (_listeners.ts) on ports kept across restarts (_listener_ports.ts), one
// redirected connection served (_redirected_conn.ts) with its verdicts (_l7_judge.ts), the
// upstream legs (_upstream_legs.ts), the h2c relay from the Worker (_h2c_relay.ts) and the
// metrics (_l7_metrics.ts).

import type net from "node:net";
import type { PolicyEngine } from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import type { OrigDestination, ProxyMaps } from "../datapath/proxy_maps.ts";
import { DIR_EGRESS, DIR_INGRESS } from "../datapath/codecs.ts";
import type { HttpRequestInfo, RequestRecord } from "./http_records.ts";
import type { KafkaRecord } from "./kafka.ts";
import { denoStream } from "./streams.ts";
import { type HttpVerdict, HttpWorkerPath } from "./http_worker_path.ts";
import { L7Batch } from "./l7_batch.ts";
import { Listeners } from "./_listeners.ts";
import { L7Metrics } from "./_l7_metrics.ts";
import { UpstreamLegs } from "./_upstream_legs.ts";
import { L7Judge } from "./_l7_judge.ts";
import { RedirectedConns } from "./_redirected_conn.ts";
import { closeH2cRelay, type H2cRelay, openH2cRelay } from "./_h2c_relay.ts";

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

export { DIR_EGRESS, DIR_INGRESS };
export { denoStream };

export class L7Proxy {
  readonly #o: L7ProxyOptions;
  readonly #listeners: Listeners;
  readonly #metrics: L7Metrics;
  /** The local endpoint holding an address, for the second L7 hop (undefined: not local). */
  localEndpoint: ((ip: string) => number | undefined) | undefined;
  readonly #legs: UpstreamLegs;
  readonly #judge: L7Judge;
  readonly #conns: RedirectedConns;
  /** The HTTP Worker (httpIo "worker"), started with the first HTTP listener. */
  #httpWorker: Promise<HttpWorkerPath> | undefined;
  #path: HttpWorkerPath | undefined;
  /** Where the HTTP Worker relays h2c connections (a unix socket only root can reach). */
  #relay: H2cRelay | undefined;
  readonly #unsubscribe: () => void;
  onRecord: ((r: L7Record) => void) | undefined;
  /** Takes the HTTP Worker's batches whole (else each of their records goes to onRecord). */
  onBatch: ((b: L7Batch) => void) | undefined;

  constructor(o: L7ProxyOptions) {
    this.#o = o;
    this.onRecord = o.onRecord;
    this.#legs = new UpstreamLegs(o.maps, o.upstreamPorts ?? [61000, 65535]);
    // The HTTP Worker caches verdicts: any change of the engine makes them stale (before it).
    this.#unsubscribe = o.engine.onChange(() => this.#path?.invalidate());
    this.#listeners = new Listeners({
      log: o.log,
      basePort: o.basePort ?? 15001,
      portsFile: o.portsFile,
      worker: () => this.#worker(),
      running: () => this.#httpWorker,
      gateways: () => ({ gateway: this.#legs.gateway, gateway6: this.#legs.gateway6 }),
      accept: (l) => this.#conns.accept(l.listener!, l.port, l.protocol),
    });
    this.#metrics = new L7Metrics(o.metrics);
    this.#judge = new L7Judge(o.engine);
    this.#conns = new RedirectedConns({
      maps: o.maps,
      judge: this.#judge,
      legs: this.#legs,
      headerTimeoutMs: o.headerTimeoutMs,
      idleTimeoutMs: o.idleTimeoutMs,
      secondHop: (o) => this.#secondHop(o),
      judgeRequest: (o, req, hop2) => this.judgeRequest(o, req, hop2),
      engineKafka: (s) => this.#metrics.engineKafka(s),
      emit: (rec, protocol) => this.#emit(rec, protocol),
    });
  }

  /** The Worker serving HTTP listeners (httpIo "worker", once one was opened). */
  get httpWorker(): HttpWorkerPath | undefined {
    return this.#path;
  }

  /** The address upstream connections are made from (the pod gateway on cilia_host). */
  set gateway(ip: string) {
    this.#legs.gateway = ip;
  }

  /** The IPv6 address upstream connections to IPv6 servers are made from. */
  set gateway6(ip: string) {
    this.#legs.gateway6 = ip;
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
    return this.#listeners.listen(key, epId, protocol);
  }

  /** Closes the listeners of an endpoint that is gone. */
  closeEndpoint(epId: number): void {
    this.#listeners.closeEndpoint(epId);
  }

  /** Forgets the saved ports of endpoints that did not come back after a restart. */
  retainEndpoints(live: ReadonlySet<number>): void {
    this.#listeners.retainEndpoints(live);
  }

  get ports(): { key: string; port: number }[] {
    return this.#listeners.ports;
  }

  /**
   * The verdict on one HTTP request of a redirected connection (`hop2`: the server endpoint on
   * this node whose ingress policy judges it as well), with the deciding entry's cookie and rule.
   */
  judgeRequest(o: OrigDestination, req: HttpRequestInfo, hop2: number | undefined): HttpVerdict {
    const t0 = performance.now();
    const v = this.#judge.http(o, req, hop2);
    this.#metrics.engineHttp((performance.now() - t0) / 1000);
    return v;
  }

  /** One request's record: counted, its latency observed, and on to flows. */
  #emit(rec: L7Record, protocol = "http"): void {
    this.#metrics.record(rec, protocol);
    this.onRecord?.(rec);
  }

  /** A batch of the HTTP Worker's records: its counts to the metrics, it to flows. */
  #emitBatch(b: L7Batch): void {
    this.#metrics.batch(b.wire);
    if (this.onBatch) return this.onBatch(b);
    if (this.onRecord) { for (let i = 0; i < b.size; i++) this.onRecord(b.record(i)); }
  }

  /** The HTTP Worker (started on first use), or undefined when HTTP stays on this loop. */
  #worker(): Promise<HttpWorkerPath> | undefined {
    const pins = this.#o.maps?.pins;
    if (this.#o.httpIo !== "worker" || !pins) return undefined;
    if (this.#httpWorker) return this.#httpWorker;
    this.#relay ??= openH2cRelay(
      this.#o.portsFile,
      this.#o.log,
      (conn, o, client, relayed) =>
        this.#conns.serve(conn, { o, client, protocol: "http", relayed }),
    );
    const path = new HttpWorkerPath({
      pins,
      relay: this.#relay?.path,
      ports: this.#legs.ports,
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

  /** The Worker died and closed nothing: its listeners are gone (the kernel drops: 178). */
  #workerFailed(): void {
    this.#httpWorker = undefined;
    this.#path = undefined;
    this.#listeners.workerFailed();
  }

  /** The server's endpoint when an egress redirect leads to a pod on this node. */
  #secondHop(o: OrigDestination): number | undefined {
    if (o.dir !== DIR_EGRESS) return undefined;
    const ep = this.localEndpoint?.(o.ip);
    return ep !== undefined && ep !== o.epId ? ep : undefined;
  }

  /** The upstream leg for another proxy on this node (the DNS proxy over TCP). */
  connectUpstream(o: OrigDestination, clientIp: string): Promise<net.Socket> {
    return this.#legs.connectSocket(o, clientIp);
  }

  async close(): Promise<void> {
    this.#unsubscribe();
    this.#listeners.close();
    const w = this.#httpWorker;
    this.#httpWorker = this.#path = undefined;
    if (w) await w.then((p) => p.close(), () => {});
    if (this.#relay) {
      closeH2cRelay(this.#relay);
      this.#relay = undefined;
    }
  }
}
