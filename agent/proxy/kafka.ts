// One client connection through the Kafka proxy: read size-prefixed request frames (a whole
// frame within the header timeout, at most maxFrameBytes), decode each (kafka_request.ts), ask
// `judge` (the engine), forward an allowed request over one upstream connection and answer a
// denied one locally (kafka_reply.ts: error 29 on every topic, the request's correlation id).
// Kafka answers in request order, so every request that expects a response takes a place in one
// queue: a local answer waits behind the forwarded requests before it, and each upstream
// response must carry the correlation id of the first forwarded request still waiting. A frame
// that does not decode, or an upstream response out of order, closes the connection: nothing
// undecoded is forwarded. It knows nothing of the kernel: the listener hands it streams.

import type { Stream } from "./http_conn.ts";
import { type KafkaRequestInfo, parseKafkaRequest } from "./kafka_request.ts";
import { deniedResponse, TOPIC_AUTHORIZATION_FAILED } from "./kafka_reply.ts";

export interface KafkaRecord {
  apiKey: number;
  apiVersion: number;
  correlationId: number;
  clientId: string;
  topics: string[];
  allowed: boolean;
  /** 0 when forwarded, 29 when denied, -1 for a request that did not decode. */
  errorCode: number;
  /** Request decoded → response to the client (or → forwarded, when none is expected) (ms). */
  latencyMs: number;
  /** Why the proxy answered itself or closed the connection. */
  error?: string;
  /** What `judge` said decided it (the deciding entry's cookie and L7 rule), when it said. */
  cookie?: number;
  rule?: number;
}

/** A verdict with what decided it (pipelined requests are recorded later, each with its own). */
export interface KafkaJudgement {
  allowed: boolean;
  cookie: number;
  rule: number;
}

export interface KafkaConnOptions {
  connect(): Promise<Stream>;
  judge(req: KafkaRequestInfo): boolean | KafkaJudgement;
  onRequest(rec: KafkaRecord): void;
  /** The first frame, and the rest of any frame begun, must arrive within this (default 10 s)… */
  headerTimeoutMs?: number;
  /** …and an open connection may wait this long for its next request (default 10 min). */
  idleTimeoutMs?: number;
  /** The largest request frame accepted (default 16 MiB; Kafka clients send at most 1 MiB). */
  maxFrameBytes?: number;
  /** The largest upstream response accepted (default 128 MiB; librdkafka's limit is 100 MB). */
  maxResponseBytes?: number;
  /** Requests awaiting their response, at most (default 1024; then the connection is closed). */
  maxInFlight?: number;
}

/** A request frame, or why there is none: the stream ended, or a timeout or bad size. */
type Frame = Uint8Array | { end: string | null };

/** Size-prefixed frames from a stream. */
export class FrameReader {
  readonly #s: Stream;
  readonly #max: number;
  readonly #min: number;
  /** Bytes read and not yet framed, as read (joined once per frame, not once per read). */
  #chunks: Uint8Array[] = [];
  #have = 0;

  /** Requests are at least 8 bytes (api key, version, correlation id), responses 4. */
  constructor(s: Stream, maxFrameBytes: number, minFrameBytes = 8) {
    this.#s = s;
    this.#max = maxFrameBytes;
    this.#min = minFrameBytes;
  }

  async #fill(n: number, deadline: number): Promise<"ok" | "eof" | "timeout"> {
    while (this.#have < n) {
      const left = deadline - Date.now();
      if (left <= 0) return "timeout";
      let timer: ReturnType<typeof setTimeout> | undefined;
      const b = await Promise.race([
        this.#s.read(),
        new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), left)),
      ]).finally(() => clearTimeout(timer));
      if (b === "timeout") return "timeout";
      if (b === null) return "eof";
      this.#chunks.push(b);
      this.#have += b.length;
    }
    return "ok";
  }

  /** The first n buffered bytes, removed (copied only when they span reads). */
  #take(n: number): Uint8Array {
    const first = this.#chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      this.#have -= n;
      return first.subarray(0, n);
    }
    const out = new Uint8Array(n);
    for (let off = 0; off < n;) {
      const c = this.#chunks[0]!;
      const k = Math.min(c.length, n - off);
      out.set(c.subarray(0, k), off);
      off += k;
      if (k === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(k);
    }
    this.#have -= n;
    return out;
  }

  /** The next frame: its size must arrive within idleMs, the rest within frameMs of that. */
  async next(idleMs: number, frameMs: number): Promise<Frame> {
    const sized = await this.#fill(4, Date.now() + idleMs);
    if (sized !== "ok") { // nothing begun: an idle close, not an error
      return { end: this.#have === 0 ? null : `Truncated Kafka frame size (${sized})` };
    }
    const head = this.#take(4);
    const size = new DataView(head.buffer, head.byteOffset).getInt32(0);
    if (size < this.#min || size > this.#max) {
      return { end: `Invalid Kafka frame size ${size}: expected ${this.#min}-${this.#max} bytes` };
    }
    const got = await this.#fill(size, Date.now() + frameMs);
    if (got === "timeout") return { end: `Kafka frame of ${size} bytes incomplete (timeout)` };
    if (got === "eof") return { end: `Truncated Kafka frame: ${size} bytes announced` };
    return this.#take(size);
  }
}

