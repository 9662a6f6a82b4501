// The answering half of Http1Machine (http1_machine.ts) and the state its two halves share: the
// server's response read (1xx relayed, its framing worked out once per distinct head, a small
// response sent to the client in one write), its body streamed, each request's record, the errors
// answered (502, or a bad request body's own status), and the end of an exchange: the next
// request or the close. It does no I/O but through MachineIo and knows no policy. The shared
// fields are `protected`, not #private, so that the halves stay one object: the split costs no
// extra object, call or load per request on this hot path. This module is browser compatible.

import { BodyReader, ByteInput, HeadReader } from "./http1_sync.ts";
import { type Framing, type Head, HttpError, keepAlive, responseFraming } from "./http1.ts";
import {
  headerRecord,
  type HttpRequestInfo,
  localReply,
  type RequestRecord,
} from "./http_records.ts";

/** What the machine does to the legs; `b` is valid only during the call (write or copy it). */
export interface MachineIo {
  toClient(b: Uint8Array): void;
  /** Bytes for the upstream leg; before it is connected the caller queues them. */
  toUpstream(b: Uint8Array): void;
  /** Starts connecting the upstream leg; a string when that failed at once (the reason). */
  connect(): string | undefined;
  closeUpstream(): void;
  /** The connection is over (the upstream leg was closed first when there was one). */
  closeClient(): void;
}

export interface MachineOptions {
  /**
   * The verdict on a request (as ConnOptions.judge), with its parsed head; undefined when it is
   * not known yet: the request waits (its bytes held) until verdict() gives it.
   */
  judge(req: HttpRequestInfo, head: Head): boolean | undefined;
  onRequest(rec: RequestRecord): void;
  headerTimeoutMs?: number;
  idleTimeoutMs?: number;
  maxHeadBytes?: number;
  /** Client bytes held while a request is in flight before `wantsClient` turns false (64 KiB). */
  maxHeldBytes?: number;
}

/** What a request is judged by; its headers as a record only when the judge reads them. */
export class RequestInfo implements HttpRequestInfo {
  readonly method: string;
  readonly path: string;
  readonly host: string;
  readonly #head: Head;
  constructor(head: Head, path: string, host: string) {
    this.#head = head, this.method = head.method, this.path = path, this.host = host;
  }
  get headers(): Record<string, string> {
    return headerRecord(this.#head);
  }
}
// Client side: reading a head, a request body, waiting for the response, for a verdict;
// upstream side.
export const HEAD = 0, BODY = 1, WAIT = 2, JUDGE = 3;
export const IDLE = 0, RESP_HEAD = 1, RESP_BODY = 2, RESP_DONE = 3;

export interface InFlight {
  head: Head;
  path: string;
  host: string;
  started: number;
  resp?: Head;
  rf?: Framing;
  latencyMs?: number;
  /** keepAlive() of the response. */
  again?: boolean;
}

export abstract class Http1Exchange {
  protected readonly io: MachineIo;
  protected readonly o: MachineOptions;
  protected readonly idle: number;
  protected readonly uin = new ByteInput();
  readonly #respHead = new HeadReader();
  readonly #respBody = new BodyReader();
  /** The client side's state (HEAD, BODY, WAIT, JUDGE) and the upstream side's. */
  protected c = HEAD;
  protected u = IDLE;
  /** The current head's limit, and when the current client wait began. */
  protected headBy: number;
  protected clientSince: number;
  protected hasUp = false;
  protected req: InFlight | undefined;
  protected bodyError: Error | undefined;
  protected respError: Error | undefined;
  protected isClosed = false;
  /**
   * What the last request head and response head gave (HeadReader hands out the same Head object
   * for the same bytes): reused for the next one while it is that head.
   */
  protected reqMemo:
    | { head: Head; req: RequestInfo; framing: Framing; again: boolean }
    | undefined;
  #respMemo: { resp: Head; method: string; again: boolean; rf: Framing } | undefined;

  constructor(io: MachineIo, o: MachineOptions & { now: number }) {
    this.io = io, this.o = o;
    this.idle = o.idleTimeoutMs ?? 60_000;
    this.headBy = o.now + (o.headerTimeoutMs ?? 10_000);
    this.clientSince = o.now;
  }

  /** Closes both legs (the caller's own end of a connection, or the machine's). */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.dropUpstream();
    this.io.closeClient();
  }

  protected dropUpstream(): void {
    if (this.hasUp) this.io.closeUpstream();
    this.hasUp = false;
    this.uin.clear();
  }

