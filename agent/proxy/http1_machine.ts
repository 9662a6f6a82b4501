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
//
// Its parts: this module is the machine's face and its client half (request heads read and
// judged, request bodies forwarded, deadlines); the answering half and the state both share are
// _http1_exchange.ts (Http1Machine extends it).

import { BodyReader, ByteInput, HeadReader } from "./http1_sync.ts";
import {
  first,
  type Framing,
  type Head,
  HttpError,
  keepAlive,
  requestFraming,
  serializeHead,
} from "./http1.ts";
import { headFailure, localReply } from "./http_records.ts";
import { isNormalPath, normalisePath, PathError } from "./path.ts";
import {
  BODY,
  HEAD,
  Http1Exchange,
  IDLE,
  type InFlight,
  JUDGE,
  RequestInfo,
  RESP_BODY,
  RESP_DONE,
  RESP_HEAD,
  WAIT,
} from "./_http1_exchange.ts";

export type { MachineIo, MachineOptions } from "./_http1_exchange.ts";

class Timeout extends Error {}

const DENY = localReply(403, "Access denied\r\n", false);
const DENY_CLOSE = localReply(403, "Access denied\r\n", true);
const MAX_UNSOLICITED = 65536;

export class Http1Machine extends Http1Exchange {
  #cin = new ByteInput();
  #reqHead = new HeadReader();
  #reqBody = new BodyReader();
  /** When the current upstream wait began. */
  #upSince = 0;
  /** The request waiting for its verdict (JUDGE). */
  #judging: { r: InFlight; framing: Framing } | undefined;

  get closed(): boolean {
    return this.isClosed;
  }