interface Pending {
  req: KafkaRequestInfo;
  t0: number;
  allowed: boolean;
  /** The response to send; undefined while the upstream's is awaited. */
  resp?: Uint8Array;
  by?: { cookie: number; rule: number };
}

const topicNames = (req: KafkaRequestInfo) => [...new Set(req.topics.map((t) => t.name))];

/** Serves one client connection until either side closes or a frame does not decode. */
export async function serveKafkaConnection(client: Stream, o: KafkaConnOptions): Promise<void> {
  const queue: Pending[] = [];
  let upstream: Stream | undefined;
  let closed = false;
  let writing = Promise.resolve();
  const close = () => {
    if (closed) return;
    closed = true;
    client.close();
    upstream?.close();
  };
  const record = (p: Pending, extra: Partial<KafkaRecord> = {}) =>
    o.onRequest({
      apiKey: p.req.apiKey,
      apiVersion: p.req.apiVersion,
      correlationId: p.req.correlationId,
      clientId: p.req.clientId,
      topics: topicNames(p.req),
      allowed: p.allowed,
      errorCode: p.allowed ? 0 : TOPIC_AUTHORIZATION_FAILED,
      latencyMs: performance.now() - p.t0,
      ...(p.allowed ? {} : { error: "Access denied" }),
      ...p.by,
      ...extra,
    });
  const flush = () => {
    while (queue[0]?.resp) {
      const p = queue.shift()!;
      const bytes = p.resp!;
      writing = writing.then(() => client.write(bytes)).then(() => record(p), close);
    }
  };
  const readUpstream = async (up: Stream) => {
    const frames = new FrameReader(up, o.maxResponseBytes ?? 128 << 20, 4);
    for (;;) {
      const f = await frames.next(2 ** 31 - 1, 2 ** 31 - 1);
      if (!(f instanceof Uint8Array)) return close();
      const p = queue.find((q) => q.allowed && !q.resp);
      const corr = new DataView(f.buffer, f.byteOffset).getInt32(0);
      if (!p || p.req.correlationId !== corr) return close(); // out of order: fail closed
      const resp = new Uint8Array(f.length + 4);
      new DataView(resp.buffer).setInt32(0, f.length);
      resp.set(f, 4);
      p.resp = resp;
      flush();
    }
  };
  const frames = new FrameReader(client, o.maxFrameBytes ?? 16 << 20);
  const headerMs = o.headerTimeoutMs ?? 10_000;
  try {
    for (let n = 0; !closed; n++) {
      const f = await frames.next(n === 0 ? headerMs : o.idleTimeoutMs ?? 600_000, headerMs);
      if (closed) break;
      if (!(f instanceof Uint8Array)) {
        if (f.end !== null) bad(o, f.end);
        break;
      }
      let req: KafkaRequestInfo;
      try {
        req = parseKafkaRequest(f);
      } catch (err) {
        bad(o, (err as Error).message, f);
        break;
      }
      const j = o.judge(req);
      const p: Pending = typeof j === "boolean" ? { req, t0: performance.now(), allowed: j } : {
        req,
        t0: performance.now(),
        allowed: j.allowed,
        by: { cookie: j.cookie, rule: j.rule },
      };
      if (!p.allowed) {
        const resp = deniedResponse(req);
        if (!resp) record(p); // Cilium's proxy answers only the topic-bearing types
        else {
          queue.push({ ...p, resp });
          flush();
        }
      } else {
        if (!upstream) {
          try {
            upstream = await o.connect();
          } catch (err) {
            record(p, {
              errorCode: -1,
              error: `Upstream connect failed: ${(err as Error).message}`,
            });
            break;
          }
          readUpstream(upstream).catch(close);
        }
        const expects = !(req.apiKey === 0 && req.acks === 0);
        if (expects) queue.push(p);
        const framed = new Uint8Array(f.length + 4);
        new DataView(framed.buffer).setInt32(0, f.length);
        framed.set(f, 4);
        await upstream.write(framed);
        if (!expects) record(p);
      }
      if (queue.length > (o.maxInFlight ?? 1024)) break;
    }
  } catch {
    // upstream connect or write failed: the client sees the connection close
  } finally {
    await writing;
    close();
  }
}

/** A frame that does not decode: recorded as an error, with what its header still tells. */
function bad(o: KafkaConnOptions, error: string, frame?: Uint8Array): void {
  const v = frame && frame.length >= 8 ? new DataView(frame.buffer, frame.byteOffset) : undefined;
  o.onRequest({
    apiKey: v ? v.getInt16(0) : -1,
    apiVersion: v ? v.getInt16(2) : -1,
    correlationId: v ? v.getInt32(4) : -1,
    clientId: "",
    topics: [],
    allowed: false,
    errorCode: -1,
    latencyMs: 0,
    error,
  });
}
