// Reads the node-IP SNAT maps (cilia_snat, bpf/lib/nat.h, and its IPv6 twin cilia_snat6,
// nodeport6.h, pinned next to it) for `GET /v1/bpf/nat` and `cilia bpf nat list`: each
// translation as the hook that applies it sees the packet, and what it rewrites. Read-only; the
// BPF programs alone create and age entries (LRU maps, no GC).
import { decode } from "./codecs.ts";
import { formatIP } from "./_addr.ts";
import { closeFd, mapKeys, mapLookup, objGet, withLibs } from "./ffi.ts";
import { NAT_KINDS, NAT_LAYOUTS } from "./netdev_loader.ts";

export interface NatRow {
  hook: "egress" | "ingress";
  kind: string;
  proto: number;
  source: string;
  sourcePort: number;
  destination: string;
  destinationPort: number;
  /** The address:port the packet gets as its source, if the entry rewrites it. */
  newSource?: string;
  newDestination?: string;
}

const zero = (b: unknown) => (b as Uint8Array).every((x) => x === 0);

/**
 * Every entry of the pinned map at `mapPath` (cilia_snat), then of its IPv6 twin at
 * `${mapPath}6`; none for a map that does not exist (no node IP).
 */
export async function dumpNat(mapPath: string): Promise<NatRow[]> {
  return [...await dumpOne(mapPath, 4), ...await dumpOne(`${mapPath}6`, 6)];
}

async function dumpOne(mapPath: string, family: 4 | 6): Promise<NatRow[]> {
  if (!(await Deno.stat(mapPath).then(() => true, () => false))) return [];
  const [keyLayout, entryLayout] = family === 4
    ? [NAT_LAYOUTS.natKey, NAT_LAYOUTS.natEntry]
    : [NAT_LAYOUTS.nat6Key, NAT_LAYOUTS.nat6Entry];
  const ip = (b: unknown) => formatIP(family, b as Uint8Array);
  const at = (b: unknown, port: unknown) =>
    family === 4 ? `${ip(b)}:${Number(port)}` : `[${ip(b)}]:${Number(port)}`;
  return withLibs(() => {
    const fd = objGet(mapPath);
    try {
      const rows: NatRow[] = [];
      for (const raw of mapKeys(fd, keyLayout.size)) {
        const rawValue = mapLookup(fd, raw, entryLayout.size);
        if (!rawValue) continue;
        const k = decode(keyLayout, raw), v = decode(entryLayout, rawValue);
        rows.push({
          hook: Number(k.dir) === 1 ? "egress" : "ingress",
          kind: NAT_KINDS[Number(v.kind)] ?? String(v.kind),
          proto: Number(k.proto),
          source: ip(k.saddr),
          sourcePort: Number(k.sport),
          destination: ip(k.daddr),
          destinationPort: Number(k.dport),
          ...(zero(v.saddr) ? {} : { newSource: at(v.saddr, v.sport) }),
          ...(zero(v.daddr) ? {} : { newDestination: at(v.daddr, v.dport) }),
        });
      }
      return rows;
    } finally {
      closeFd(fd);
    }
  });
}