  protected record(
    r: InFlight,
    code: number,
    allowed: boolean,
    o: { now: number; error?: string },
  ): void {
    this.o.onRequest({
      method: r.head.method,
      url: r.path,
      host: r.host,
      protocol: r.head.version === "1.1" ? "HTTP/1.1" : "HTTP/1.0",
      code,
      allowed,
      latencyMs: r.latencyMs ?? o.now - r.started,
      ...(o.error !== undefined ? { error: o.error } : {}),
    });
  }

  protected connectFailed(r: InFlight, reason: string, now: number): void {
    this.record(r, 503, true, { now, error: `Upstream connect failed: ${reason}` });
    this.io.toClient(localReply(503, "Upstream connect failed\r\n", true));
    this.close();
  }

  protected nextHead(now: number): void {
    this.c = HEAD, this.u = IDLE, this.req = undefined;
    this.headBy = now + this.idle, this.clientSince = now;
  }

  /** Response heads (1xx relayed) and the body; true when it moved. */
  protected readResponse(now: number): boolean {
    const r = this.req!;
    if (this.u === RESP_BODY) return this.#readResponseBody();
    if (this.respError !== undefined) return false;
    let resp: Head | undefined;
    try {
      resp = this.#respHead.read(this.uin, { request: false, max: 65536, maxHeaders: 200 });
      if (!resp) {
        if (this.uin.eof) throw this.#respHead.endError(this.uin, false);
        return false;
      }
      if (resp.status === 101) throw new HttpError(502, "Protocol upgrades are not supported");
    } catch (e) {
      this.respError = e as Error;
      return true;
    }
    const raw = this.uin.take(resp.size);
    if (resp.status < 200) {
      this.io.toClient(raw);
      return true;
    }
    r.resp = resp, r.latencyMs = now - r.started;
    const m = this.#respMemo;
    if (m?.resp === resp && m.method === r.head.method) r.again = m.again, r.rf = m.rf;
    else {
      r.again = keepAlive(resp);
      try {
        r.rf = responseFraming(resp, r.head.method);
      } catch {
        this.close(); // (as the async path: a bad Content-Length from the server ends it all)
        return false;
      }
      this.#respMemo = { resp, method: r.head.method, again: r.again, rf: r.rf };
    }
    const rf = r.rf;
    if (rf.kind === "length" && this.uin.length >= rf.length) {
      // Head and whole body in the bytes at hand (the common small response): one write.
      const b = this.uin.bytes, at = this.uin.start - resp.size;
      this.uin.take(rf.length);
      this.io.toClient(b.subarray(at, at + resp.size + rf.length));
      this.u = RESP_DONE;
      return true;
    }
    this.io.toClient(raw);
    this.#respBody.start(rf, "response body");
    this.u = RESP_BODY;
    return this.#readResponseBody() || true;
  }

  #readResponseBody(): boolean {
    let done: boolean;
    try {
      done = this.#respBody.read(this.uin, (b) => this.io.toClient(b));
    } catch {
      this.close();
      return false;
    }
    if (done) {
      this.u = RESP_DONE;
      return true;
    }
    if (this.uin.eof) this.close(); // cut mid-body: no record, as the async path
    return false;
  }

  /** A bad request body (or its timeout): the upstream leg is cut, then the status answered. */
  protected bodyFailed(err: Error, now: number): void {
    this.bodyError = err;
    this.c = WAIT;
    const r = this.req!, rf = r.rf;
    if (this.u === RESP_DONE) {
      this.record(r, r.resp!.status, true, { now });
      return this.close();
    }
    if (this.u === RESP_BODY) {
      if (rf?.kind !== "close" || this.uin.length > 0) return this.close();
      this.record(r, r.resp!.status, true, { now });
      return this.close();
    }
    this.respError ??= err;
    this.dropUpstream();
  }

  /** The response failed (or the body did first): 502 or the request's own status, close. */
  protected answerError(now: number): void {
    const r = this.req!, e = this.bodyError ?? this.respError!;
    const status = e instanceof HttpError ? e.status : 502;
    this.record(r, status, this.bodyError === undefined, { now, error: e.message });
    const text = status === 502 ? "Bad gateway" : e.message;
    this.io.toClient(localReply(status, `${text}\r\n`, true));
    this.close();
  }

  /** Request and response both done: the record, then the next request or the end. */
  protected finish(now: number): boolean {
    const r = this.req!, resp = r.resp!;
    this.record(r, resp.status, true, { now });
    if (!r.again || r.rf!.kind === "close" || this.uin.eof) this.dropUpstream();
    const reqAgain = this.reqMemo?.head === r.head ? this.reqMemo.again : keepAlive(r.head);
    if (!(r.again && reqAgain)) {
      this.close();
      return false;
    }
    this.#respHead.reset();
    this.nextHead(now);
    return true;
  }
}
