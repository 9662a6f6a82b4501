// Synchronous HTTP/1.1 reading for the proxy's Worker path (issue 10): bytes pushed in from a
// reused read buffer, message heads and body framing out, with the checks and errors of http1.ts
// (whose pure line checks it calls) and body.ts, but no promises and no allocation per read:
// bytes are parsed where they lie, and only what one push leaves unparsed (a partial head or
// chunk line, pipelined bytes waiting their turn) is copied into the input's own buffer, so memory
// is bounded by a head plus one read. It does no I/O and knows no policy. This module is browser
// compatible.

import {
  badGateway,
  type Framing,
  type Head,
  headerLine,
  headersOf,
  HttpError,
  latin1,
  lineEnd,
  requestLine,
  statusLine,
  wholeHeadEnd,
} from "./http1.ts";

const EMPTY = new Uint8Array(0);
const ascii = new TextDecoder();

/** The bytes of one direction not yet parsed: a pushed view, or what was kept of it. */
export class ByteInput {
  #own: Uint8Array = EMPTY;
  #owned = false;
  /** The bytes at hand are #view[#off, #view.length). */
  #view: Uint8Array = EMPTY;
  #off = 0;
  /** The peer ended its stream. */
  eof = false;

  get length(): number {
    return this.#view.length - this.#off;
  }
  get bytes(): Uint8Array {
    return this.#view;
  }
  get start(): number {
    return this.#off;
  }

  /** The next n bytes, as a view valid until the next push() or keep(). */
  take(n: number): Uint8Array {
    const v = this.#view.subarray(this.#off, this.#off + n);
    this.#off += n;
    return v;
  }

  /** New bytes; `b` may be a reused buffer, valid until keep(). */
  push(b: Uint8Array): void {
    if (this.length === 0) {
      this.#view = b, this.#off = 0, this.#owned = false;
      return;
    }
    this.#hold(b);
  }

