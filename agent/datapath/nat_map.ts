// Reads the node-IP SNAT map (cilia_snat, bpf/lib/nat.h) for `GET /v1/bpf/nat` and `cilia bpf nat
// list`: each translation as the hook that applies it sees the packet, and what it rewrites.
// Read-only; the BPF programs alone create and age entries (an LRU map, no GC).
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

const ip4 = (b: unknown) => formatIP(4, b as Uint8Array);
const zero = (b: unknown) => (b as Uint8Array).every((x) => x === 0);

/** Every entry of the pinned map at `mapPath`; none when it does not exist (no node IP). */
export async function dumpNat(mapPath: string): Promise<NatRow[]> {
  if (!(await Deno.stat(mapPath).then(() => true, () => false))) return [];
  return withLibs(() => {
    const fd = objGet(mapPath);
    try {
      const rows: NatRow[] = [];
      for (const raw of mapKeys(fd, NAT_LAYOUTS.natKey.size)) {
        const rawValue = mapLookup(fd, raw, NAT_LAYOUTS.natEntry.size);
        if (!rawValue) continue;
        const k = decode(NAT_LAYOUTS.natKey, raw), v = decode(NAT_LAYOUTS.natEntry, rawValue);
        rows.push({
          hook: Number(k.dir) === 1 ? "egress" : "ingress",
          kind: NAT_KINDS[Number(v.kind)] ?? String(v.kind),
          proto: Number(k.proto),
          source: ip4(k.saddr),
          sourcePort: Number(k.sport),
          destination: ip4(k.daddr),
          destinationPort: Number(k.dport),
          ...(zero(v.saddr) ? {} : { newSource: `${ip4(v.saddr)}:${Number(v.sport)}` }),
          ...(zero(v.daddr) ? {} : { newDestination: `${ip4(v.daddr)}:${Number(v.dport)}` }),
        });
      }
      return rows;
    } finally {
      closeFd(fd);
    }
  });
}
