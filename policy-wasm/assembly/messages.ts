// Message type numbers of the host ↔ engine protocol and the shared prefix decoder. The
// TypeScript mirror is policy-wasm/src/wire.ts.

import { Prefix } from "./model";
import { Reader } from "./wire";

export const MSG_RULES: u16 = 1;
export const MSG_IDENTITIES: u16 = 2;
export const MSG_IDENTITIES_REMOVE: u16 = 3;
export const MSG_ENDPOINTS: u16 = 4;
export const MSG_IPCACHE: u16 = 5;
export const MSG_QUERY: u16 = 6;
export const MSG_IP_LOOKUP: u16 = 7;
export const MSG_L7_CHECK: u16 = 8;
export const MSG_ENDPOINTS_UPDATE: u16 = 9;

/**
 * A prefix: u8 family (4, 6, or 0 = reserved:world), u8 length, 16 address bytes. Any other
 * family, or a length beyond the family's bits (0 for world), fails the message: every prefix
 * match reads `len` bits of a 16-byte address.
 */
export function readPrefix(r: Reader): Prefix {
  const p = new Prefix();
  p.family = r.u8();
  p.len = r.u8();
  for (let i = 0; i < 16; i++) p.addr[i] = r.u8();
  const max: u8 = p.family == 4 ? 32 : p.family == 6 ? 128 : 0;
  if ((p.family != 0 && max == 0) || p.len > max) r.failed = true;
  return p;
}
