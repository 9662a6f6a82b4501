/**
 * Byte-level mutations of engine messages: bit flips, interesting values (huge counts and string
 * lengths, negative numbers), truncation, extension, splicing, bad magic/version/type, and
 * wholly random messages. Each returns a new array and a short description for failure reports.
 */

import type { Rand } from "./_rand.ts";

const INTERESTING_U32 = [
  0xffffffff,
  0xfffffffe,
  0x7fffffff,
  0x80000000,
  0x80000001,
  0x40000000,
  0x3fffffff,
  0x10000,
  0xffff,
  0x1000000,
  0x100,
  0xff,
  0x81,
  0x80,
  0x21,
  0x20,
  0x11,
  0x10,
  0x7,
  0x6,
  0x4,
  0x2,
  0x1,
  0x0,
];
const INTERESTING_U8 = [0, 1, 2, 3, 4, 6, 17, 32, 33, 58, 127, 128, 129, 132, 200, 255];

const MAGIC = [0x43, 0x4c, 0x49, 0x50];

function setU32(b: Uint8Array, at: number, v: number): void {
  for (let i = 0; i < 4 && at + i < b.length; i++) b[at + i] = (v >>> (8 * i)) & 0xff;
}

type Mutator = (r: Rand, b: Uint8Array, others: readonly Uint8Array[]) => [Uint8Array, string];

const MUTATORS: Mutator[] = [
  (r, b) => {
    const out = b.slice();
    const n = r.range(1, 8);
    for (let i = 0; i < n && out.length > 0; i++) out[r.int(out.length)]! ^= 1 << r.int(8);
    return [out, `flip ${n} bits`];
  },
  (r, b) => {
    const out = b.slice();
    if (out.length === 0) return [out, "nothing"];
    const at = r.int(out.length);
    out[at] = r.pick(INTERESTING_U8);
    return [out, `byte@${at}=${out[at]}`];
  },
  (r, b) => {
    const out = b.slice();
    if (out.length < 4) return [out, "nothing"];
    // Counts and lengths are u32s; hit them aligned to the header and anywhere at all.
    const at = r.chance(0.5)
      ? 8 + 4 * r.int(Math.max(1, (out.length - 8) >> 2))
      : r.int(out.length);
    const v = r.chance(0.8) ? r.pick(INTERESTING_U32) : r.u32();
    setU32(out, at, v);
    return [out, `u32@${at}=0x${v.toString(16)}`];
  },
  (r, b) => {
    const n = r.int(b.length + 1);
    return [b.slice(0, n), `truncate to ${n}`];
  },
  (r, b) => {
    const extra = r.bytes(r.range(1, 64));
    const out = new Uint8Array(b.length + extra.length);
    out.set(b);
    out.set(extra, b.length);
    return [out, `append ${extra.length}`];
  },
  (r, b) => {
    // Remove or duplicate a slice in the middle.
    if (b.length < 2) return [b.slice(), "nothing"];
    const at = r.int(b.length), n = r.range(1, Math.min(32, b.length - at));
    if (r.chance(0.5)) {
      return [new Uint8Array([...b.subarray(0, at), ...b.subarray(at + n)]), `cut ${n}@${at}`];
    }
    const piece = b.subarray(at, at + n);
    return [new Uint8Array([...b.subarray(0, at), ...piece, ...b.subarray(at)]), `dup ${n}@${at}`];
  },
  (r, b, others) => {
    const o = r.pick(others);
    const a = r.int(b.length + 1), c = r.int(o.length + 1);
    return [new Uint8Array([...b.subarray(0, a), ...o.subarray(c)]), `splice ${a}/${c}`];
  },
  (r, b) => {
    const out = b.slice();
    const which = r.int(3);
    if (which === 0) out[r.int(Math.min(4, out.length) || 1)] = r.int(256);
    else if (which === 1 && out.length >= 6) out[4] = r.pick([0, 2, 255]);
    else if (out.length >= 8) out[6] = r.pick([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255]);
    return [out, `header ${which}`];
  },
  (r) => {
    const body = r.bytes(r.int(96));
    if (r.chance(0.5)) return [body, "random"];
    const out = new Uint8Array(8 + body.length);
    out.set(MAGIC);
    out[4] = 1;
    out[6] = r.range(1, 8);
    out.set(body, 8);
    return [out, `random with header type ${out[6]}`];
  },
];

/** One to three mutations of `seed`; `others` are splice partners. */
export function mutateBytes(
  r: Rand,
  seed: Uint8Array,
  others: readonly Uint8Array[],
): [Uint8Array, string] {
  let out = seed;
  const what: string[] = [];
  const n = r.range(1, 3);
  for (let i = 0; i < n; i++) {
    const [next, desc] = r.pick(MUTATORS)(r, out, others);
    out = next;
    what.push(desc);
  }
  return [out, what.join(", ")];
}