  /** Copies what is left into the input's own buffer (the pushed one is about to be reused). */
  keep(): void {
    if (this.length === 0) this.#view = EMPTY, this.#off = 0, this.#owned = false;
    else if (!this.#owned) this.#hold(EMPTY);
  }

  /** Drops everything (a new upstream leg). */
  clear(): void {
    this.#view = EMPTY, this.#off = 0, this.#owned = false, this.eof = false;
  }

  #hold(more: Uint8Array): void {
    const left = this.length, need = left + more.length;
    let own = this.#own;
    if (need > own.length) {
      own = new Uint8Array(Math.max(need, own.length * 2, 4096));
      own.set(this.#view.subarray(this.#off));
    } else if (this.#owned) own.copyWithin(0, this.#off, this.#view.length);
    else own.set(this.#view.subarray(this.#off));
    own.set(more, left);
    this.#own = own, this.#view = own.subarray(0, need), this.#off = 0, this.#owned = true;
  }
}

interface HeadKind {
  request: boolean;
  max: number;
  maxHeaders: number;
}

/** Heads up to this size are remembered for the next head of the connection (see HeadReader). */
const MEMO_BYTES = 2048;

/**
 * One message head read as readRequestHead/readResponseHead do (a whole head in one pass, else
 * line by line with the same errors), its bytes left in the input until the caller takes them.
 * The last head read whole is remembered with its bytes (copied into a buffer of the reader's
 * own, no allocation): a next head of the very same bytes (a keep-alive client repeating its
 * request, a server its response head) is that same Head object, not parsed again. Heads are
 * never mutated, and parsing depends on nothing but the bytes and the reader's fixed limits, so
 * the result is the one a parse would give.
 */
export class HeadReader {
  /** Bytes of the head parsed as lines so far, from the input's start. */
  #pos = 0;
  #scanned = 0;
  #line: string | undefined;
  #headers: [string, string][] = [];
  #size = 0;
  #memo = EMPTY;
  #memoLen = 0;
  #memoHead: Head | undefined;

  /** Bytes of the head already in (for a timeout: did the client send anything of it). */
  started(inp: ByteInput): boolean {
    return this.#pos > 0 || inp.length > 0;
  }

  /** The head when it is whole (`size` bytes at the input's start), else undefined. */
  read(inp: ByteInput, k: HeadKind): Head | undefined {
    const b = inp.bytes, s = inp.start, end = s + inp.length;
    if (this.#pos === 0 && inp.length > 0) {
      if (this.#memoHead && inp.length >= this.#memoLen && this.#same(b, s)) {
        this.reset();
        return this.#memoHead;
      }
      const e = wholeHeadEnd(b, s, end, k.max);
      if (e >= 0) {
        this.reset(); // (a partial line scanned before says nothing of the next head)
        const head = this.#whole(ascii.decode(b.subarray(s, e)), k);
        this.#remember(b, s, e, head);
        return head;
      }
    }
    try {
      return this.#lines(b, s, end, k);
    } catch (e) {
      throw k.request || this.#line === undefined ? e : badGateway(e);
    }
  }

  /** Whether b[s…] starts with the remembered head's bytes. */
  #same(b: Uint8Array, s: number): boolean {
    const m = this.#memo, n = this.#memoLen;
    for (let i = 0; i < n; i++) if (b[s + i] !== m[i]) return false;
    return true;
  }

  #remember(b: Uint8Array, s: number, e: number, head: Head): void {
    if (e - s > MEMO_BYTES) return void (this.#memoHead = undefined);
    if (this.#memo.length === 0) this.#memo = new Uint8Array(MEMO_BYTES);
    this.#memo.set(b.subarray(s, e));
    this.#memoLen = e - s, this.#memoHead = head;
  }

  /** At the end of the input without a whole head: null (nothing came) or the error to answer. */
  endError(inp: ByteInput, request: boolean): HttpError | null {
    const any = this.started(inp);
    if (request) {
      if (!any) return null;
      return new HttpError(
        400,
        `Connection closed inside request ${this.#line ? "headers" : "line"}`,
      );
    }
    if (!any) return new HttpError(502, "The server closed the connection");
    // (As readResponseHead: a cut status line is a 400, cut headers a 502.)
    return this.#line === undefined
      ? new HttpError(400, "Connection closed inside status line")
      : new HttpError(502, "Connection closed inside response headers");
  }

  #whole(text: string, k: HeadKind): Head {
    const at = text.indexOf("\r\n");
    if (k.request) {
      const [method, target, version] = requestLine(text.slice(0, at));
      const headers = headersOf(text, at, k.maxHeaders, "request headers");
      return checkHost({
        method,
        target,
        status: 0,
        reason: "",
        version,
        headers,
        size: text.length,
      });
    }
    const [version, status, reason] = statusLine(text.slice(0, at));
    let headers: [string, string][];
    try {
      headers = headersOf(text, at, k.maxHeaders, "response headers");
    } catch (e) {
      throw badGateway(e);
    }
    return { method: "", target: "", status, reason, version, headers, size: text.length };
  }

  #lines(b: Uint8Array, s: number, end: number, k: HeadKind): Head | undefined {
    const what = k.request ? "request headers" : "response headers";
    for (;;) {
      const from = s + this.#pos;
      const first = this.#line === undefined;
      // readRequestHead gives headers the budget the request line left; responses the whole one.
      const budget = first ? k.max : (k.request ? k.max - this.#line!.length - 2 : k.max);
      const e = lineEnd(b, {
        from,
        end,
        scanned: from + this.#scanned,
        max: first ? k.max : budget - this.#size,
        what: first ? (k.request ? "request line" : "status line") : what,
        tooLong: first ? (k.request ? 414 : 502) : 431,
      });
      if (e < 0) {
        this.#scanned = end - from;
        return undefined;
      }
      const line = latin1(b.subarray(from, e - 2));
      this.#pos += e - from, this.#scanned = 0;
      if (first) {
        if (k.request) requestLine(line);
        else statusLine(line);
        this.#line = line;
        continue;
      }
      this.#size += line.length + 2;
      if (this.#size > budget) throw new HttpError(431, `${what} larger than the limit`);
      if (line !== "") {
        headerLine(line, this.#headers, k.maxHeaders, what);
        continue;
      }
      return this.#done(k);
    }
  }

  #done(k: HeadKind): Head {
    const line = this.#line!, headers = this.#headers, size = this.#pos;
    this.reset();
    if (k.request) {
      const [method, target, version] = requestLine(line);
      return checkHost({ method, target, status: 0, reason: "", version, headers, size });
    }
    const [version, status, reason] = statusLine(line);
    return { method: "", target: "", status, reason, version, headers, size };
  }

  reset(): void {
    this.#pos = this.#scanned = this.#size = 0;
    this.#line = undefined;
    this.#headers = [];
  }
}

function checkHost(head: Head): Head {
  let hosts = 0;
  for (const [n] of head.headers) if (n.length === 4 && n.toLowerCase() === "host") hosts++;
  if (hosts > 1 || (head.version === "1.1" && hosts !== 1)) {
    throw new HttpError(400, "A request needs exactly one Host header");
  }
  return head;
}

const SIZE = 0, DATA = 1, DATA_END = 2, TRAILERS = 3, DONE = 4;
const MAX_CHUNK_LINE = 4096;
const PART = ["chunk size", "", "chunk end", "trailers"];
const CHUNK_RE = /^([0-9A-Fa-f]{1,12})(?:[ \t]*;.*)?$/;
const CRLF = new Uint8Array([13, 10]);
const LAST_CHUNK = new Uint8Array([48, 13, 10, 13, 10]);

/**
 * One message body streamed by its framing as body.ts's copyBody does: Content-Length bytes as
 * they come, chunked decoded strictly and re-encoded canonically (extensions and trailers
 * dropped), "close" until the end of the input; each piece handed to `out` as a view.
 */
export class BodyReader {
  #kind: Framing["kind"] = "none";
  #left = 0;
  #state = SIZE;
  #what = "body";
  #sizeLine = new Uint8Array(16);

  start(f: Framing, what: string): void {
    this.#kind = f.kind, this.#what = what, this.#state = SIZE;
    this.#left = f.kind === "length" ? f.length : 0;
  }

  /** Streams what the input holds; true when the body is complete. Throws HttpError. */
  read(inp: ByteInput, out: (b: Uint8Array) => void): boolean {
    switch (this.#kind) {
      case "none":
        return true;
      case "close":
        if (inp.length > 0) out(inp.take(inp.length));
        return inp.eof;
      case "length": {
        const n = Math.min(this.#left, inp.length);
        if (n > 0) out(inp.take(n)), this.#left -= n;
        return this.#left === 0;
      }
    }
    return this.#chunked(inp, out);
  }

  /** The error at the end of the input before the body's end (as copyBody's). */
  endError(inp: ByteInput): HttpError {
    const w = this.#what;
    if (this.#kind !== "chunked" || this.#state === DATA) {
      return new HttpError(400, `Connection closed inside ${w}`);
    }
    if (this.#state === DATA_END) {
      return new HttpError(
        400,
        inp.length > 0
          ? `Connection closed inside ${w} chunk end`
          : `Missing CRLF after a chunk in ${w}`,
      );
    }
    const part = this.#state === SIZE ? "chunk size" : "trailers";
    return new HttpError(400, `Connection closed inside ${w}${inp.length > 0 ? ` ${part}` : ""}`);
  }

  #chunked(inp: ByteInput, out: (b: Uint8Array) => void): boolean {
    const w = this.#what;
    for (;;) {
      if (this.#state === DATA) {
        const n = Math.min(this.#left, inp.length);
        if (n > 0) out(inp.take(n)), this.#left -= n;
        if (this.#left > 0) return false;
        this.#state = DATA_END;
      }
      if (this.#state === DONE) return true;
      const b = inp.bytes, s = inp.start, end = s + inp.length;
      const max = this.#state === DATA_END ? 2 : MAX_CHUNK_LINE;
      const what = `${w} ${PART[this.#state]}`;
      const e = lineEnd(b, { from: s, end, scanned: s, max, what, tooLong: 400 });
      if (e < 0) return false;
      const len = e - s - 2;
      if (this.#state === SIZE) {
        const m = CHUNK_RE.exec(latin1(b.subarray(s, s + len)));
        if (!m) throw new HttpError(400, `Invalid chunk size line in ${w}`);
        inp.take(e - s);
        this.#left = parseInt(m[1]!, 16);
        if (this.#left === 0) this.#state = TRAILERS;
        else out(this.#hex(this.#left)), this.#state = DATA;
      } else if (this.#state === DATA_END) {
        if (len !== 0) throw new HttpError(400, `Missing CRLF after a chunk in ${w}`);
        inp.take(2);
        out(CRLF);
        this.#state = SIZE;
      } else {
        inp.take(e - s);
        if (len === 0) out(LAST_CHUNK), this.#state = DONE;
      }
    }
  }

  /** `size` in hex and CRLF, in a buffer of the reader's own. */
  #hex(size: number): Uint8Array {
    const digits = size.toString(16), b = this.#sizeLine;
    for (let i = 0; i < digits.length; i++) b[i] = digits.charCodeAt(i);
    b[digits.length] = 13, b[digits.length + 1] = 10;
    return b.subarray(0, digits.length + 2);
  }
}
