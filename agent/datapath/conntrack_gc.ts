// Garbage collection and inspection of the conntrack map (cilia_ct): walks the pinned map through
// ffi.ts and deletes entries whose lifetime has passed (or that match a filter, e.g. every entry
// of a removed endpoint). The BPF side already treats expired entries as absent; this only frees
// their slots. It never creates or changes entries.
import { decode, DIR_SERVICE, LAYOUTS, type Values } from "./codecs.ts";
import { formatIP } from "./_addr.ts";
import { closeFd, mapDelete, mapKeys, mapLookup, monotonicNs, objGet, withLibs } from "./ffi.ts";

export interface ConntrackEntry {
  key: Values;
  value: Values;
}

export interface GcResult {
  scanned: number;
  deleted: number;
}

/** Decoded entries of the pinned conntrack map. */
export function dumpConntrack(mapPath: string): ConntrackEntry[] {
  return withLibs(() => dumpOpen(mapPath));
}

function dumpOpen(mapPath: string): ConntrackEntry[] {
  const fd = objGet(mapPath);
  try {
    const out: ConntrackEntry[] = [];
    for (const key of mapKeys(fd, LAYOUTS.ctKey.size)) {
      const value = mapLookup(fd, key, LAYOUTS.ctEntry.size);
      if (value) {
        out.push({ key: decode(LAYOUTS.ctKey, key), value: decode(LAYOUTS.ctEntry, value) });
      }
    }
    return out;
  } finally {
    closeFd(fd);
  }
}

/**
 * The live flows of the pinned conntrack map as a test "does endpoint E have a live connection
 * with address A" (either side of the tuple; DIR_SERVICE entries left out), for keeping learned
 * DNS addresses while connections use them.
 */
export function liveFlowPeers(mapPath: string): (endpoint: number, ip: string) => boolean {
  const now = monotonicNs();
  const live = new Set<string>();
  for (const { key, value } of dumpConntrack(mapPath)) {
    if ((value.expires as bigint) <= now || Number(key.dir) === DIR_SERVICE) continue;
    const family = Number(key["tuple.family"]);
    const ep = Number(key.ep_id);
    live.add(`${ep}/${formatIP(family, key["tuple.saddr"] as Uint8Array)}`);
    live.add(`${ep}/${formatIP(family, key["tuple.daddr"] as Uint8Array)}`);
  }
  return (endpoint, ip) => live.has(`${endpoint}/${ip}`);
}

/**
 * Deletes expired entries (expires <= now) and, if given, every entry for which `remove` is true.
 * `now` defaults to CLOCK_MONOTONIC; tests pass a later time to age entries.
 */
export function collectConntrack(
  mapPath: string,
  opts: { now?: bigint; remove?: (key: Values) => boolean } = {},
): GcResult {
  const now = opts.now ?? monotonicNs();
  return withLibs(() => collectOpen(mapPath, now, opts.remove));
}

function collectOpen(mapPath: string, now: bigint, remove?: (key: Values) => boolean): GcResult {
  const fd = objGet(mapPath);
  try {
    const keys = mapKeys(fd, LAYOUTS.ctKey.size);
    let deleted = 0;
    for (const key of keys) {
      const raw = mapLookup(fd, key, LAYOUTS.ctEntry.size);
      if (!raw) continue;
      const expires = decode(LAYOUTS.ctEntry, raw).expires as bigint;
      const doomed = expires <= now || (remove?.(decode(LAYOUTS.ctKey, key)) ?? false);
      if (doomed && mapDelete(fd, key)) deleted++;
    }
    return { scanned: keys.length, deleted };
  } finally {
    closeFd(fd);
  }
}

/** Runs collectConntrack every intervalMs until the returned function is called. */
export function startConntrackGc(
  mapPath: string,
  opts: { intervalMs?: number; onResult?: (r: GcResult) => void; onError?: (e: unknown) => void } =
    {},
): () => void {
  const timer = setInterval(() => {
    try {
      opts.onResult?.(collectConntrack(mapPath));
    } catch (e) {
      opts.onError?.(e);
    }
  }, opts.intervalMs ?? 30_000);
  return () => clearInterval(timer);
}
