// The node-wide sizes of the kernel maps that grow with the cluster (conntrack, policy,
// ipcache): the compile-time defines they become (bpf/lib/*.h read `CILIA_*_MAX`), the agent
// flag that sets each (for messages), how full each map is, and the clear error a full map
// gives. It loads nothing and writes no map.
import { LAYOUTS } from "./codecs.ts";
import { closeFd, mapKeys, objGet, withLibs } from "./ffi.ts";
import { countConntrack } from "./conntrack_gc.ts";
import type { MapName } from "./loader.ts";

/** max_entries of the sized maps; an absent size keeps the header's default. */
export interface MapSizes {
  ctMax?: number;
  policyMax?: number;
  ipcacheMax?: number;
}

export const SIZED_MAPS = ["cilia_ct", "cilia_policy", "cilia_ipcache"] as const;
export type SizedMap = typeof SIZED_MAPS[number];

const SPEC: Record<SizedMap, { field: keyof MapSizes; define: string; flag: string }> = {
  cilia_ct: { field: "ctMax", define: "CILIA_CT_MAX", flag: "--bpf-ct-max" },
  cilia_policy: { field: "policyMax", define: "CILIA_POLICY_MAX", flag: "--bpf-policy-map-max" },
  cilia_ipcache: { field: "ipcacheMax", define: "CILIA_IPCACHE_MAX", flag: "--bpf-ipcache-max" },
};

const KEY_SIZE: Record<SizedMap, number> = {
  cilia_ct: LAYOUTS.ctKey.size,
  cilia_policy: LAYOUTS.policyKey.size,
  cilia_ipcache: LAYOUTS.ipcacheKey.size,
};

/** `-D` defines for build.ts (only the sizes that are set). */
export function sizeDefines(sizes: MapSizes): Record<string, number> {
  const out: Record<string, number> = {};
  for (const n of SIZED_MAPS) {
    const v = sizes[SPEC[n].field];
    if (v !== undefined) out[SPEC[n].define] = v;
  }
  return out;
}

/** The configured sizes by map, with their flags (for loader.ts's check of pinned maps). */
export function sizesByMap(
  sizes: MapSizes,
): Partial<Record<MapName, { max: number; flag: string }>> {
  const out: Partial<Record<MapName, { max: number; flag: string }>> = {};
  for (const n of SIZED_MAPS) {
    const v = sizes[SPEC[n].field];
    if (v !== undefined) out[n] = { max: v, flag: SPEC[n].flag };
  }
  return out;
}

export interface MapFill {
  map: SizedMap;
  entries: number;
  max: number;
  /** entries / max, 0..1. */
  pressure: number;
}

/**
 * Counts the entries of each sized map by walking its keys (bpf_map_get_next_key through FFI):
 * about a microsecond per entry, so callers cache the result. A walk racing with deletes may
 * restart; the count is capped at max.
 */
export function countFill(
  pinned: Readonly<Record<SizedMap, string>>,
  max: Readonly<Record<SizedMap, number>>,
): MapFill[] {
  return SIZED_MAPS.map((map) => {
    const entries = countEntries(pinned[map], { map, max: max[map] });
    return { map, entries, max: max[map], pressure: max[map] > 0 ? entries / max[map] : 0 };
  });
}

/** The entries of one sized map (at most max). */
export function countEntries(pinned: string, o: { map: SizedMap; max: number }): number {
  // The conntrack table is walked in batches (a million entries: 6 s of CPU key by key).
  if (o.map === "cilia_ct") return Math.min(o.max, countConntrack(pinned));
  return withLibs(() => {
    const fd = objGet(pinned);
    try {
      return Math.min(o.max, mapKeys(fd, KEY_SIZE[o.map], o.max + 1).length);
    } finally {
      closeFd(fd);
    }
  });
}

/**
 * A write error a full map gives (ENOSPC from an LPM trie, E2BIG from a hash map); the caller
 * confirms by counting, since the same errno can have other causes (or be injected by tests).
 */
export function isMapFullErrno(err: unknown): boolean {
  return /No space left on device|Argument list too long/.test(String((err as Error)?.message));
}

/** The error for a write that failed because `map` holds `max` entries already. */
export function mapFullError(map: SizedMap, max: number, cause: unknown): RangeError {
  return new RangeError(
    `Cannot write to map "${map}": it is full (${max} entries); raise ${SPEC[map].flag}`,
    { cause },
  );
}
