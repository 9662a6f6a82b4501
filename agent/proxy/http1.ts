// Strict HTTP/1.1 message heads and body framing for the L7 proxy (RFC 9112). Requests are parsed
// as a server must to stop smuggling: CRLF only (a bare LF or CR is an error), no obs-fold, no
// whitespace before a header's colon, token methods and names, one decimal Content-Length,
// Transfer-Encoding only `chunked` and never together with Content-Length, Host required for
// 1.1, a size cap (431). Every error carries the status the proxy answers with. Responses from
// the server are parsed for framing only. It reads through `BufReader`, which holds at most one
// head plus one read, so memory per connection is bounded. This module is browser compatible.
//
// Its parts: the head, its framing and its errors (_http1_message.ts), and the line checks the
// synchronous reader (http1_sync.ts) shares (_http1_lines.ts); both are exported from here.

export {
  all,
  badGateway,
  encodeLatin1,
  first,
  type Framing,
  type Head,
  HttpError,
  keepAlive,
  requestFraming,
  responseFraming,
  serializeHead,
} from "./_http1_message.ts";
export {
  headerLine,
  headersOf,
  latin1,
  lineEnd,
  requestLine,
  statusLine,
  wholeHeadEnd,
} from "./_http1_lines.ts";
import { all, badGateway, type Head, HttpError } from "./_http1_message.ts";
import {
  headerLine,
  headersOf,
  latin1,
  lineEnd,
  requestLine,
  statusLine,
  wholeHeadEnd,
} from "./_http1_lines.ts";

const ascii = new TextDecoder();

/** A buffered reader over a pull function; `pull` returns null at end of stream. */
export class BufReader {
  #buf: Uint8Array = new Uint8Array(0);
  /** Where the array #buf is a view of began (what came before it is not ours). */
  #base = 0;
  /** How far lineNow() found no LF in #buf. */
  #scanned = 0;
  #eof = false;
  constructor(readonly pull: () => Promise<Uint8Array | null>) {}

  get buffered(): number {
    return this.#buf.length;
  }

