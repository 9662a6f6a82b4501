/**
 * Where identities live in the kvstore, and how their values are encoded:
 *
 * - `cilia/identities/id/<n>` → `{"labels":[…]}`: the identity; authoritative. Creating it if
 *   absent is the allocation race: whoever creates it owns the number for those labels.
 * - `cilia/identities/labels/<sha256>` → `"<n>"`: index from a label set to its number; repaired
 *   from the id keys when it is missing or stale.
 * - `cilia/identities/refs/<n>/<node>` → `{"node":…}`: node `<node>` uses identity `<n>`; put
 *   with the node's lease, so a crashed node's references expire.
 *
 * Pure: no I/O beyond hashing.
 */

import { createHash } from "node:crypto";

export const IDENTITIES_PREFIX = "cilia/identities/";
export const ID_PREFIX = "cilia/identities/id/";
export const LABELS_PREFIX = "cilia/identities/labels/";
export const REFS_PREFIX = "cilia/identities/refs/";

const enc = new TextEncoder();
const dec = new TextDecoder();

export const idKey = (n: number): string => `${ID_PREFIX}${n}`;
export const labelsKey = (hash: string): string => `${LABELS_PREFIX}${hash}`;
export const refPrefix = (n: number): string => `${REFS_PREFIX}${n}/`;
export const refKey = (n: number, node: string): string => `${REFS_PREFIX}${n}/${node}`;

/** The number in an id key, or undefined for another key. */
export function parseIdKey(key: string): number | undefined {
  if (!key.startsWith(ID_PREFIX)) return undefined;
  const rest = key.slice(ID_PREFIX.length);
  return /^\d+$/.test(rest) ? Number(rest) : undefined;
}

/** `{id, node}` of a reference key, or undefined. */
export function parseRefKey(key: string): { id: number; node: string } | undefined {
  const m = /^(\d+)\/(.+)$/.exec(key.slice(REFS_PREFIX.length));
  if (!key.startsWith(REFS_PREFIX) || m === null) return undefined;
  return { id: Number(m[1]), node: m[2]! };
}

export function encodeIdentity(labels: readonly string[]): Uint8Array {
  return enc.encode(JSON.stringify({ labels }));
}

/** The labels of an identity value, or null when it is not one of ours. */
export function decodeIdentity(value: Uint8Array): string[] | null {
  try {
    const v = JSON.parse(dec.decode(value)) as { labels?: unknown };
    if (!Array.isArray(v.labels) || !v.labels.every((l) => typeof l === "string")) return null;
    return v.labels as string[];
  } catch {
    return null;
  }
}

export function encodeNumber(n: number): Uint8Array {
  return enc.encode(String(n));
}

export function decodeNumber(value: Uint8Array): number | undefined {
  const t = dec.decode(value);
  return /^\d+$/.test(t) ? Number(t) : undefined;
}

export function sameLabels(a: readonly string[] | null, b: readonly string[]): boolean {
  return a !== null && a.length === b.length && a.every((l, i) => l === b[i]);
}

/** The canonical form of a label set: sorted, de-duplicated. */
export function canonicalLabels(labels: readonly string[]): string[] {
  return [...new Set(labels)].sort();
}

/**
 * The label set's sha256 (hex, for the index key) and its first 32 bits (the probe start).
 * Hashed synchronously (node:crypto): WebCrypto's digest is a hop to Deno's thread pool, once
 * per identity lookup of every CNI ADD.
 */
export function hashLabels(
  labels: readonly string[],
): Promise<{ hex: string; start: number }> {
  const hex = createHash("sha256").update(JSON.stringify(labels)).digest("hex");
  return Promise.resolve({ hex, start: parseInt(hex.slice(0, 8), 16) });
}
