// The connections the kernel redirected to the L7 proxy's event loop: each accepted one is
// matched to the kernel's record of it (none: closed unread, fail closed) and served to its end:
// on a Kafka listener as Kafka (kafka.ts), else HTTP/1.1 or, when it opens with the HTTP/2
// preface, h2c (h2.ts: gRPC). Every request is judged through the context (the agent's engine)
// and becomes an L7 record with the connection's addresses, endpoint, identities and the deciding
// cookie and rule. Upstream legs are made by _upstream_legs.ts; listeners and ports are not this
// module's.

import type { OrigDestination, ProxyMaps } from "../datapath/proxy_maps.ts";
import { serveHttpConnection, type Stream } from "./http_conn.ts";
import type { HttpRequestInfo, RequestRecord } from "./http_records.ts";
import { prefaceState, serveH2Connection } from "./h2.ts";
import type { HttpVerdict } from "./http_worker_path.ts";
import { type KafkaRecord, serveKafkaConnection } from "./kafka.ts";
import type { KafkaRequestInfo } from "./kafka_request.ts";
import { denoStream } from "./streams.ts";
import type { UpstreamLegs } from "./_upstream_legs.ts";
import { directionOf, type L7Judge } from "./_l7_judge.ts";
import type { L7Protocol, L7Record } from "./proxy.ts";

/** What serving a connection needs from the proxy. */
export interface ConnContext {
  /** The kernel's proxy maps; without them no connection can be matched (all are closed). */
  maps: ProxyMaps | undefined;
  judge: L7Judge;
  legs: UpstreamLegs;
  headerTimeoutMs?: number | undefined;
  idleTimeoutMs?: number | undefined;
  /** The server's endpoint when an egress redirect leads to a pod on this node. */
  secondHop(o: OrigDestination): number | undefined;
  /** An HTTP request's verdict, its engine time counted (L7Proxy.judgeRequest). */
  judgeRequest(o: OrigDestination, req: HttpRequestInfo, hop2: number | undefined): HttpVerdict;
  /** Seconds spent in the engine judging Kafka requests. */
  engineKafka(seconds: number): void;
  /** One request's record: counted, and on to flows. */
  emit(rec: L7Record, protocol: string): void;
}

/**
 * A redirected connection from `client` to `o`; `relayed`: its first bytes, an h2c preface the
 * HTTP Worker saw (the connection is its relay).
 */
export interface Redirected {
  o: OrigDestination;
  client: { ip: string; port: number };
  protocol: L7Protocol;
  relayed?: Uint8Array;
}

type OnRequest = (rec: RequestRecord, protocol?: string, kafka?: KafkaRecord) => void;

/** What the serving of one connection's protocol is given. */
interface Served {
  conn: Deno.Conn;
  stream: Stream;
  d: Redirected;
  hop2: number | undefined;
  judge: (req: HttpRequestInfo) => boolean;
  onRequest: OnRequest;
}

export class RedirectedConns {
  readonly #c: ConnContext;

  constructor(ctx: ConnContext) {
    this.#c = ctx;
  }

