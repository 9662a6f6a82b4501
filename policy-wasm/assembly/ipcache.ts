// The engine's IP → identity map (Cilium's ipcache): longest-prefix match over the prefixes of
// CIDR identities and the addresses the host registers (endpoint IPs, host IPs). An address no
// prefix covers belongs to reserved:world (identity 2).

import { ID_WORLD, Prefix } from "./model";
import { Reader, ST_BAD_HEADER, ST_OK, ST_TRUNCATED, Writer } from "./wire";
import { MSG_IP_LOOKUP, MSG_IPCACHE, readPrefix } from "./messages";

class IpEntry {
  constructor(public prefix: Prefix, public identity: u32, public explicit: bool) {}
}

// Indexed by family, length and masked address, so an update costs the same with 10 or 100,000
// prefixes (a linear table made each endpoint's ADD walk every address already there), and a
// lookup tries only the lengths in use, longest first: explicit registrations (endpoint and host
// addresses) and CIDR identities' prefixes are kept apart, one entry each per prefix.
const explicitEntries = new Map<string, IpEntry>();
const cidrEntries = new Map<string, IpEntry>();
/** How many entries (both kinds) have each prefix length, per family: [0..32] and [0..128]. */
const lens4 = new StaticArray<i32>(33);
const lens6 = new StaticArray<i32>(129);

const HEX = "0123456789abcdef";

/** The family, the length and the address bits within the length, as a map key. */
function keyOf(family: u8, len: i32, addr: StaticArray<u8>): string {
  let k = String.fromCharCode(family) + String.fromCharCode(len);
  const full = len >> 3;
  for (let i = 0; i < full; i++) {
    const b = addr[i];
    k += HEX.charAt(b >> 4) + HEX.charAt(b & 15);
  }
  const rest = len - (full << 3);
  if (rest > 0) {
    const b = addr[full] & <u8> (0xff << <u8> (8 - rest));
    k += HEX.charAt(b >> 4) + HEX.charAt(b & 15);
  }
  return k;
}

function countLen(family: u8, len: u8, delta: i32): void {
  if (family == 4 && len <= 32) lens4[len] += delta;
  else if (family == 6 && len <= 128) lens6[len] += delta;
}

function insert(p: Prefix, identity: u32, explicit: bool): void {
  const m = explicit ? explicitEntries : cidrEntries;
  const k = keyOf(p.family, p.len, p.addr);
  if (m.has(k)) {
    m.get(k).identity = identity;
    return;
  }
  m.set(k, new IpEntry(p, identity, explicit));
  countLen(p.family, p.len, 1);
}

function remove(p: Prefix, identity: u32, explicit: bool): void {
  const m = explicit ? explicitEntries : cidrEntries;
  const k = keyOf(p.family, p.len, p.addr);
  if (!m.has(k) || m.get(k).identity != identity) return;
  m.delete(k);
  countLen(p.family, p.len, -1);
}

export function ipcacheSetIdentityPrefix(p: Prefix, identity: u32): void {
  if (p.family == 0) return; // reserved:world stands for everything no prefix covers
  insert(p, identity, false);
}

export function ipcacheRemoveIdentityPrefix(p: Prefix, identity: u32): void {
  remove(p, identity, false);
}

/** Longest-prefix match; explicit registrations win over CIDR identities of the same length. */
export function ipcacheLookup(addr: Prefix): u32 {
  if (addr.family != 4 && addr.family != 6) return ID_WORLD;
  const lens = addr.family == 4 ? lens4 : lens6;
  for (let len = lens.length - 1; len >= 0; len--) {
    if (lens[len] == 0) continue;
    const k = keyOf(addr.family, len, addr.addr);
    if (explicitEntries.has(k)) return explicitEntries.get(k).identity;
    if (cidrEntries.has(k)) return cidrEntries.get(k).identity;
  }
  return ID_WORLD;
}

/** MSG_IPCACHE: explicit upserts (prefix, identity) and deletes (prefix, identity). */
export function ipcacheUpdate(len: i32): i32 {
  const r = Reader.fromInput(len);
  if (!r.header(MSG_IPCACHE)) return ST_BAD_HEADER;
  const ups = new Array<IpEntry>();
  const nu = r.count(22);
  for (let i = 0; i < nu && !r.failed; i++) {
    const p = readPrefix(r);
    ups.push(new IpEntry(p, r.u32(), true));
  }
  const dels = new Array<IpEntry>();
  const nd = r.count(22);
  for (let i = 0; i < nd && !r.failed; i++) {
    const p = readPrefix(r);
    dels.push(new IpEntry(p, r.u32(), true));
  }
  if (r.failed) return ST_TRUNCATED;
  for (let i = 0; i < dels.length; i++) remove(dels[i].prefix, dels[i].identity, true);
  for (let i = 0; i < ups.length; i++) insert(ups[i].prefix, ups[i].identity, true);
  return ST_OK;
}

/** MSG_IP_LOOKUP: one address (as a full-length prefix) → output u32 identity. */
export function ipLookup(len: i32): i32 {
  const r = Reader.fromInput(len);
  if (!r.header(MSG_IP_LOOKUP)) return ST_BAD_HEADER;
  const p = readPrefix(r);
  if (r.failed) return ST_TRUNCATED;
  const w = new Writer();
  w.u32(ipcacheLookup(p));
  w.flush();
  return ST_OK;
}
