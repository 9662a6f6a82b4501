/**
 * Address arithmetic for one pod CIDR (IPv4 or IPv6) as BigInts: which addresses may be handed
 * out (not the network address, not the gateway, which is the first usable address, and for IPv4
 * not the broadcast address), and conversion to and from text. Pure; no I/O.
 */

import { formatPrefix, parseAddress, parsePrefix } from "@cilia/policy-wasm";

export interface Pool {
  family: 4 | 6;
  /** Canonical CIDR text, e.g. `10.200.0.0/24`. */
  cidr: string;
  gateway: bigint;
  /** First and last address that may be allocated. */
  first: bigint;
  last: bigint;
}

function toBig(addr: Uint8Array, family: 4 | 6): bigint {
  let n = 0n;
  for (const b of addr.subarray(0, family === 4 ? 4 : 16)) n = (n << 8n) | BigInt(b);
  return n;
}

/** The address as a number, or null when `text` is not an address. */
export function addressNumber(text: string): { family: 4 | 6; n: bigint } | null {
  const a = parseAddress(text);
  return a === null ? null : { family: a.family, n: toBig(a.addr, a.family) };
}

/** Canonical text of an address number. */
export function addressText(family: 4 | 6, n: bigint): string {
  const addr = new Uint8Array(16);
  const bytes = family === 4 ? 4 : 16;
  for (let i = bytes - 1; i >= 0; i--) {
    addr[i] = Number(n & 0xffn);
    n >>= 8n;
  }
  const len = family === 4 ? 32 : 128;
  return formatPrefix({ family, len, addr }).replace(/\/\d+$/, "");
}

export function makePool(cidr: string): Pool {
  const p = parsePrefix(cidr);
  if (p.family === 0) throw new RangeError(`Invalid pod CIDR "${cidr}"`);
  const bits = p.family === 4 ? 32 : 128;
  const base = toBig(p.addr, p.family);
  const size = 1n << BigInt(bits - p.len);
  const gateway = base + 1n;
  const last = p.family === 4 ? base + size - 2n : base + size - 1n;
  if (last < gateway + 1n) {
    throw new RangeError(`Pod CIDR "${cidr}" is too small: it leaves no address after the gateway`);
  }
  return { family: p.family, cidr: formatPrefix(p), gateway, first: gateway + 1n, last };
}

export function capacity(pool: Pool): bigint {
  return pool.last - pool.first + 1n;
}

export function inPool(pool: Pool, family: 4 | 6, n: bigint): boolean {
  return family === pool.family && n >= pool.first && n <= pool.last;
}