  /** Whether the caller should read the client now (false: a request is in flight, enough held). */
  get wantsClient(): boolean {
    return !this.isClosed &&
      ((this.c !== WAIT && this.c !== JUDGE) ||
        this.#cin.length < (this.o.maxHeldBytes ?? 65536));
  }

  /** When tick() has something to do (Infinity: nothing is waited for). */
  get deadline(): number {
    if (this.isClosed) return Infinity;
    let at = Infinity;
    if (this.c === HEAD) at = Math.min(this.headBy, this.clientSince + this.idle);
    else if (this.c === BODY || this.c === JUDGE) at = this.clientSince + this.idle;
    if (this.#upWaits()) at = Math.min(at, this.#upSince + this.idle);
    return at;
  }

  /** Whether a read of the upstream leg is pending (a response not yet failed). */
  #upWaits(): boolean {
    return (this.u === RESP_HEAD && this.respError === undefined) || this.u === RESP_BODY;
  }

  client(b: Uint8Array, now: number): void {
    if (this.isClosed) return;
    this.#cin.push(b);
    this.clientSince = now;
    this.#run(now);
    this.#cin.keep();
  }

  clientEnd(now: number): void {
    this.#cin.eof = true;
    this.#run(now);
  }

  upstream(b: Uint8Array, now: number): void {
    if (this.isClosed) return;
    this.uin.push(b);
    this.#upSince = now;
    this.#run(now);
    this.uin.keep();
  }

  upstreamEnd(now: number): void {
    this.uin.eof = true;
    this.#run(now);
  }

  /** The upstream leg could not be connected (after connect() returned). */
  upstreamFailed(reason: string, now: number): void {
    if (this.isClosed || !this.req || this.u !== RESP_HEAD) return this.close();
    this.connectFailed(this.req, reason, now);
  }

  /** Whether a request waits for its verdict (judge() returned undefined). */
  get judging(): boolean {
    return !this.isClosed && this.c === JUDGE;
  }

  /** The verdict judge() did not know; the waiting request goes on. */
  verdict(allowed: boolean, now: number): void {
    if (this.isClosed || this.c !== JUDGE) return;
    this.c = HEAD;
    this.#judged(allowed, now);
    this.#run(now);
    this.#cin.keep();
  }

  /** Fires the deadlines that passed by `now`. */
  tick(now: number): void {
    if (this.isClosed || now < this.deadline) return;
    const upLate = this.#upWaits() && now >= this.#upSince + this.idle;
    if (this.c === HEAD && now >= Math.min(this.headBy, this.clientSince + this.idle)) {
      if (!this.#reqHead.started(this.#cin)) return this.close();
      return this.#headFailed(new HttpError(408, "Request header timeout"));
    }
    if (this.c === JUDGE && now >= this.clientSince + this.idle) return this.close();
    if (this.c === BODY && now >= this.clientSince + this.idle) {
      this.bodyFailed(new Timeout("Request body timeout"), now);
    }
    if (!this.isClosed && upLate) {
      if (this.u === RESP_BODY) return this.close();
      this.respError = new Timeout("Response timeout");
    }
    this.#run(now);
  }

  #run(now: number): void {
    for (let moved = true; moved && !this.isClosed;) {
      moved = false;
      try {
        if (this.c === HEAD) moved = this.#readHead(now);
        else if (this.c === BODY) moved = this.#readBody();
      } catch (e) {
        if (this.c === HEAD) return this.#headFailed(e);
        this.bodyFailed(e as Error, now);
        moved = true;
        continue;
      }
      if (this.isClosed) return;
      if (this.u === RESP_HEAD || this.u === RESP_BODY) moved = this.readResponse(now) || moved;
      else if (this.u === IDLE && this.uin.eof) this.dropUpstream(); // closed between requests
      else if (this.uin.length > MAX_UNSOLICITED) return this.close();
      if (this.isClosed) return;
      if (this.respError !== undefined && this.c !== BODY) return this.answerError(now);
      if (this.c === WAIT && this.u === RESP_DONE) moved = this.finish(now);
    }
  }

  #readHead(now: number): boolean {
    const head = this.#reqHead.read(this.#cin, {
      request: true,
      max: this.o.maxHeadBytes ?? 16384,
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
    if (this.#reqBody.read(this.#cin, (b) => this.io.toUpstream(b))) {
      this.c = WAIT;
      return true;
    }
    if (this.#cin.eof) throw this.#reqBody.endError(this.#cin);
    return false;
  }

  /** A bad or late head: its status, a record, close. */
  #headFailed(err: unknown): void {
    const failed = headFailure(err instanceof HttpError ? err.status : 400, (err as Error).message);
    this.o.onRequest(failed.record);
    this.io.toClient(failed.reply);
    this.close();
  }

  #request(head: Head, now: number): void {
    const m = this.reqMemo;
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
      this.record(r, status, false, { now, error: msg });
      this.io.toClient(localReply(status, `${msg}\r\n`, true));
      return this.close();
    }
    const req = new RequestInfo(head, r.path, r.host);
    this.reqMemo = { head, req, framing, again: keepAlive(head) };
    this.#judge(r, this.reqMemo, now);
  }

  #judge(r: InFlight, m: { req: RequestInfo; framing: Framing }, now: number): void {
    this.#judging = { r, framing: m.framing };
    const allowed = this.o.judge(m.req, r.head);
    if (allowed === undefined) this.c = JUDGE; // (the head's bytes stay in the input)
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
      this.record(r, 403, false, { now, error: "Access denied" });
      this.io.toClient(close ? DENY_CLOSE : DENY);
      if (close) return this.close();
      return this.nextHead(now);
    }
    if (!this.hasUp) {
      const failed = this.io.connect();
      if (failed !== undefined) return this.connectFailed(r, failed, now);
      this.hasUp = true;
    }
    this.io.toUpstream(r.path === head.target ? raw : serializeHead(head, r.path));
    this.req = r;
    this.bodyError = this.respError = undefined;
    this.#reqBody.start(framing, "request body");
    this.c = framing.kind === "none" ? WAIT : BODY;
    this.u = RESP_HEAD;
    this.clientSince = this.#upSince = now;
  }
}
