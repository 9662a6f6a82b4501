// One message body read synchronously for the proxy's Worker path (see http1_sync.ts), streamed
// by its framing as body.ts's copyBody does, with the same errors: Content-Length bytes as they
// come, chunked decoded strictly and re-encoded canonically, "close" until the end of the input.
// It owns only the framing's progress (bytes left, the chunked parser's state) and hands each
// piece on as a view, copying nothing; separate from the head reader because a body's framing is
// decided from the head and then read on its own. This module is browser compatible.

import { type Framing, HttpError, latin1, lineEnd } from "./http1.ts";
import type { ByteInput } from "./_http1_byte_input.ts";

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
