// The TypeScript side of the engine's binary message format (mirror of
// policy-wasm/assembly/wire.ts, messages.ts and load.ts): encoders for rules, identities,
// endpoints, ipcache updates and queries, and a reader for results. Little-endian; strings are
// u32 length + UTF-8 (length 0xffffffff = absent). This module is browser compatible.

import { parsePrefix, type Prefix } from "./cidr.ts";

export const MAGIC = 0x50494c43;
export const VERSION = 2;
export const ABSENT = 0xffffffff;

export const MSG = {
  RULES: 1,
  IDENTITIES: 2,
  IDENTITIES_REMOVE: 3,
  ENDPOINTS: 4,
  IPCACHE: 5,
  QUERY: 6,
  IP_LOOKUP: 7,
  ENDPOINTS_UPDATE: 9,
} as const;

const encoder = new TextEncoder();

export class ByteWriter {
  #buf = new Uint8Array(1024);
  #view = new DataView(this.#buf.buffer);
  #len = 0;

  constructor(msgType?: number) {
    if (msgType !== undefined) {
      this.u32(MAGIC);
      this.u16(VERSION);
      this.u16(msgType);
    }
  }

  #grow(n: number): void {
    if (this.#len + n <= this.#buf.length) return;
    let cap = this.#buf.length * 2;
    while (cap < this.#len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.#buf.subarray(0, this.#len));
    this.#buf = next;
    this.#view = new DataView(next.buffer);
  }

  u8(v: number): this {
    this.#grow(1);
    this.#view.setUint8(this.#len, v);
    this.#len += 1;
    return this;
  }

  u16(v: number): this {
    this.#grow(2);
    this.#view.setUint16(this.#len, v, true);
    this.#len += 2;
    return this;
  }

  u32(v: number): this {
    this.#grow(4);
    this.#view.setUint32(this.#len, v >>> 0, true);
    this.#len += 4;
    return this;
  }

  i32(v: number): this {
    this.#grow(4);
    this.#view.setInt32(this.#len, v, true);
    this.#len += 4;
    return this;
  }

  str(s: string | undefined | null): this {
    if (s === undefined || s === null) return this.u32(ABSENT);
    const bytes = encoder.encode(s);
    this.u32(bytes.length);
    this.#grow(bytes.length);
    this.#buf.set(bytes, this.#len);
    this.#len += bytes.length;
    return this;
  }

  prefix(p: Prefix): this {
    this.u8(p.family).u8(p.len);
    this.#grow(16);
    this.#buf.set(p.addr, this.#len);
    this.#len += 16;
    return this;
  }

  /** A prefix from text ("10.0.0.0/8", "2001:db8::1"); a bare address is a full-length prefix. */
  prefixText(text: string): this {
    return this.prefix(parsePrefix(text));
  }

  list<T>(items: readonly T[], each: (item: T) => void): this {
    this.u32(items.length);
    for (const item of items) each(item);
    return this;
  }

  bytes(): Uint8Array {
    return this.#buf.slice(0, this.#len);
  }
}

const decoder = new TextDecoder();

export class ByteReader {
  #view: DataView;
  #bytes: Uint8Array;
  pos = 0;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  u8(): number {
    return this.#view.getUint8(this.pos++);
  }

  u16(): number {
    const v = this.#view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }

  u32(): number {
    const v = this.#view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  i32(): number {
    const v = this.#view.getInt32(this.pos, true);
    this.pos += 4;
    return v;
  }

  str(): string {
    const n = this.u32();
    const s = decoder.decode(this.#bytes.subarray(this.pos, this.pos + n));
    this.pos += n;
    return s;
  }

  i32List(): number[] {
    const n = this.u32();
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(this.i32());
    return out;
  }
}
