// One client connection through the HTTP/1.1 proxy as a synchronous state machine (issue 10's
// Worker path): the caller's I/O loop feeds it the bytes each leg brought (from one reused read
// buffer), the ends of the legs and the time; it answers through `MachineIo` at once. It does what
// serveHttpConnection (http_conn.ts) does, with the same checks, verdict calls, records and
// answers: strict request heads, the normalised path judged and forwarded, 403 "Access denied" for
// a denied request, bodies streamed both ways (Content-Length, chunked re-encoded, until close,
// none for HEAD/1xx/204/304), 1xx relayed (Expect: 100-continue), keep-alive and pipelining (one
// request at a time, so answers keep request order), bad input answered with its status and the
// connection closed, never forwarded. Deadlines are timestamps `tick()` checks, not timers. It
// owns no socket, does no I/O and knows no policy: `judge` decides. This module is browser
// compatible.
//
// Where it differs from serveHttpConnection on purpose: a head is forwarded as it came whenever
// its path needs no normalising (the async path re-serialises one that spanned two reads, which
// only changes optional whitespace); a head that times out after any of its bytes came gets 408
// (the async path closes silently when those bytes ended at a line's end); an upstream leg that
// the server closed between requests is replaced for the next one (the async path answers 502);
// a timeout's record says which deadline passed (the async path's says nothing).

import { BodyReader, ByteInput, HeadReader } from "./http1_sync.ts";
import {
  first,
  type Framing,
  type Head,
  HttpError,
  keepAlive,
  requestFraming,
  responseFraming,
  serializeHead,
} from "./http1.ts";
import {
  headerRecord,
  headFailure,
  type HttpRequestInfo,
  localReply,
  type RequestRecord,
} from "./http_conn.ts";
import { isNormalPath, normalisePath, PathError } from "./path.ts";

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

class Timeout extends Error {}

/** What a request is judged by; its headers as a record only when the judge reads them. */
class RequestInfo implements HttpRequestInfo {
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
const HEAD = 0, BODY = 1, WAIT = 2, JUDGE = 3;
const IDLE = 0, RESP_HEAD = 1, RESP_BODY = 2, RESP_DONE = 3;
const DENY = localReply(403, "Access denied\r\n", false);
const DENY_CLOSE = localReply(403, "Access denied\r\n", true);
const MAX_UNSOLICITED = 65536;

interface InFlight {
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

export class Http1Machine {
  #io: MachineIo;
  #o: MachineOptions;
  #idle: number;
  #cin = new ByteInput();
  #uin = new ByteInput();
  #reqHead = new HeadReader();
  #respHead = new HeadReader();
  #reqBody = new BodyReader();
  #respBody = new BodyReader();
  #c = HEAD;
  #u = IDLE;
  /** The current head's limit, and when the current client and upstream waits began. */
  #headBy: number;
  #clientSince: number;
  #upSince = 0;
  #hasUp = false;
  #req: InFlight | undefined;
  /** The request waiting for its verdict (JUDGE). */
  #judging: { r: InFlight; framing: Framing } | undefined;
  #bodyError: Error | undefined;
  #respError: Error | undefined;
  #closed = false;
  /**
   * What the last request head and response head gave (HeadReader hands out the same Head object
   * for the same bytes): reused for the next one while it is that head.
   */
  #reqMemo: { head: Head; req: RequestInfo; framing: Framing; again: boolean } | undefined;
  #respMemo: { resp: Head; method: string; again: boolean; rf: Framing } | undefined;

