// The engine's IP → identity map (Cilium's ipcache): longest-prefix match over the prefixes of
// CIDR identities and the addresses the host registers (endpoint IPs, host IPs). An address no
// prefix covers belongs to reserved:world (identity 2).

import { ID_WORLD, leadingBitsEqual, Prefix } from "./model";
import { Reader, ST_BAD_HEADER, ST_OK, ST_TRUNCATED, Writer } from "./wire";
import { MSG_IP_LOOKUP, MSG_IPCACHE, readPrefix } from "./messages";

class IpEntry {
  constructor(public prefix: Prefix, public identity: u32, public explicit: bool) {}
}

/** Kept sorted by prefix length, longest first, so the first match is the longest. */
const table = new Array<IpEntry>();

function samePrefix(a: Prefix, b: Prefix): bool {
  return a.family == b.family && a.len == b.len && leadingBitsEqual(a.addr, b.addr, a.len);
}

function insert(p: Prefix, identity: u32, explicit: bool): void {
  for (let i = 0; i < table.length; i++) {
    const e = table[i];
    if (e.explicit == explicit && samePrefix(e.prefix, p)) {
      e.identity = identity;
      return;
    }
  }
  let at = 0;
  while (at < table.length && table[at].prefix.len >= p.len) at++;
  table.push(new IpEntry(p, identity, explicit));
  // Move the new entry to its sorted place (stable: explicit entries registered later come after).
  for (let i = table.length - 1; i > at; i--) {
    const t = table[i];
    table[i] = table[i - 1];
    table[i - 1] = t;
  }
}

function remove(p: Prefix, identity: u32, explicit: bool): void {
  for (let i = 0; i < table.length; i++) {
    const e = table[i];
    if (e.explicit == explicit && e.identity == identity && samePrefix(e.prefix, p)) {
      table.splice(i, 1);
      return;
    }
  }
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
  let best: IpEntry | null = null;
  for (let i = 0; i < table.length; i++) {
    const e = table[i];
    if (e.prefix.family != addr.family) continue;
    if (best !== null && e.prefix.len < best.prefix.len) break;
    if (!leadingBitsEqual(e.prefix.addr, addr.addr, e.prefix.len)) continue;
    if (best === null || (e.explicit && !best.explicit)) best = e;
  }
  return best === null ? ID_WORLD : best.identity;
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
