// Garbage collection and inspection of the conntrack map (cilia_ct): walks the pinned map through
// ffi.ts and deletes entries whose lifetime has passed (or that match a filter, e.g. every entry
// of a removed endpoint). The BPF side already treats expired entries as absent; this only frees
// their slots. It never creates or changes entries.
//
// A walk reads the table in chunks of CHUNK entries (BPF_MAP_LOOKUP_BATCH: one syscall per chunk
// instead of two per entry) and reads the fields it needs from the raw bytes, decoding only what
// it returns: a table of a million flows is walked in a fraction of a second, where one
// get_next_key and one lookup per entry with decoded objects cost 6 s of CPU (19 s for the
// FQDN's live-flow set) every pass, which the datapath's packets on the same two cores paid for.
import { decode, DIR_SERVICE, LAYOUTS, type Values } from "./codecs.ts";
import { formatIP, parseIPv4, parseIPv6 } from "./_addr.ts";
import {
  closeFd,
  mapDelete,
  mapKeys,
  mapLookup,
  mapLookupBatch,
  monotonicNs,
  objGet,
  withLibs,
} from "./ffi.ts";

export interface ConntrackEntry {
  key: Values;
  value: Values;
}

export interface GcResult {
  scanned: number;
  deleted: number;
}

const KEY = LAYOUTS.ctKey.size, VALUE = LAYOUTS.ctEntry.size;
/** Offsets in the raw key and value (checked against the layouts below). */
const K_FAMILY = 37, K_EP = 40, K_DIR = 42, V_EXPIRES = 0;
const CHUNK = 4096;
const ENOENT = 2, ENOSPC = 28;

/** The offsets above, checked once against the codecs (themselves checked against BTF). */
function checkOffsets(): void {
  const at = (l: typeof LAYOUTS.ctKey, name: string) =>
    l.fields.find((f) => f.name === name)?.offset;
  if (
    at(LAYOUTS.ctKey, "tuple.family") !== K_FAMILY || at(LAYOUTS.ctKey, "ep_id") !== K_EP ||
    at(LAYOUTS.ctKey, "dir") !== K_DIR || at(LAYOUTS.ctEntry, "expires") !== V_EXPIRES
  ) throw new Error("conntrack_gc.ts: ct_key/ct_entry offsets differ from codecs.ts");
}
checkOffsets();

/**
 * Calls `fn(keys, values, n)` for successive chunks of the map's entries (packed: entry i's key
 * at i * KEY, its value at i * VALUE; the buffers are reused, valid during the call only).
 * Entries added or deleted during the walk may or may not be seen; none is seen twice.
 */
function walk(fd: number, fn: (keys: Uint8Array, values: Uint8Array, n: number) => void): void {
  let size = CHUNK;
  let keys = new Uint8Array(size * KEY), values = new Uint8Array(size * VALUE);
  const count = new Uint32Array(1);
  let pos: Uint8Array | null = null;
  for (;;) {
    const next: Uint8Array = new Uint8Array(8);
    count[0] = size;
    const r = mapLookupBatch(fd, pos, next, keys, values, count);
    if (r === -ENOSPC && count[0] === 0 && size < 1 << 20) {
      // One bucket holds more entries than a chunk (never with a sane hash): a larger chunk.
      size *= 4;
      keys = new Uint8Array(size * KEY), values = new Uint8Array(size * VALUE);
      continue;
    }
    if (r !== 0 && r !== -ENOENT) {
      if (pos === null) return walkByKey(fd, fn); // no batch lookup for this map or kernel
      throw new Error(`Cannot walk the conntrack map: error ${-r}`);
    }
    if (count[0]! > 0) fn(keys, values, count[0]!);
    if (r === -ENOENT) return;
    pos = next;
  }
}

