// IP addresses and prefixes: parsing (IPv4, IPv6 with `::` and embedded IPv4), canonical text,
// containment. Bare addresses are full-length prefixes. This module is browser compatible.

export interface Prefix {
  /** 4 or 6; 0 is the engine's "either family, length 0" used for reserved:world. */
  family: 0 | 4 | 6;
  len: number;
  /** 16 bytes; IPv4 in the first 4. Host bits are zero. */
  addr: Uint8Array;
}

function parseV4(text: string): Uint8Array | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  const out = new Uint8Array(16);
  for (let i = 0; i < 4; i++) {
    const p = parts[i]!;
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return null;
    const v = Number(p);
    if (v > 255) return null;
    out[i] = v;
  }
  return out;
}

function parseV6(text: string): Uint8Array | null {
  if (!/^[0-9a-fA-F:.]+$/.test(text)) return null;
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const groups = (s: string): number[] | null => {
    if (s === "") return [];
    const out: number[] = [];
    const parts = s.split(":");
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (i === parts.length - 1 && p.includes(".")) {
        const v4 = parseV4(p);
        if (!v4) return null;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return null;
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  if (!head || !tail) return null;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const all = [...head, ...new Array<number>(missing).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    out[i * 2] = g >> 8;
    out[i * 2 + 1] = g & 0xff;
  });
  return out;
}

/** Parses an address; null when it is not one. */
export function parseAddress(text: string): { family: 4 | 6; addr: Uint8Array } | null {
  const v4 = parseV4(text);
  if (v4) return { family: 4, addr: v4 };
  const v6 = text.includes(":") ? parseV6(text) : null;
  return v6 ? { family: 6, addr: v6 } : null;
}

function maskHostBits(addr: Uint8Array, len: number): Uint8Array {
  const out = addr.slice();
  for (let bit = len; bit < 128; bit++) out[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return out;
}

/** Parses "a.b.c.d/n", "x::/n" or a bare address. Throws SyntaxError naming the text. */
export function parsePrefix(text: string): Prefix {
  const slash = text.indexOf("/");
  const addrText = slash < 0 ? text : text.slice(0, slash);
  const a = parseAddress(addrText.trim());
  if (!a) throw new SyntaxError(`Invalid IP address "${addrText}"`);
  const max = a.family === 4 ? 32 : 128;
  let len = max;
  if (slash >= 0) {
    const lenText = text.slice(slash + 1);
    if (!/^[0-9]{1,3}$/.test(lenText) || Number(lenText) > max) {
      throw new SyntaxError(`Invalid prefix length "${lenText}" in "${text}": expected 0-${max}`);
    }
    len = Number(lenText);
  }
  return { family: a.family, len, addr: maskHostBits(a.addr, len) };
}

export function isPrefix(text: string): boolean {
  try {
    parsePrefix(text);
    return true;
  } catch {
    return false;
  }
}

export function formatAddress(family: 4 | 6, addr: Uint8Array): string {
  if (family === 4) return Array.from(addr.subarray(0, 4)).join(".");
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push((addr[i * 2]! << 8) | addr[i * 2 + 1]!);
  let bestAt = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i > 1) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestAt < 0) return hex.join(":");
  return `${hex.slice(0, bestAt).join(":")}::${hex.slice(bestAt + bestLen).join(":")}`;
}

/** Canonical text: masked address and explicit length ("10.0.0.0/8", "2001:db8::/32"). */
export function formatPrefix(p: Prefix): string {
  if (p.family === 0) return "0.0.0.0/0";
  return `${formatAddress(p.family, p.addr)}/${p.len}`;
}

export function canonicalPrefix(text: string): string {
  return formatPrefix(parsePrefix(text));
}

/** True when `inner` lies inside `outer`. */
export function prefixContains(outer: Prefix, inner: Prefix): boolean {
  if (outer.family !== inner.family || inner.len < outer.len) return false;
  for (let bit = 0; bit < outer.len; bit++) {
    const m = 0x80 >> (bit & 7);
    if ((outer.addr[bit >> 3]! & m) !== (inner.addr[bit >> 3]! & m)) return false;
  }
  return true;
}

export const WORLD_PREFIX: Prefix = { family: 0, len: 0, addr: new Uint8Array(16) };