  /** Serves the connections a listener on `proxyPort` accepts, until it is closed. */
  async accept(listener: Deno.Listener, proxyPort: number, protocol: L7Protocol): Promise<void> {
    try {
      for await (const conn of listener) {
        this.#handle(conn, proxyPort, protocol).catch(() => {});
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
      orig = this.#c.maps?.original(remote.hostname, remote.port, proxyPort);
    } catch {
      orig = undefined;
    }
    if (!orig) { // not redirected by the kernel: nothing to judge it by (fail closed)
      conn.close();
      return Promise.resolve();
    }
    const client = { ip: remote.hostname, port: remote.port };
    return this.serve(conn, { o: orig, client, protocol });
  }

  /** Serves one redirected connection to its end. */
  async serve(conn: Deno.Conn, d: Redirected): Promise<void> {
    const o = d.o;
    // Head and body go out in separate writes: without this Nagle holds the second until the
    // client's delayed ACK (40 ms a response on keep-alive connections).
    (conn as Deno.TcpConn).setNoDelay?.(true);
    let last = { cookie: o.cookie, rule: -1 };
    // Two L7 hops: an egress redirect to a server on this node is judged here by the server's
    // ingress policy as well (with the client's identity), and the kernel skips that redirect.
    const hop2 = this.#c.secondHop(o);
    const judge = (req: HttpRequestInfo) => {
      const v = this.#c.judgeRequest(o, req, hop2);
      last = { cookie: v.cookie, rule: v.rule };
      return v.allowed;
    };
    const onRequest = this.#recordMaker(d, () => last);
    const s: Served = { conn, stream: denoStream(conn), d, hop2, judge, onRequest };
    if (d.protocol === "kafka") return this.#serveKafka(s);
    const first = d.relayed ?? await sniff(s.stream, this.#c.headerTimeoutMs);
    if (first === null) return s.stream.close();
    if (prefaceState(first) === "complete") {
      return serveH2Connection(conn, first, {
        connect: () => this.#c.legs.connectSocket(o, d.client.ip, { ingressEpId: hop2 }),
        judge,
        onRequest: ({ grpc, ...rec }) => onRequest(rec, grpc ? "grpc" : "http"),
        ...(this.#c.idleTimeoutMs !== undefined ? { idleTimeoutMs: this.#c.idleTimeoutMs } : {}),
      });
    }
    await this.#serveHttp1(s, first);
  }

  /** The upstream leg of a connection (a Deno connection like the client's when possible). */
  #connect(s: Served): Promise<Stream> {
    return this.#c.legs.connect(s.d.o, s.d.client.ip, { ingressEpId: s.hop2, like: s.conn });
  }

  /** Kafka: each request judged with the engine, its time counted. */
  #serveKafka(s: Served): Promise<void> {
    const c = this.#c;
    const judge = (req: KafkaRequestInfo) => {
      const t0 = performance.now();
      const v = c.judge.kafka(s.d.o, req, s.hop2);
      c.engineKafka((performance.now() - t0) / 1000);
      return v;
    };
    return serveKafkaConnection(s.stream, {
      connect: () => this.#connect(s),
      judge,
      onRequest: (k) => s.onRequest(kafkaRequestRecord(k), "kafka", k),
      ...(c.headerTimeoutMs !== undefined ? { headerTimeoutMs: c.headerTimeoutMs } : {}),
    });
  }

  /** HTTP/1.1, whose `first` bytes were read already (they are read again first). */
  async #serveHttp1(s: Served, first: Uint8Array): Promise<void> {
    const c = this.#c, stream = s.stream;
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
      connect: () => this.#connect(s),
      judge: s.judge,
      onRequest: (rec) => s.onRequest(rec),
      ...(c.headerTimeoutMs !== undefined ? { headerTimeoutMs: c.headerTimeoutMs } : {}),
      ...(c.idleTimeoutMs !== undefined ? { idleTimeoutMs: c.idleTimeoutMs } : {}),
    });
  }

  /** Makes each request of the connection an L7 record (`last`: the latest HTTP verdict's). */
  #recordMaker(d: Redirected, last: () => { cookie: number; rule: number }): OnRequest {
    const { o, client } = d, direction = directionOf(o);
    return (rec, protocol = "http", kafka) => {
      this.#c.emit({
        ...rec,
        client,
        server: { ip: o.ip, port: o.port },
        epId: o.epId,
        direction,
        srcIdentity: o.srcIdentity,
        dstIdentity: o.dstIdentity,
        cookie: kafka?.cookie ?? last().cookie,
        rule: rec.allowed ? kafka?.rule ?? last().rule : -1,
        ...(kafka ? { kafka } : {}),
      }, protocol);
    };
  }
}

/**
 * The first bytes of a connection, enough to tell the HTTP/2 preface from HTTP/1; null when it
 * closed, or sent nothing or only part of the preface within the header timeout (a read may
 * still be pending then: the connection is only fit to be closed).
 */
async function sniff(
  stream: Stream,
  headerTimeoutMs: number | undefined,
): Promise<Uint8Array | null> {
  const deadline = Date.now() + (headerTimeoutMs ?? 10_000);
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