/** walk() with one get_next_key and one lookup per entry (kernels without batch lookups). */
function walkByKey(fd: number, fn: (keys: Uint8Array, values: Uint8Array, n: number) => void) {
  const all = mapKeys(fd, KEY);
  const keys = new Uint8Array(CHUNK * KEY), values = new Uint8Array(CHUNK * VALUE);
  let n = 0;
  for (const k of all) {
    const v = mapLookup(fd, k, VALUE);
    if (!v) continue;
    keys.set(k, n * KEY);
    values.set(v, n * VALUE);
    if (++n === CHUNK) {
      fn(keys, values, n);
      n = 0;
    }
  }
  if (n > 0) fn(keys, values, n);
}

/** Whether the u64 at `values[off..]` (little-endian) is <= now (split in 32-bit halves). */
function notAfter(view: DataView, off: number, nowHi: number, nowLo: number): boolean {
  const hi = view.getUint32(off + 4, true);
  return hi < nowHi || (hi === nowHi && view.getUint32(off, true) <= nowLo);
}

const halves = (x: bigint) => [Number(x >> 32n), Number(x & 0xffffffffn)] as const;

/**
 * Raw chunks of the pinned conntrack map: `fn(keys, values, n)` as in walk() (packed ct_key and
 * ct_entry bytes, reused buffers), for readers that need a few bytes of a million entries.
 */
export function walkConntrack(
  mapPath: string,
  fn: (keys: Uint8Array, values: Uint8Array, n: number) => void,
): void {
  withLibs(() => {
    const fd = objGet(mapPath);
    try {
      walk(fd, fn);
    } finally {
      closeFd(fd);
    }
  });
}

/** The number of entries in the pinned conntrack map (one batch walk, nothing decoded). */
export function countConntrack(mapPath: string): number {
  return withLibs(() => {
    const fd = objGet(mapPath);
    try {
      let total = 0;
      walk(fd, (_k, _v, n) => total += n);
      return total;
    } finally {
      closeFd(fd);
    }
  });
}

/** Decoded entries of the pinned conntrack map. */
export function dumpConntrack(mapPath: string): ConntrackEntry[] {
  return withLibs(() => dumpOpen(mapPath));
}

function dumpOpen(mapPath: string): ConntrackEntry[] {
  const fd = objGet(mapPath);
  try {
    const out: ConntrackEntry[] = [];
    walk(fd, (keys, values, n) => {
      for (let i = 0; i < n; i++) {
        out.push({
          key: decode(LAYOUTS.ctKey, keys.subarray(i * KEY, (i + 1) * KEY)),
          value: decode(LAYOUTS.ctEntry, values.subarray(i * VALUE, (i + 1) * VALUE)),
        });
      }
    });
    return out;
  } finally {
    closeFd(fd);
  }
}

/**
 * The live flows of the pinned conntrack map as a test "does endpoint E have a live connection
 * with address A" (either side of the tuple; DIR_SERVICE entries left out), for keeping learned
 * DNS addresses while connections use them. IPv4 pairs are kept as numbers (endpoint × 2^32 +
 * address), IPv6 ones as strings: no string per IPv4 entry.
 */
export function liveFlowPeers(mapPath: string): (endpoint: number, ip: string) => boolean {
  const [nowHi, nowLo] = halves(monotonicNs());
  const v4 = new Set<number>(), v6 = new Set<string>();
  withLibs(() => {
    const fd = objGet(mapPath);
    try {
      walk(fd, (keys, values, n) => {
        const kv = new DataView(keys.buffer), vv = new DataView(values.buffer);
        for (let i = 0; i < n; i++) {
          const k = i * KEY;
          if (notAfter(vv, i * VALUE + V_EXPIRES, nowHi, nowLo)) continue;
          if (keys[k + K_DIR] === DIR_SERVICE) continue;
          const ep = kv.getUint16(k + K_EP, true);
          if (keys[k + K_FAMILY] === 4) {
            v4.add(ep * 2 ** 32 + kv.getUint32(k, false));
            v4.add(ep * 2 ** 32 + kv.getUint32(k + 16, false));
          } else {
            v6.add(`${ep}/${formatIP(6, keys.slice(k, k + 16))}`);
            v6.add(`${ep}/${formatIP(6, keys.slice(k + 16, k + 32))}`);
          }
        }
      });
    } finally {
      closeFd(fd);
    }
  });
  return (endpoint, ip) => {
    const a = parseIPv4(ip);
    if (a) return v4.has(endpoint * 2 ** 32 + new DataView(a.buffer).getUint32(0, false));
    const b = parseIPv6(ip);
    return b !== undefined && v6.has(`${endpoint}/${formatIP(6, b)}`);
  };
}