  constructor(io: MachineIo, o: MachineOptions & { now: number }) {
    this.#io = io, this.#o = o;
    this.#idle = o.idleTimeoutMs ?? 60_000;
    this.#headBy = o.now + (o.headerTimeoutMs ?? 10_000);
    this.#clientSince = o.now;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Whether the caller should read the client now (false: a request is in flight, enough held). */
  get wantsClient(): boolean {
    return !this.#closed &&
      ((this.#c !== WAIT && this.#c !== JUDGE) ||
        this.#cin.length < (this.#o.maxHeldBytes ?? 65536));
  }

  /** When tick() has something to do (Infinity: nothing is waited for). */
  get deadline(): number {
    if (this.#closed) return Infinity;
    let at = Infinity;
    if (this.#c === HEAD) at = Math.min(this.#headBy, this.#clientSince + this.#idle);
    else if (this.#c === BODY || this.#c === JUDGE) at = this.#clientSince + this.#idle;
    if (this.#upWaits()) at = Math.min(at, this.#upSince + this.#idle);
    return at;
  }

  /** Whether a read of the upstream leg is pending (a response not yet failed). */
  #upWaits(): boolean {
    return (this.#u === RESP_HEAD && this.#respError === undefined) || this.#u === RESP_BODY;
  }

  client(b: Uint8Array, now: number): void {
    if (this.#closed) return;
    this.#cin.push(b);
    this.#clientSince = now;
    this.#run(now);
    this.#cin.keep();
  }

  clientEnd(now: number): void {
    this.#cin.eof = true;
    this.#run(now);
  }

  upstream(b: Uint8Array, now: number): void {
    if (this.#closed) return;
    this.#uin.push(b);
    this.#upSince = now;
    this.#run(now);
    this.#uin.keep();
  }

  upstreamEnd(now: number): void {
    this.#uin.eof = true;
    this.#run(now);
  }

  /** The upstream leg could not be connected (after connect() returned). */
  upstreamFailed(reason: string, now: number): void {
    if (this.#closed || !this.#req || this.#u !== RESP_HEAD) return this.close();
    this.#connectFailed(this.#req, reason, now);
  }

  /** Whether a request waits for its verdict (judge() returned undefined). */
  get judging(): boolean {
    return !this.#closed && this.#c === JUDGE;
  }

  /** The verdict judge() did not know; the waiting request goes on. */
  verdict(allowed: boolean, now: number): void {
    if (this.#closed || this.#c !== JUDGE) return;
    this.#c = HEAD;
    this.#judged(allowed, now);
    this.#run(now);
    this.#cin.keep();
  }

  /** Fires the deadlines that passed by `now`. */
  tick(now: number): void {
    if (this.#closed || now < this.deadline) return;
    const upLate = this.#upWaits() && now >= this.#upSince + this.#idle;
    if (this.#c === HEAD && now >= Math.min(this.#headBy, this.#clientSince + this.#idle)) {
      if (!this.#reqHead.started(this.#cin)) return this.close();
      return this.#headFailed(new HttpError(408, "Request header timeout"));
    }
    if (this.#c === JUDGE && now >= this.#clientSince + this.#idle) return this.close();
    if (this.#c === BODY && now >= this.#clientSince + this.#idle) {
      this.#bodyFailed(new Timeout("Request body timeout"), now);
    }
    if (!this.#closed && upLate) {
      if (this.#u === RESP_BODY) return this.close();
      this.#respError = new Timeout("Response timeout");
    }
    this.#run(now);
  }

  /** Closes both legs (the caller's own end of a connection, or the machine's). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#dropUpstream();
    this.#io.closeClient();
  }

  #dropUpstream(): void {
    if (this.#hasUp) this.#io.closeUpstream();
    this.#hasUp = false;
    this.#uin.clear();
  }

  #run(now: number): void {
    for (let moved = true; moved && !this.#closed;) {
      moved = false;
      try {
        if (this.#c === HEAD) moved = this.#readHead(now);
        else if (this.#c === BODY) moved = this.#readBody();
      } catch (e) {
        if (this.#c === HEAD) return this.#headFailed(e);
        this.#bodyFailed(e as Error, now);
        moved = true;
        continue;
      }
      if (this.#closed) return;
      if (this.#u === RESP_HEAD || this.#u === RESP_BODY) moved = this.#readResponse(now) || moved;
      else if (this.#u === IDLE && this.#uin.eof) this.#dropUpstream(); // closed between requests
      else if (this.#uin.length > MAX_UNSOLICITED) return this.close();
      if (this.#closed) return;
      if (this.#respError !== undefined && this.#c !== BODY) return this.#answerError(now);
      if (this.#c === WAIT && this.#u === RESP_DONE) moved = this.#finish(now);
    }
  }

  #readHead(now: number): boolean {
    const head = this.#reqHead.read(this.#cin, {
      request: true,
      max: this.#o.maxHeadBytes ?? 16384,
      maxHeaders: 100,
    });
    if (head) return this.#request(head, now), true;
    if (!this.#cin.eof) return false;
    const err = this.#reqHead.endError(this.#cin, true);
    if (err === null) this.close();
    else this.#headFailed(err);
    return false;
  }

  #readBody(): boolean {
    if (this.#reqBody.read(this.#cin, (b) => this.#io.toUpstream(b))) {
      this.#c = WAIT;
      return true;
    }
    if (this.#cin.eof) throw this.#reqBody.endError(this.#cin);
    return false;
  }

  /** A bad or late head: its status, a record, close. */
  #headFailed(err: unknown): void {
    const failed = headFailure(err instanceof HttpError ? err.status : 400, (err as Error).message);
    this.#o.onRequest(failed.record);
    this.#io.toClient(failed.reply);
    this.close();
  }

  #record(r: InFlight, code: number, allowed: boolean, o: { now: number; error?: string }): void {
    this.#o.onRequest({
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

  #request(head: Head, now: number): void {
    const m = this.#reqMemo;
    if (m?.head === head) { // (the same head as the last request: what it gave then)
      return this.#judge({ head, path: m.req.path, host: m.req.host, started: now }, m, now);
    }
    const r: InFlight = { head, path: head.target, host: first(head, "host") ?? "", started: now };
    let framing: Framing;
    try {
      framing = requestFraming(head);
      const asIs = isNormalPath(head.target) || (head.target === "*" && head.method === "OPTIONS");
      if (!asIs) r.path = normalisePath(head.target);
    } catch (err) {
      const status = err instanceof HttpError ? err.status : 400;
      const msg = err instanceof PathError || err instanceof HttpError ? err.message : String(err);
      this.#record(r, status, false, { now, error: msg });
      this.#io.toClient(localReply(status, `${msg}\r\n`, true));
      return this.close();
    }
    const req = new RequestInfo(head, r.path, r.host);
    this.#reqMemo = { head, req, framing, again: keepAlive(head) };
    this.#judge(r, this.#reqMemo, now);
  }

  #judge(r: InFlight, m: { req: RequestInfo; framing: Framing }, now: number): void {
    this.#judging = { r, framing: m.framing };
    const allowed = this.#o.judge(m.req, r.head);
    if (allowed === undefined) this.#c = JUDGE; // (the head's bytes stay in the input)
    else this.#judged(allowed, now);
  }

  /** The request's verdict is known: its head leaves the input, denied or forwarded. */
  #judged(allowed: boolean, now: number): void {
    const { r, framing } = this.#judging!, head = r.head;
    this.#judging = undefined;
    const raw = this.#cin.take(head.size);
    if (!allowed) {
      // Cilium's answer. A body the client may still send is not read: close after it.
      const close = framing.kind !== "none" || !keepAlive(head);
      this.#record(r, 403, false, { now, error: "Access denied" });
      this.#io.toClient(close ? DENY_CLOSE : DENY);
      if (close) return this.close();
      return this.#nextHead(now);
    }
    if (!this.#hasUp) {
      const failed = this.#io.connect();
      if (failed !== undefined) return this.#connectFailed(r, failed, now);
      this.#hasUp = true;
    }
    this.#io.toUpstream(r.path === head.target ? raw : serializeHead(head, r.path));
    this.#req = r;
    this.#bodyError = this.#respError = undefined;
    this.#reqBody.start(framing, "request body");
    this.#c = framing.kind === "none" ? WAIT : BODY;
    this.#u = RESP_HEAD;
    this.#clientSince = this.#upSince = now;
  }

  #connectFailed(r: InFlight, reason: string, now: number): void {
    this.#record(r, 503, true, { now, error: `Upstream connect failed: ${reason}` });
    this.#io.toClient(localReply(503, "Upstream connect failed\r\n", true));
    this.close();
  }

  #nextHead(now: number): void {
    this.#c = HEAD, this.#u = IDLE, this.#req = undefined;
    this.#headBy = now + this.#idle, this.#clientSince = now;
  }

  /** Response heads (1xx relayed) and the body; true when it moved. */
  #readResponse(now: number): boolean {
    const r = this.#req!;
    if (this.#u === RESP_BODY) return this.#readResponseBody();
    if (this.#respError !== undefined) return false;
    let resp: Head | undefined;
    try {
      resp = this.#respHead.read(this.#uin, { request: false, max: 65536, maxHeaders: 200 });
      if (!resp) {
        if (this.#uin.eof) throw this.#respHead.endError(this.#uin, false);
        return false;
      }
      if (resp.status === 101) throw new HttpError(502, "Protocol upgrades are not supported");
    } catch (e) {
      this.#respError = e as Error;
      return true;
    }
    const raw = this.#uin.take(resp.size);
    if (resp.status < 200) {
      this.#io.toClient(raw);
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
    if (rf.kind === "length" && this.#uin.length >= rf.length) {
      // Head and whole body in the bytes at hand (the common small response): one write.
      const b = this.#uin.bytes, at = this.#uin.start - resp.size;
      this.#uin.take(rf.length);
      this.#io.toClient(b.subarray(at, at + resp.size + rf.length));
      this.#u = RESP_DONE;
      return true;
    }
    this.#io.toClient(raw);
    this.#respBody.start(rf, "response body");
    this.#u = RESP_BODY;
    return this.#readResponseBody() || true;
  }

  #readResponseBody(): boolean {
    let done: boolean;
    try {
      done = this.#respBody.read(this.#uin, (b) => this.#io.toClient(b));
    } catch {
      this.close();
      return false;
    }
    if (done) {
      this.#u = RESP_DONE;
      return true;
    }
    if (this.#uin.eof) this.close(); // cut mid-body: no record, as the async path
    return false;
  }

  /** A bad request body (or its timeout): the upstream leg is cut, then the status answered. */
  #bodyFailed(err: Error, now: number): void {
    this.#bodyError = err;
    this.#c = WAIT;
    const r = this.#req!, rf = r.rf;
    if (this.#u === RESP_DONE) {
      this.#record(r, r.resp!.status, true, { now });
      return this.close();
    }
    if (this.#u === RESP_BODY) {
      if (rf?.kind !== "close" || this.#uin.length > 0) return this.close();
      this.#record(r, r.resp!.status, true, { now });
      return this.close();
    }
    this.#respError ??= err;
    this.#dropUpstream();
  }

  /** The response failed (or the body did first): 502 or the request's own status, close. */
  #answerError(now: number): void {
    const r = this.#req!, e = this.#bodyError ?? this.#respError!;
    const status = e instanceof HttpError ? e.status : 502;
    this.#record(r, status, this.#bodyError === undefined, { now, error: e.message });
    const text = status === 502 ? "Bad gateway" : e.message;
    this.#io.toClient(localReply(status, `${text}\r\n`, true));
    this.close();
  }

  /** Request and response both done: the record, then the next request or the end. */
  #finish(now: number): boolean {
    const r = this.#req!, resp = r.resp!;
    this.#record(r, resp.status, true, { now });
    if (!r.again || r.rf!.kind === "close" || this.#uin.eof) this.#dropUpstream();
    const reqAgain = this.#reqMemo?.head === r.head ? this.#reqMemo.again : keepAlive(r.head);
    if (!(r.again && reqAgain)) {
      this.close();
      return false;
    }
    this.#respHead.reset();
    this.#nextHead(now);
    return true;
  }
}
