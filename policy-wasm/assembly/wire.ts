// The engine side of the binary snapshot format: a bounds-checked reader over the host's input
// buffer and a growable writer for results. Every message starts with MAGIC and VERSION; the
// TypeScript mirror is policy-wasm/src/wire.ts. A truncated or malformed message sets `failed`
// instead of trapping, and the caller returns a status. The reader never reads past the input
// buffer, whatever length the host claims, and a length or count that does not fit in the rest of
// the message (a "huge" u32 included) fails the message.

import { inputLen, inputPtr, outputBytes } from "./io";

export const MAGIC: u32 = 0x50494c43; // "CLIP" read as little-endian u32
export const VERSION: u16 = 2;
export const ABSENT: u32 = 0xffffffff;

export const ST_OK: i32 = 0;
export const ST_BAD_HEADER: i32 = -1;
export const ST_TRUNCATED: i32 = -2;
export const ST_BAD_REGEX: i32 = -3;
export const ST_UNKNOWN_ENDPOINT: i32 = -4;
export const ST_BAD_VALUE: i32 = -5;
export const ST_L7_CONFLICT: i32 = -6;

export class Reader {
  pos: i32 = 0;
  failed: bool = false;
  constructor(public base: usize, public len: i32) {}

  static fromInput(len: i32): Reader {
    return new Reader(inputPtr(), inputLen(len));
  }

  /** Reads the header; false when magic, version or message type do not match. */
  header(msgType: u16): bool {
    if (this.u32() != MAGIC) return false;
    if (this.u16() != VERSION) return false;
    return this.u16() == msgType && !this.failed;
  }

  private need(n: i32): bool {
    // n < 0 is a u32 length of 2^31 or more read as i32: it never fits.
    if (this.failed || n < 0 || n > this.len - this.pos) {
      this.failed = true;
      return false;
    }
    return true;
  }

  u8(): u8 {
    if (!this.need(1)) return 0;
    const v = load<u8>(this.base + <usize> this.pos);
    this.pos += 1;
    return v;
  }

  u16(): u16 {
    if (!this.need(2)) return 0;
    const v = load<u16>(this.base + <usize> this.pos);
    this.pos += 2;
    return v;
  }

  u32(): u32 {
    if (!this.need(4)) return 0;
    const v = load<u32>(this.base + <usize> this.pos);
    this.pos += 4;
    return v;
  }

  i32(): i32 {
    return <i32> this.u32();
  }

  /** A count that must fit in the rest of the message (each item at least `minItem` bytes). */
  count(minItem: i32): i32 {
    const n = this.u32();
    if (this.failed) return 0;
    if (n > <u32> ((this.len - this.pos) / (minItem > 0 ? minItem : 1))) {
      this.failed = true;
      return 0;
    }
    return <i32> n;
  }

  /** A UTF-8 string (u32 length, bytes); null when the length is ABSENT. */
  str(): string | null {
    const n = this.u32();
    if (n == ABSENT) return null;
    if (!this.need(<i32> n)) return null;
    const s = String.UTF8.decodeUnsafe(this.base + <usize> this.pos, <usize> n, false);
    this.pos += <i32> n;
    return s;
  }

  /** Like str() but an absent string reads as "". */
  strOrEmpty(): string {
    const s = this.str();
    return s === null ? "" : s;
  }

  bytes(n: i32): usize {
    if (!this.need(n)) return 0;
    const p = this.base + <usize> this.pos;
    this.pos += n;
    return p;
  }
}

export class Writer {
  buf: ArrayBuffer = new ArrayBuffer(1024);
  len: i32 = 0;

  private grow(n: i32): void {
    if (this.len + n <= this.buf.byteLength) return;
    let cap = this.buf.byteLength;
    while (cap < this.len + n) cap <<= 1;
    const next = new ArrayBuffer(cap);
    memory.copy(changetype<usize>(next), changetype<usize>(this.buf), <usize> this.len);
    this.buf = next;
  }

  /** Makes room for `n` more bytes (written at end() by the caller, who then adds n to len). */
  reserve(n: i32): void {
    this.grow(n);
  }

  /** Where the next byte goes (valid until the next write that grows the buffer). */
  end(): usize {
    return changetype<usize>(this.buf) + <usize> this.len;
  }

  u8(v: u32): void {
    this.grow(1);
    store<u8>(changetype<usize>(this.buf) + <usize> this.len, <u8> v);
    this.len += 1;
  }

  u16(v: u32): void {
    this.grow(2);
    store<u16>(changetype<usize>(this.buf) + <usize> this.len, <u16> v);
    this.len += 2;
  }

  u32(v: u32): void {
    this.grow(4);
    store<u32>(changetype<usize>(this.buf) + <usize> this.len, v);
    this.len += 4;
  }

  i32(v: i32): void {
    this.u32(<u32> v);
  }

  /** Overwrites a u32 written earlier (for counts known only at the end). */
  patchU32(at: i32, v: u32): void {
    store<u32>(changetype<usize>(this.buf) + <usize> at, v);
  }

  str(s: string): void {
    const n = String.UTF8.byteLength(s, false);
    this.u32(<u32> n);
    this.grow(n);
    String.UTF8.encodeUnsafe(
      changetype<usize>(s),
      s.length,
      changetype<usize>(this.buf) + <usize> this.len,
      false,
    );
    this.len += n;
  }

  flush(): void {
    outputBytes(this.buf, this.len);
  }
}
