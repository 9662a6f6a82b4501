// The DNS proxy's hot-path reader (dns_message.ts): what a query and its answer must say, read in
// place on the wire, without decoding the whole message into objects (npm `dns-packet` made about
// 4 KB of garbage per query, and the Worker's scavenges stalled queries). It walks every section
// of a message to check its structure, compares names label by label, and finds the question, the
// CNAME chain and its A/AAAA records; only the results it hands back (names and addresses as
// strings) allocate. It owns no socket and decides nothing; dns_message.ts turns its findings into
// a DnsQuery or DnsAnswer and keeps `dns-packet` for the responses the proxy makes itself.
//
// Rules (fail closed: a message that breaks one is not read at all):
// 1. A name is labels of 1–63 bytes or a compression pointer; a pointer must point before the
//    start of the labels it continues (so every walk ends: no loops, no forward pointers), and a
//    name is at most 255 bytes in all; any other length byte (0x40, 0x80) is malformed.
// 2. Every record of every section lies within the message: its name, its 10 fixed bytes and its
//    RDLENGTH bytes of data. An A record's data is exactly 4 bytes, an AAAA's 16, and a CNAME's
//    data is exactly one name (so a record cannot be read two ways).
// 3. Names are equal when their labels are, byte for byte, ASCII letters compared without case (a
//    label that holds a dot never equals two labels).

/** Where the records of a message's answer section start, and where their owner names end. */
const MAX_RECORDS = Math.ceil(65536 / 11);
const answerAt = new Int32Array(MAX_RECORDS), answerEnd = new Int32Array(MAX_RECORDS);
export const TYPE_A = 1, TYPE_CNAME = 5, TYPE_AAAA = 28;

/** Where the name at `off` ends in place (after its zero byte or its pointer), or -1 (rule 1). */
export function nameEnd(b: Uint8Array, off: number): number {
  let end = -1, total = 1, start = off;
  for (;;) {
    if (off >= b.length) return -1;
    const len = b[off]!;
    if (len === 0) return end < 0 ? off + 1 : end;
    if (len < 64) {
      total += len + 1;
      if (total > 255 || off + 1 + len > b.length) return -1;
      off += 1 + len;
    } else if (len >= 0xc0) {
      if (off + 1 >= b.length) return -1;
      const to = ((len & 0x3f) << 8) | b[off + 1]!;
      if (to >= start) return -1;
      if (end < 0) end = off + 2;
      off = start = to;
    } else return -1;
  }
}

/** The offset of the next label's length byte at `off`, pointers followed (`off` is valid). */
function label(b: Uint8Array, off: number): number {
  while (b[off]! >= 0xc0) off = ((b[off]! & 0x3f) << 8) | b[off + 1]!;
  return off;
}

const lower = (c: number) => (c >= 0x41 && c <= 0x5a ? c | 0x20 : c);

/** Rule 3, for names already checked by nameEnd(). */
export function sameName(a: Uint8Array, ao: number, b: Uint8Array, bo: number): boolean {
  for (;;) {
    ao = label(a, ao);
    bo = label(b, bo);
    const len = a[ao]!;
    if (len !== b[bo]!) return false;
    if (len === 0) return true;
    for (let i = 1; i <= len; i++) if (lower(a[ao + i]!) !== lower(b[bo + i]!)) return false;
    ao += 1 + len;
    bo += 1 + len;
  }
}

/** Is the checked name at `off` all in place (no compression pointer in it)? */
export function inPlace(b: Uint8Array, off: number): boolean {
  for (let len = b[off]!; len !== 0; len = b[off]!) {
    if (len >= 64) return false;
    off += 1 + len;
  }
  return true;
}

/** Is every label of the checked name at `off` made of [-a-zA-Z0-9_]? */
export function plainName(b: Uint8Array, off: number): boolean {
  for (;;) {
    off = label(b, off);
    const len = b[off]!;
    if (len === 0) return true;
    for (let i = 1; i <= len; i++) {
      const c = lower(b[off + i]!);
      const ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f;
      if (!ok) return false;
    }
    off += 1 + len;
  }
}

const scratch = new Uint8Array(256);
const latin1 = new TextDecoder("latin1");
/**
 * Names read before, by a hash of their text (direct-mapped, 256 slots): a name asked again
 * (the common case) costs no new string.
 */
const cachedText: string[] = [];
const cachedBytes: Uint8Array[] = [];
const cachedLen = new Int32Array(256);

