/**
 * What node discovery reads from the kvstore and how it judges addresses: node and endpoint
 * records parsed leniently (a malformed record is skipped, never thrown), a native route's next
 * hop, whether an address is this node's own, and prefix arithmetic. Pure: no I/O, no state.
 */

import type { KvEntry } from "../kvstore/kvstore.ts";
import { parsePrefix } from "../datapath/_addr.ts";
import type { NodeRecord } from "./registry.ts";
import type { RemoteNode } from "./discovery.ts";

/** An endpoint record of another node, as discovery keeps it. */
export interface RemoteEndpoint {
  node: string;
  identity: number;
  ips: string[];
}

const dec = new TextDecoder();

function json(e: KvEntry): unknown {
  try {
    return JSON.parse(dec.decode(e.value));
  } catch {
    return undefined;
  }
}

export function nodeOf(e: KvEntry): RemoteNode | undefined {
  const r = json(e) as Partial<NodeRecord> | undefined;
  if (!r || typeof r.name !== "string" || !Array.isArray(r.addresses)) return undefined;
  return { ...(r as NodeRecord), endpoints: 0, seenAt: new Date().toISOString() };
}

export function endpointOf(e: KvEntry): RemoteEndpoint | undefined {
  const r = json(e) as
    | { node?: unknown; identity?: unknown; ipv4?: unknown; ipv6?: unknown }
    | undefined;
  if (!r || typeof r.node !== "string" || typeof r.identity !== "number") return undefined;
  const ips = [r.ipv4, r.ipv6].filter((x): x is string => typeof x === "string");
  return { node: r.node, identity: r.identity, ips };
}

/**
 * The next hop to a node's pod CIDR of `family` in native routing: its node IP (IPv4), else its
 * first address of that family outside its own pod CIDRs (the pod gateways on its cilia_host
 * are among its addresses and are no next hop). The kernel has no IPv6 route via an IPv4
 * gateway, so IPv6 pod CIDRs need an IPv6 underlay address on the node.
 */
export function nextHop(n: NodeRecord, family: 4 | 6): string | undefined {
  if (family === 4 && n.ip?.includes(".")) return n.ip;
  const pods = [n.podCidr, n.podCidrV6].flatMap((c) => c ? tryParse(c) : []);
  return n.addresses.find((a) => {
    const [p] = tryParse(a);
    if (p === undefined || p.family !== family || p.prefixLen !== (family === 4 ? 32 : 128)) {
      return false;
    }
    if (family === 6 && p.addr[0] === 0xfe && (p.addr[1]! & 0xc0) === 0x80) return false;
    return !pods.some((c) => c.family === p.family && within(p.addr, c.addr, c.prefixLen));
  });
}

/** This node's own addresses and pod CIDRs (parsed), which no remote record may claim. */
export interface LocalAddresses {
  addresses: string[];
  pods: ReturnType<typeof parsePrefix>[];
}

/** Whether `ip` is this node's: one of its addresses, IPv4 link-local, or in its pod CIDRs. */
export function isLocal(ip: string, local: LocalAddresses): boolean {
  if (local.addresses.includes(ip)) return true;
  const p = parsePrefix(ip);
  if (p.family === 4 && p.addr[0] === 169 && p.addr[1] === 254) return true; // link-local
  return local.pods.some((l) => l.family === p.family && within(p.addr, l.addr, l.prefixLen));
}

/** A record's address or prefix, or none when malformed (a record never breaks the sync). */
export function tryParse(text: string): ReturnType<typeof parsePrefix>[] {
  try {
    return [parsePrefix(text)];
  } catch {
    return [];
  }
}

export function within(addr: Uint8Array, net: Uint8Array, len: number): boolean {
  for (let bit = 0; bit < len; bit++) {
    const m = 0x80 >> (bit & 7);
    if ((addr[bit >> 3]! & m) !== (net[bit >> 3]! & m)) return false;
  }
  return true;
}