  /** Reads more; false at end of stream. */
  async fill(): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = await this.pull();
    if (chunk === null) {
      this.#eof = true;
      return false;
    }
    if (this.#buf.length === 0) this.#buf = chunk;
    else {
      const b = new Uint8Array(this.#buf.length + chunk.length);
      b.set(this.#buf);
      b.set(chunk, this.#buf.length);
      this.#buf = b;
    }
    this.#base = this.#buf.byteOffset;
    return true;
  }

  peek(): Uint8Array {
    return this.#buf;
  }

  take(n: number): Uint8Array {
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    this.#scanned = 0;
    return out;
  }

  /**
   * The last `n` bytes taken, as they were read, when they all came from one read or buffer
   * (else undefined): a head and body forwarded unchanged without serialising or copying them.
   */
  taken(n: number): Uint8Array | undefined {
    const off = this.#buf.byteOffset;
    return off - this.#base >= n ? new Uint8Array(this.#buf.buffer, off - n, n) : undefined;
  }

  /** The next CRLF-terminated line (without CRLF) within max bytes; a bare LF/CR is an error. */
  async line(max: number, what: string, tooLong = 400): Promise<string | null> {
    for (;;) {
      const text = this.lineNow(max, what, tooLong);
      if (text !== undefined) return text;
      if (!(await this.fill())) {
        if (this.#buf.length === 0) return null;
        throw new HttpError(400, `Connection closed inside ${what}`);
      }
    }
  }

  /**
   * line() without waiting: the line when a whole one is buffered, undefined when more must be
   * read (the same checks; bytes already scanned are not scanned again after a fill).
   */
  lineNow(max: number, what: string, tooLong = 400): string | undefined {
    const b = this.#buf;
    const end = lineEnd(b, { from: 0, end: b.length, scanned: this.#scanned, max, what, tooLong });
    if (end < 0) {
      this.#scanned = b.length;
      return undefined;
    }
    const text = latin1(b.subarray(0, end - 2));
    this.take(end);
    return text;
  }

  /**
   * A whole head (through its empty line) taken as one string in one pass, when the buffer holds
   * it within `max` bytes and it is plain ASCII with every CR and LF paired as CRLF; else
   * undefined and nothing is taken (the line-by-line path then reads it, with its precise errors).
   */
  wholeHead(max: number): string | undefined {
    const b = this.#buf, end = wholeHeadEnd(b, 0, b.length, max);
    if (end < 0) return undefined;
    const text = ascii.decode(b.subarray(0, end));
    this.take(end);
    return text;
  }
}

/** Reads header lines until the empty line; `budget` is what the head may still use. */
async function readHeaders(r: BufReader, budget: number, max: number, what: string) {
  const headers: [string, string][] = [];
  let size = 0;
  for (;;) {
    // Without a wait when the line is buffered already.
    const line = r.lineNow(budget - size, what, 431) ?? await r.line(budget - size, what, 431);
    if (line === null) throw new HttpError(400, `Connection closed inside ${what}`);
    size += line.length + 2;
    if (size > budget) throw new HttpError(431, `${what} larger than the limit`);
    if (line === "") return { headers, size };
    headerLine(line, headers, max, what);
  }
}

export interface HeadLimits {
  /** Bytes of request line plus headers; default 16 KiB. */
  maxHeadBytes?: number;
  maxHeaders?: number;
}

/** The next request head, or null when the client closed cleanly between requests. */
export async function readRequestHead(r: BufReader, o: HeadLimits = {}): Promise<Head | null> {
  const budget = o.maxHeadBytes ?? 16384, maxHeaders = o.maxHeaders ?? 100;
  let method: string, target: string, version: "1.0" | "1.1";
  let headers: [string, string][], size: number;
  // The common case, a whole head in one read: one pass, one string.
  if (r.buffered === 0 && !(await r.fill())) return null;
  const text = r.wholeHead(budget);
  if (text !== undefined) {
    const at = text.indexOf("\r\n");
    [method, target, version] = requestLine(text.slice(0, at));
    headers = headersOf(text, at, maxHeaders, "request headers");
    size = text.length;
  } else {
    const line = r.lineNow(budget, "request line", 414) ??
      await r.line(budget, "request line", 414);
    if (line === null) return null;
    [method, target, version] = requestLine(line);
    const rest = await readHeaders(r, budget - line.length - 2, maxHeaders, "request headers");
    headers = rest.headers;
    size = line.length + 2 + rest.size;
  }
  const head: Head = { method, target, status: 0, reason: "", version, headers, size };
  const hosts = all(head, "host");
  if (hosts.length > 1 || (head.version === "1.1" && hosts.length !== 1)) {
    throw new HttpError(400, "A request needs exactly one Host header");
  }
  return head;
}

/** The next response head from the server (1xx included). */
export async function readResponseHead(r: BufReader, maxBytes = 65536): Promise<Head> {
  let version: "1.0" | "1.1", status: number, reason: string;
  let headers: [string, string][], size: number;
  if (r.buffered === 0 && !(await r.fill())) {
    throw new HttpError(502, "The server closed the connection");
  }
  const text = r.wholeHead(maxBytes);
  if (text !== undefined) {
    const at = text.indexOf("\r\n");
    [version, status, reason] = statusLine(text.slice(0, at));
    try {
      headers = headersOf(text, at, 200, "response headers");
    } catch (e) {
      throw badGateway(e);
    }
    size = text.length;
  } else {
    const line = r.lineNow(maxBytes, "status line", 502) ??
      await r.line(maxBytes, "status line", 502);
    if (line === null) throw new HttpError(502, "The server closed the connection");
    [version, status, reason] = statusLine(line);
    const rest = await readHeaders(r, maxBytes, 200, "response headers").catch((e) => {
      throw badGateway(e);
    });
    headers = rest.headers;
    size = line.length + 2 + rest.size;
  }
  return { method: "", target: "", status, reason, version, headers, size };
}