/** The checked name at `off` in FQDN form (lower case, trailing dot); "." for the root. */
export function nameText(b: Uint8Array, off: number): string {
  let n = 0, h = 0x811c9dc5;
  for (;;) {
    off = label(b, off);
    const len = b[off]!;
    if (len === 0) break;
    for (let i = 1; i <= len; i++) {
      const c = lower(b[off + i]!);
      scratch[n++] = c;
      h = Math.imul(h ^ c, 0x01000193);
    }
    scratch[n++] = 0x2e;
    off += 1 + len;
  }
  if (n === 0) return ".";
  const slot = (h ^ (h >>> 16)) & 0xff, cached = cachedBytes[slot];
  if (cached !== undefined && cachedLen[slot] === n) {
    let i = 0;
    while (i < n && cached[i] === scratch[i]) i++;
    if (i === n) return cachedText[slot]!;
  }
  const text = latin1.decode(scratch.subarray(0, n));
  (cachedBytes[slot] ??= new Uint8Array(256)).set(scratch.subarray(0, n));
  cachedLen[slot] = n;
  cachedText[slot] = text;
  return text;
}

/** What checkMessage() found: the header's fields and where the sections start. */
export interface Wire {
  id: number;
  flags: number;
  qdcount: number;
  /** The first question's name, type and class (when qdcount ≥ 1). */
  qname: number;
  qtype: number;
  qclass: number;
  ancount: number;
}

const u16 = (b: Uint8Array, o: number) => (b[o]! << 8) | b[o + 1]!;

/** Checks the header and every section (rules 1 and 2); undefined when malformed. */
export function checkMessage(b: Uint8Array): Wire | undefined {
  if (b.length < 12) return undefined;
  const w: Wire = {
    id: u16(b, 0),
    flags: u16(b, 2),
    qdcount: u16(b, 4),
    qname: 12,
    qtype: 0,
    qclass: 0,
    ancount: u16(b, 6),
  };
  let off = 12;
  for (let i = 0; i < w.qdcount; i++) {
    const end = nameEnd(b, off);
    if (end < 0 || end + 4 > b.length) return undefined;
    if (i === 0) {
      w.qtype = u16(b, end);
      w.qclass = u16(b, end + 2);
    }
    off = end + 4;
  }
  const records = w.ancount + u16(b, 8) + u16(b, 10);
  if (w.ancount > MAX_RECORDS) return undefined;
  for (let i = 0; i < records; i++) {
    const end = nameEnd(b, off);
    if (end < 0 || end + 10 > b.length) return undefined;
    if (i < w.ancount) {
      answerAt[i] = off;
      answerEnd[i] = end;
    }
    const type = u16(b, end), data = end + 10, len = u16(b, end + 8);
    if (data + len > b.length) return undefined;
    if (type === TYPE_A && len !== 4) return undefined;
    if (type === TYPE_AAAA && len !== 16) return undefined;
    if (type === TYPE_CNAME && nameEnd(b, data) !== data + len) return undefined;
    off = data + len;
  }
  return w;
}

/** Answer record `i` of the message last checked: its owner name, type, TTL and data offset. */
export const answerOwner = (i: number): number => answerAt[i]!;
export const answerType = (b: Uint8Array, i: number): number =>
  (b[answerEnd[i]!]! << 8) | b[answerEnd[i]! + 1]!;
export function answerTtl(b: Uint8Array, i: number): number {
  const o = answerEnd[i]! + 4;
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}
export const answerData = (i: number): number => answerEnd[i]! + 10;
/** Whether answer record `i` is of class IN (a resolver ignores the others for an IN question). */
export const answerIsIn = (b: Uint8Array, i: number): boolean =>
  b[answerEnd[i]! + 2] === 0 && b[answerEnd[i]! + 3] === 1;

/** The address in an A (4 bytes) or AAAA (16 bytes) record's data, as `dns-packet` writes it. */
export function addressText(b: Uint8Array, off: number, v6: boolean): string {
  if (!v6) return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
  let s = "";
  for (let i = 0; i < 16; i += 2) {
    s += (i ? ":" : "") + ((b[off + i]! << 8) | b[off + i + 1]!).toString(16);
  }
  return s.replace(/(^|:)0(:0)*:0(:|$)/, "$1::$3").replace(/:{3,4}/, "::");
}
