// Synthetic conntrack entries for the endpoints bench, written straight into a node's pinned
// cilia_ct through ffi.ts (one bpf_map_update_elem per entry, ~500k/s): established TCP flows of
// one endpoint from 198.51.100.0/24 sources (a documentation range no lab packet uses) with a
// six-hour lifetime, so the agent's GC keeps them; deletes them again (to compare with a small
// table in turns). Also counts one pod's entries by port (a batch walk of the table), to see
// which of its flows a flood of new entries evicted. Only this bench writes such entries; nothing
// here prints.
import { encode, LAYOUTS } from "../../agent/datapath/codecs.ts";
import { walkConntrack } from "../../agent/datapath/conntrack_gc.ts";
import {
  closeFd,
  mapDelete,
  mapUpdate,
  monotonicNs,
  objGet,
  withLibs,
} from "../../agent/datapath/ffi.ts";

const TCP = 6, DIR_EGRESS = 2, SIX_HOURS_NS = 21_600n * 1_000_000_000n;
/** ct_entry flags: CT_F_SEEN_REPLY; tcp_flags: SYN | ACK (an established flow). */
const SEEN_REPLY = 1, SYN_ACK = 0x12;
const CT_KEY = LAYOUTS.ctKey.size;

function v4(a: number, b: number, c: number, d: number): Uint8Array {
  const x = new Uint8Array(16);
  x.set([a, b, c, d]);
  return x;
}

interface Flows {
  epId: number;
  first: number;
  count: number;
  dst: [number, number, number, number];
}

/** Calls `fn(fd, key)` with the key of each flow of `o` (one buffer, rewritten per flow). */
function eachFlow(ctMap: string, o: Flows, fn: (fd: number, key: Uint8Array) => void): void {
  withLibs(() => {
    const fd = objGet(ctMap);
    try {
      const key = encode(LAYOUTS.ctKey, {
        "tuple.saddr": v4(198, 51, 100, 0),
        "tuple.daddr": v4(...o.dst),
        "tuple.sport": 0,
        "tuple.dport": 443,
        "tuple.proto": TCP,
        "tuple.family": 4,
        ep_id: o.epId,
        dir: DIR_EGRESS,
      });
      const view = new DataView(key.buffer);
      for (let i = o.first; i < o.first + o.count; i++) {
        // Source 198.51.100.0 + (i >> 16) in its last two bytes, source port i & 0xffff.
        view.setUint8(2, 100 + ((i >> 24) & 0xff));
        view.setUint8(3, (i >> 16) & 0xff);
        view.setUint16(32, i & 0xffff, false);
        fn(fd, key);
      }
    } finally {
      closeFd(fd);
    }
  });
}

/**
 * Writes `count` established flows of endpoint `epId` starting at flow number `first` (distinct
 * numbers give distinct keys); returns how many writes the kernel refused.
 */
export function fillConntrack(ctMap: string, o: Flows): number {
  const value = encode(LAYOUTS.ctEntry, {
    expires: monotonicNs() + SIX_HOURS_NS,
    packets: 2n,
    bytes: 120n,
    peer_identity: 2,
    flags: SEEN_REPLY,
    tcp_flags: SYN_ACK,
    rev_nat: 0,
  });
  let refused = 0;
  eachFlow(ctMap, o, (fd, key) => {
    if (mapUpdate(fd, key, value) !== 0) refused++;
  });
  return refused;
}

/** Deletes the flows fillConntrack wrote with the same `o`; returns how many were there. */
export function clearConntrack(ctMap: string, o: Flows): number {
  let deleted = 0;
  eachFlow(ctMap, o, (fd, key) => {
    if (mapDelete(fd, key)) deleted++;
  });
  return deleted;
}

/** Entries of the flows of one pod (its IPv4 address at either end) per TCP port of the peer. */
export function countFlows(
  ctMap: string,
  pod: string,
  ports: number[],
): { total: number; byPort: Record<number, number> } {
  const a = pod.split(".").map(Number);
  const byPort: Record<number, number> = Object.fromEntries(ports.map((p) => [p, 0]));
  let total = 0;
  walkConntrack(ctMap, (keys, _values, n) => {
    total += n;
    for (let i = 0; i < n; i++) {
      const o = i * CT_KEY;
      const at = (off: number) => a.every((x, j) => keys[o + off + j] === x);
      if (keys[o + 37] !== 4 || !(at(0) || at(16))) continue;
      const sport = (keys[o + 32]! << 8) | keys[o + 33]!,
        dport = (keys[o + 34]! << 8) | keys[o + 35]!;
      for (const p of ports) if (dport === p || sport === p) byPort[p]!++;
    }
  });
  return { total, byPort };
}
