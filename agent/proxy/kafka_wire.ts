// Kafka's primitive wire types (big-endian integers, unsigned varints, classic and compact
// strings, bytes and arrays, tagged-field sections) as a bounds-checked reader and a growing
// writer. Every read past the end or of a negative length throws KafkaWireError, so callers
// never see a partial value. It knows no message layouts (kafka_request.ts, kafka_reply.ts).

/** Bytes that do not decode as the Kafka type expected (truncated, a negative length, …). */
export class KafkaWireError extends Error {
  override name = "KafkaWireError";
}

const dec = new TextDecoder("utf-8", { fatal: true });
const enc = new TextEncoder();

export class KafkaReader {
  readonly #v: DataView;
  readonly #b: Uint8Array;
  pos = 0;

  constructor(b: Uint8Array) {
    this.#b = b;
    this.#v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }

  get left(): number {
    return this.#b.length - this.pos;
  }

  #need(n: number, what: string): number {
    if (n < 0 || this.pos + n > this.#b.length) {
      throw new KafkaWireError(`Truncated ${what} at byte ${this.pos}: ${n} bytes expected`);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }

  i8(): number {
    return this.#v.getInt8(this.#need(1, "int8"));
  }
  i16(): number {
    return this.#v.getInt16(this.#need(2, "int16"));
  }
  i32(): number {
    return this.#v.getInt32(this.#need(4, "int32"));
  }
  i64(): bigint {
    return this.#v.getBigInt64(this.#need(8, "int64"));
  }
  skip(n: number, what = "field"): void {
    this.#need(n, what);
  }

  uvarint(): number {
    let v = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      const b = this.#b[this.#need(1, "varint")]!;
      v += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) {
        if (v > 0xffffffff) break;
        return v;
      }
    }
    throw new KafkaWireError(`Invalid unsigned varint at byte ${this.pos}`);
  }

  #text(n: number, what: string): string {
    const at = this.#need(n, what);
    try {
      return dec.decode(this.#b.subarray(at, at + n));
    } catch {
      throw new KafkaWireError(`Invalid UTF-8 in ${what} at byte ${at}`);
    }
  }

  /** A string (int16 length, or compact: uvarint length + 1); null only where nullable. */
  string(compact: boolean, nullable = false): string | null {
    const n = compact ? this.uvarint() - 1 : this.i16();
    if (n === -1 && nullable) return null;
    if (n < 0) throw new KafkaWireError(`Invalid string length ${n} at byte ${this.pos}`);
    return this.#text(n, "string");
  }

  /** Bytes or records (int32 length, or compact: uvarint length + 1); null for null. */
  bytes(compact: boolean): Uint8Array | null {
    const n = compact ? this.uvarint() - 1 : this.i32();
    if (n === -1) return null;
    if (n < 0) throw new KafkaWireError(`Invalid bytes length ${n} at byte ${this.pos}`);
    const at = this.#need(n, "bytes");
    return this.#b.subarray(at, at + n);
  }

  /** An array's element count (int32, or compact: uvarint + 1); -1 for a null array. */
  arrayLength(compact: boolean, nullable = false): number {
    const n = compact ? this.uvarint() - 1 : this.i32();
    if (n === -1 && nullable) return -1;
    if (n < 0) throw new KafkaWireError(`Invalid array length ${n} at byte ${this.pos}`);
    // Every element takes at least one byte: a count beyond the bytes left is a lie.
    if (n > this.left) throw new KafkaWireError(`Array of ${n} elements in ${this.left} bytes`);
    return n;
  }

  /** Skips a tagged-field section (flexible versions only): tags strictly ascending. */
  skipTags(): void {
    const n = this.uvarint();
    // Every tagged field takes at least two bytes (tag, size): a count beyond that is a lie.
    if (n > this.left / 2) throw new KafkaWireError(`${n} tagged fields in ${this.left} bytes`);
    for (let i = 0, last = -1; i < n; i++) {
      const tag = this.uvarint();
      if (tag <= last) throw new KafkaWireError(`Tagged field ${tag} out of order after ${last}`);
      last = tag;
      this.skip(this.uvarint(), "tagged field");
    }
  }
}

export class KafkaWriter {
  #b = new Uint8Array(64);
  #v = new DataView(this.#b.buffer);
  #n = 0;

  #room(n: number): number {
    if (this.#n + n > this.#b.length) {
      const b = new Uint8Array(Math.max(this.#b.length * 2, this.#n + n));
      b.set(this.#b.subarray(0, this.#n));
      this.#b = b;
      this.#v = new DataView(b.buffer);
    }
    const at = this.#n;
    this.#n += n;
    return at;
  }

  i8(x: number): this {
    const at = this.#room(1);
    this.#v.setInt8(at, x);
    return this;
  }
  i16(x: number): this {
    const at = this.#room(2);
    this.#v.setInt16(at, x);
    return this;
  }
  i32(x: number): this {
    const at = this.#room(4);
    this.#v.setInt32(at, x);
    return this;
  }
  i64(x: bigint): this {
    const at = this.#room(8);
    this.#v.setBigInt64(at, x);
    return this;
  }
  bytes(b: Uint8Array): this {
    const at = this.#room(b.length);
    this.#b.set(b, at);
    return this;
  }
  uvarint(x: number): this {
    while (x >= 0x80) {
      const at = this.#room(1);
      this.#b[at] = (x & 0x7f) | 0x80;
      x = Math.floor(x / 128);
    }
    const at = this.#room(1);
    this.#b[at] = x;
    return this;
  }
  string(s: string | null, compact: boolean): this {
    if (s === null) return compact ? this.uvarint(0) : this.i16(-1);
    const b = enc.encode(s);
    (compact ? this.uvarint(b.length + 1) : this.i16(b.length)).bytes(b);
    return this;
  }
  /** An array length (compact: + 1; -1 writes a null array). */
  array(n: number, compact: boolean): this {
    return compact ? this.uvarint(n + 1) : this.i32(n);
  }
  /** An empty tagged-field section, in flexible versions only. */
  tags(flexible: boolean): this {
    return flexible ? this.uvarint(0) : this;
  }

  get length(): number {
    return this.#n;
  }

  /** The bytes written, with an int32 size prefix when `framed`. */
  finish(framed = false): Uint8Array {
    if (!framed) return this.#b.slice(0, this.#n);
    const out = new Uint8Array(this.#n + 4);
    new DataView(out.buffer).setInt32(0, this.#n);
    out.set(this.#b.subarray(0, this.#n), 4);
    return out;
  }
}
