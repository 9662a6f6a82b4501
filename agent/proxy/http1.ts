// Strict HTTP/1.1 message heads and body framing for the L7 proxy (RFC 9112). Requests are parsed
// as a server must to stop smuggling: CRLF only (a bare LF or CR is an error), no obs-fold, no
// whitespace before a header's colon, token methods and names, one decimal Content-Length,
// Transfer-Encoding only `chunked` and never together with Content-Length, Host required for
// 1.1, a size cap (431). Every error carries the status the proxy answers with. Responses from
// the server are parsed for framing only. It reads through `BufReader`, which holds at most one
// head plus one read, so memory per connection is bounded. This module is browser compatible.

export class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export interface Head {
  /** Request: method; response: "". */
  method: string;
  /** Request: the target as sent; response: "". */
  target: string;
  /** 0 for a request. */
  status: number;
  reason: string;
  version: "1.0" | "1.1";
  /** In order, names as sent. */
  headers: [string, string][];
  /** The bytes the head took on the wire. */
  size: number;
}

export type Framing =
  | { kind: "none" }
  | { kind: "length"; length: number }
  | { kind: "chunked" }
  | {
    kind: "close";
  };

const CR = 13, LF = 10;
const TCHAR = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

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

/**
 * Where the CRLF-terminated line that starts at `o.from` ends (the index after its LF) in
 * b[from, end), or -1 when no LF is there yet (bytes before `o.scanned` are known to hold none).
 * A bare LF or CR is an error (400), and so is a line with no LF yet longer than `o.max` bytes
 * (`o.tooLong`): BufReader.lineNow()'s checks on any buffer.
 */
export function lineEnd(
  b: Uint8Array,
  o: { from: number; end: number; scanned: number; max: number; what: string; tooLong: number },
): number {
  const { from, what } = o;
  for (let i = Math.max(o.scanned, from); i < o.end; i++) {
    if (b[i] !== LF) continue;
    if (i === from || b[i - 1] !== CR) throw new HttpError(400, `Bare LF in ${what}`);
    for (let j = from; j < i - 1; j++) {
      if (b[j] === CR) throw new HttpError(400, `Bare CR in ${what}`);
    }
    return i + 1;
  }
  if (o.end - from > o.max) throw new HttpError(o.tooLong, `${what} longer than ${o.max} bytes`);
  return -1;
}

/**
 * Where a whole head (through its empty line) that starts at `from` ends in b[from, end), when it
 * is there within `max` bytes, plain ASCII, every CR and LF paired as CRLF; else -1 (the line by
 * line path then reads it, with its precise errors): BufReader.wholeHead()'s scan.
 */
export function wholeHeadEnd(b: Uint8Array, from: number, end: number, max: number): number {
  const n = Math.min(end, from + max);
  for (let i = from; i < n; i++) {
    const c = b[i]!;
    if (c >= 0x80) return -1;
    if (c === CR && (i + 1 >= end || b[i + 1] !== LF)) return -1;
    if (c !== LF) continue;
    if (i === from || b[i - 1] !== CR) return -1;
    if (i >= from + 3 && b[i - 2] === LF) return i + 1;
  }
  return -1;
}

const ascii = new TextDecoder();

export function latin1(b: Uint8Array): string {
  // Nearly every head is ASCII, which UTF-8 decodes byte for byte (5x faster than the spread).
  let i = 0;
  while (i < b.length && b[i]! < 0x80) i++;
  if (i === b.length) return ascii.decode(b);
  let s = "";
  for (let i = 0; i < b.length; i += 4096) {
    s += String.fromCharCode(...b.subarray(i, i + 4096));
  }
  return s;
}

export const encodeLatin1 = (s: string): Uint8Array => {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
};

function validValue(v: string): boolean {
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if ((c < 32 && c !== 9) || c === 127) return false;
  }
  return true;
}

/** One header line (not the empty one) checked and added to `headers`. */
export function headerLine(
  line: string,
  headers: [string, string][],
  max: number,
  what: string,
): void {
  if (line[0] === " " || line[0] === "\t") throw new HttpError(400, "Obsolete line folding");
  const colon = line.indexOf(":");
  const name = colon < 0 ? "" : line.slice(0, colon);
  if (!TCHAR.test(name)) throw new HttpError(400, `Invalid header line in ${what}`);
  let from = colon + 1, to = line.length;
  while (from < to && (line.charCodeAt(from) === 32 || line.charCodeAt(from) === 9)) from++;
  while (to > from && (line.charCodeAt(to - 1) === 32 || line.charCodeAt(to - 1) === 9)) to--;
  const value = line.slice(from, to);
  if (!validValue(value)) throw new HttpError(400, `Invalid value of header "${name}"`);
  headers.push([name, value]);
  if (headers.length > max) throw new HttpError(431, `More than ${max} header fields`);
}