/**
 * Deletes expired entries (expires <= now) and, if given, every entry of the endpoints `epIds`
 * and every entry for which `remove` is true (decoded only for entries still alive otherwise).
 * `now` defaults to CLOCK_MONOTONIC; tests pass a later time to age entries.
 */
export function collectConntrack(
  mapPath: string,
  opts: { now?: bigint; epIds?: ReadonlySet<number>; remove?: (key: Values) => boolean } = {},
): GcResult {
  const now = opts.now ?? monotonicNs();
  return withLibs(() => collectOpen(mapPath, now, opts));
}

function collectOpen(
  mapPath: string,
  now: bigint,
  o: { epIds?: ReadonlySet<number>; remove?: (key: Values) => boolean },
): GcResult {
  const [nowHi, nowLo] = halves(now);
  const fd = objGet(mapPath);
  try {
    let scanned = 0, deleted = 0;
    walk(fd, (keys, values, n) => {
      const kv = new DataView(keys.buffer), vv = new DataView(values.buffer);
      scanned += n;
      for (let i = 0; i < n; i++) {
        const k = i * KEY;
        const doomed = notAfter(vv, i * VALUE + V_EXPIRES, nowHi, nowLo) ||
          (o.epIds?.has(kv.getUint16(k + K_EP, true)) ?? false) ||
          (o.remove?.(decode(LAYOUTS.ctKey, keys.subarray(k, k + KEY))) ?? false);
        if (doomed && mapDelete(fd, keys.slice(k, k + KEY))) deleted++;
      }
    });
    return { scanned, deleted };
  } finally {
    closeFd(fd);
  }
}

/**
 * The wait before the next GC pass: `intervalMs` after a pass that freed at least 5 % of the
 * entries it scanned (or scanned few); otherwise long enough that passes take at most 1 % of the
 * time (100× the last pass), between `intervalMs` and `maxIntervalMs`. A table of a million
 * long-lived flows frees almost nothing per pass, and each pass sweeps the caches the datapath's
 * packets use; expired entries count as absent to the datapath meanwhile, and the LRU evicts.
 */
export function nextGcDelay(
  r: GcResult,
  passMs: number,
  o: { intervalMs: number; maxIntervalMs: number },
): number {
  if (r.scanned < 10_000 || r.deleted >= r.scanned * 0.05) return o.intervalMs;
  return Math.min(o.maxIntervalMs, Math.max(o.intervalMs, Math.round(passMs * 100)));
}

/** Runs collectConntrack every intervalMs or more (nextGcDelay) until the returned function is called. */
export function startConntrackGc(
  mapPath: string,
  opts: {
    intervalMs?: number;
    maxIntervalMs?: number;
    onResult?: (r: GcResult) => void;
    onError?: (e: unknown) => void;
  } = {},
): () => void {
  const intervalMs = opts.intervalMs ?? 30_000;
  const o = { intervalMs, maxIntervalMs: Math.max(intervalMs, opts.maxIntervalMs ?? 300_000) };
  let timer: ReturnType<typeof setTimeout> | undefined;
  const pass = () => {
    let delay = intervalMs;
    try {
      const t = performance.now();
      const r = collectConntrack(mapPath);
      delay = nextGcDelay(r, performance.now() - t, o);
      opts.onResult?.(r);
    } catch (e) {
      opts.onError?.(e);
    }
    if (timer !== undefined) timer = setTimeout(pass, delay);
  };
  timer = setTimeout(pass, intervalMs);
  return () => {
    clearTimeout(timer);
    timer = undefined;
  };
}
