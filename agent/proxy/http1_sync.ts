// Synchronous HTTP/1.1 reading for the proxy's Worker path (issue 10): bytes pushed in from a
// reused read buffer, message heads and body framing out, with the checks and errors of http1.ts
// (whose pure line checks it calls) and body.ts, but no promises and no allocation per read:
// bytes are parsed where they lie, and only what one push leaves unparsed (a partial head or
// chunk line, pipelined bytes waiting their turn) is copied into the input's own buffer, so memory
// is bounded by a head plus one read. It does no I/O and knows no policy. This module is browser
// compatible.
//
// This module reads heads (HeadReader); the input's buffer is _http1_byte_input.ts's (ByteInput)
// and body framing _http1_body_reader.ts's (BodyReader), both exported from here too. The
// classes are used directly (no wrapper), so the split costs nothing per read.

import {
  badGateway,
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
import { type ByteInput, EMPTY } from "./_http1_byte_input.ts";

export { ByteInput } from "./_http1_byte_input.ts";
export { BodyReader } from "./_http1_body_reader.ts";

const ascii = new TextDecoder();

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
