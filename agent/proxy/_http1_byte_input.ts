// The bytes of one direction of an HTTP/1.1 leg not yet parsed, for the synchronous readers
// (http1_sync.ts's HeadReader, _http1_body_reader.ts's BodyReader): a view of the caller's reused
// read buffer while it is parsed in place, and only what a push leaves unparsed copied into a
// buffer of its own (grown as needed, never shrunk). It parses nothing; separate because both
// readers share one input per leg and this buffer discipline is the one place bytes are copied.
// This module is browser compatible.

export const EMPTY = new Uint8Array(0);

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
