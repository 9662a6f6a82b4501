// Backend slot tables for the datapath's services (bpf/lib/lb.h picks slot = hash(5-tuple) %
// slots): Maglev (Eisenbud et al., NSDI 2016: each backend fills the table in the order of its own
// permutation, so removing one backend moves about 1/N of the slots) or "random" (each backend
// once per weight unit: an even spread, but a change moves up to all slots). Pure and
// deterministic: the same backends give the same table on every node.

/** Maglev table sizes (primes); the smallest that is at least 100 × the backends is used. */
export const MAGLEV_SIZES = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521] as const;

export interface SlotBackend {
  /** A stable name ("10.0.0.1:80"): it seeds the backend's permutation. */
  name: string;
  weight: number;
}

/** FNV-1a, 32 bit, with a seed mixed in first. */
export function fnv1a(text: string, seed: number): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

export function maglevSize(backends: number): number {
  return MAGLEV_SIZES.find((m) => m >= backends * 100) ?? 65521;
}

/**
 * The Maglev lookup table: index → backend index. Weighted: in each round a backend claims as
 * many slots as its weight. Empty for no backends.
 */
export function maglevTable(backends: readonly SlotBackend[], size?: number): number[] {
  const n = backends.length;
  if (n === 0) return [];
  const m = size ?? maglevSize(backends.reduce((s, b) => s + b.weight, 0));
  const offset = backends.map((b) => fnv1a(b.name, 0x5bd1e995) % m);
  const skip = backends.map((b) => (fnv1a(b.name, 0x27d4eb2d) % (m - 1)) + 1);
  const next = new Array<number>(n).fill(0);
  const table = new Array<number>(m).fill(-1);
  let filled = 0;
  while (filled < m) {
    for (let i = 0; i < n && filled < m; i++) {
      for (let w = 0; w < backends[i]!.weight && filled < m; w++) {
        let c = (offset[i]! + next[i]! * skip[i]!) % m;
        while (table[c]! >= 0) {
          next[i]!++;
          c = (offset[i]! + next[i]! * skip[i]!) % m;
        }
        table[c] = i;
        next[i]!++;
        filled++;
      }
    }
  }
  return table;
}

/** "random": each backend once per weight unit, in order. */
export function weightedSlots(backends: readonly SlotBackend[]): number[] {
  return backends.flatMap((b, i) => new Array<number>(b.weight).fill(i));
}

/**
 * The datapath's slot hash (lb.h lb_hash), for tests and traces: addresses as 4 (IPv4) or 16
 * (IPv6) bytes, host-order ports.
 */
export function lbHash(t: {
  saddr: Uint8Array;
  daddr: Uint8Array;
  sport: number;
  dport: number;
  proto: number;
}): number {
  const mix = (x: number) => {
    let h = x >>> 0;
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b) >>> 0;
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35) >>> 0;
    h ^= h >>> 16;
    return h >>> 0;
  };
  // The C reads addresses as host-order (little-endian) u32s and ports as network-order u16s.
  // An address is its four words XORed (lb_fold): IPv4's words 2-4 are 0.
  const le = (b: Uint8Array) => {
    let w = 0;
    for (let i = 0; i + 3 < b.length && i < 16; i += 4) {
      w ^= b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24);
    }
    return w >>> 0;
  };
  const be16 = (p: number) => ((p & 0xff) << 8) | (p >>> 8);
  let h = mix(le(t.saddr) ^ 0x9e3779b9);
  h = mix(h ^ le(t.daddr));
  h = mix(h ^ (((be16(t.sport) << 16) | be16(t.dport)) >>> 0));
  return mix(h ^ t.proto);
}
