// Parses the textual addresses the datapath API accepts (IPv4, IPv6, CIDR prefixes, MACs) into
// the byte forms the BPF maps use, and formats them back. Pure; no I/O.

export interface ParsedPrefix {
  family: 4 | 6;
  /** 16 bytes; IPv4 in the first 4. */
  addr: Uint8Array;
  prefixLen: number;
}

export function parseIPv4(text: string): Uint8Array | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i]!;
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return undefined;
    out[i] = Number(p);
  }
  return out;
}

export function parseIPv6(text: string): Uint8Array | undefined {
  let s = text;
  const dot = /(^|:)(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (dot) {
    const b = parseIPv4(dot[2]!);
    if (!b) return undefined;
    const hi = ((b[0]! << 8) | b[1]!).toString(16), lo = ((b[2]! << 8) | b[3]!).toString(16);
    s = s.slice(0, s.length - dot[2]!.length) + `${hi}:${lo}`;
  }
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  const parse = (h: string) => h === "" ? [] : h.split(":");
  const head = parse(halves[0]!), rest = halves.length === 2 ? parse(halves[1]!) : [];
  const groups = head.length + rest.length;
  if (halves.length === 1 ? groups !== 8 : groups > 7) return undefined;
  const out = new Uint8Array(16);
  const all = [...head, ...Array<string>(8 - groups).fill("0"), ...rest];
  for (let i = 0; i < 8; i++) {
    const g = all[i]!;
    if (!/^[0-9a-f]{1,4}$/i.test(g)) return undefined;
    const w = parseInt(g, 16);
    out[2 * i] = w >> 8;
    out[2 * i + 1] = w & 0xff;
  }
  return out;
}

/** "10.0.0.1", "10.0.0.0/8", "2001:db8::/64" → family, 16-byte address, prefix length. */
export function parsePrefix(text: string): ParsedPrefix {
  const [ip, len, extra] = text.split("/");
  const v4 = parseIPv4(ip ?? "");
  const v6 = v4 ? undefined : parseIPv6(ip ?? "");
  if ((!v4 && !v6) || extra !== undefined) {
    throw new SyntaxError(`Invalid IP prefix "${text}": expected an IPv4 or IPv6 address[/len]`);
  }
  const family = v4 ? 4 : 6;
  const max = family === 4 ? 32 : 128;
  const prefixLen = len === undefined ? max : Number(len);
  if (!/^\d+$/.test(len ?? String(max)) || prefixLen > max) {
    throw new RangeError(`Invalid prefix length in "${text}": expected 0..${max}`);
  }
  const addr = new Uint8Array(16);
  addr.set(v4 ?? v6!);
  // Clear host bits so equal prefixes always encode to equal keys.
  for (let bit = prefixLen; bit < max; bit++) addr[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return { family, addr, prefixLen };
}

export function formatIP(family: number, addr: Uint8Array): string {
  if (family === 4) return Array.from(addr.subarray(0, 4)).join(".");
  const words = Array.from({ length: 8 }, (_, i) => (addr[2 * i]! << 8) | addr[2 * i + 1]!);
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8; i++) {
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
  }
  const hex = words.map((w) => w.toString(16));
  if (best < 0) return hex.join(":");
  return `${hex.slice(0, best).join(":")}::${hex.slice(best + bestLen).join(":")}`;
}

export function parseMac(text: string): Uint8Array {
  const parts = text.split(":");
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-f]{2}$/i.test(p))) {
    throw new SyntaxError(`Invalid MAC address "${text}": expected six hex pairs`);
  }
  return Uint8Array.from(parts, (p) => parseInt(p, 16));
}