/** The header lines of a whole head's text after its first line (which ends at `at`). */
export function headersOf(text: string, at: number, max: number, what: string): [string, string][] {
  const headers: [string, string][] = [];
  for (;;) {
    const from = at + 2;
    at = text.indexOf("\r\n", from);
    if (at === from) return headers;
    headerLine(text.slice(from, at), headers, max, what);
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

/** A request line's method, target and version (errors: 400, 505). */
export function requestLine(line: string): [string, string, "1.0" | "1.1"] {
  const m = /^([^ ]+) ([^ ]+) HTTP\/(\d)\.(\d)$/.exec(line);
  if (!m || !TCHAR.test(m[1]!)) throw new HttpError(400, "Malformed request line");
  if (m[3] !== "1" || (m[4] !== "0" && m[4] !== "1")) {
    throw new HttpError(505, `HTTP version ${m[3]}.${m[4]} is not supported`);
  }
  return [m[1]!, m[2]!, m[4] === "1" ? "1.1" : "1.0"];
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

/** A status line's version, status and reason (error: 502). */
export function statusLine(line: string): ["1.0" | "1.1", number, string] {
  const m = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(line);
  if (!m) throw new HttpError(502, "Malformed status line from the server");
  return [m[1] === "1" ? "1.1" : "1.0", Number(m[2]), m[3] ?? ""];
}

export const badGateway = (e: unknown) =>
  e instanceof HttpError ? new HttpError(502, e.message) : e;

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

export function all(h: Head, name: string): string[] {
  const out: string[] = [];
  for (const [n, v] of h.headers) {
    // The length first: most names differ in it, and lower-casing each one allocates.
    if (n.length === name.length && n.toLowerCase() === name) out.push(v);
  }
  return out;
}

export function first(h: Head, name: string): string | undefined {
  return all(h, name)[0];
}

/** Whether the connection may carry another message after this one. */
export function keepAlive(h: Head): boolean {
  const tokens = all(h, "connection").flatMap((v) => v.toLowerCase().split(/\s*,\s*/));
  if (tokens.includes("close")) return false;
  return h.version === "1.1" || tokens.includes("keep-alive");
}

/** Body framing of a request (RFC 9112 §6.3); smuggling-shaped heads are errors. */
export function requestFraming(h: Head): Framing {
  const te = all(h, "transfer-encoding");
  const cl = all(h, "content-length");
  if (te.length > 0 && cl.length > 0) {
    throw new HttpError(400, "Both Transfer-Encoding and Content-Length");
  }
  if (te.length > 0) {
    if (h.version === "1.0") throw new HttpError(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (te.length !== 1 || te[0]!.toLowerCase() !== "chunked") {
      throw new HttpError(501, `Transfer-Encoding "${te.join(", ")}" is not supported`);
    }
    return { kind: "chunked" };
  }
  if (cl.length > 1) throw new HttpError(400, "More than one Content-Length");
  if (cl.length === 1) {
    if (!/^\d{1,15}$/.test(cl[0]!)) throw new HttpError(400, "Invalid Content-Length");
    const length = Number(cl[0]);
    return length === 0 ? { kind: "none" } : { kind: "length", length };
  }
  return { kind: "none" };
}

/** Body framing of a response to a request with this method. */
export function responseFraming(h: Head, method: string): Framing {
  if (method === "HEAD" || h.status < 200 || h.status === 204 || h.status === 304) {
    return { kind: "none" };
  }
  const te = all(h, "transfer-encoding");
  if (te.length > 0) {
    const last = te.join(",").split(",").pop()!.trim().toLowerCase();
    return last === "chunked" ? { kind: "chunked" } : { kind: "close" };
  }
  const cl = all(h, "content-length");
  if (cl.length > 0) {
    if (cl.some((v) => v !== cl[0]) || !/^\d{1,15}$/.test(cl[0]!)) {
      throw new HttpError(502, "Invalid Content-Length from the server");
    }
    return { kind: "length", length: Number(cl[0]) };
  }
  return { kind: "close" };
}

/** Serialises a head (the request line with `target`, or the status line). */
export function serializeHead(h: Head, target?: string): Uint8Array {
  const start = h.status === 0
    ? `${h.method} ${target ?? h.target} HTTP/${h.version}`
    : `HTTP/${h.version} ${h.status} ${h.reason}`;
  const lines = [start, ...h.headers.map(([n, v]) => `${n}: ${v}`), "", ""];
  return encodeLatin1(lines.join("\r\n"));
}
