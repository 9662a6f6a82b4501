/**
 * Deterministic randomness for the fuzz tests: a seeded PRNG (mulberry32) with the helpers the
 * generators need, and the run's seed and size. `CILIA_FUZZ_SEED=n` explores another seed and
 * `CILIA_FUZZ_SCALE=k` multiplies the iteration counts (both default to the committed values, so
 * a plain `deno test` is reproducible); a failure message always names the seed that found it.
 */

import { prng } from "../helpers/prng.ts";

export class Rand {
  #next: () => number;

  constructor(readonly seed: number) {
    this.#next = prng(seed);
  }

  /** A float in [0, 1). */
  next(): number {
    return this.#next();
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  u32(): number {
    return (this.int(0x10000) * 0x10000 + this.int(0x10000)) >>> 0;
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError("Cannot pick from an empty list");
    return items[this.int(items.length)]!;
  }

  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }

  /** A fresh generator whose sequence depends on this one's (for independent sub-streams). */
  fork(): Rand {
    return new Rand(this.u32());
  }
}

function envNumber(name: string): number | undefined {
  const v = Deno.env.get(name);
  if (v === undefined || v === "") return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new RangeError(`Invalid ${name} "${v}": expected a number`);
  return n;
}

/** The seed of a fuzz test: `base` unless CILIA_FUZZ_SEED is set. */
export function fuzzSeed(base: number): number {
  return (envNumber("CILIA_FUZZ_SEED") ?? base) >>> 0;
}

/** An iteration count scaled by CILIA_FUZZ_SCALE (default 1). */
export function iterations(n: number): number {
  return Math.max(1, Math.round(n * (envNumber("CILIA_FUZZ_SCALE") ?? 1)));
}

export function hex(bytes: Uint8Array, max = 512): string {
  const s = [...bytes.subarray(0, max)].map((b) => b.toString(16).padStart(2, "0")).join("");
  return bytes.length > max ? `${s}…(${bytes.length} bytes)` : s;
}

/** Collects failures and reports them together, the first few in full. */
export class Findings {
  readonly list: string[] = [];

  add(what: string): void {
    this.list.push(what);
  }

  assertNone(what: string, seed: number): void {
    if (this.list.length === 0) return;
    const shown = this.list.slice(0, 8).map((f) => `  - ${f}`).join("\n");
    throw new Error(
      `${what}: ${this.list.length} finding(s) with seed ${seed}:\n${shown}` +
        (this.list.length > 8 ? `\n  … and ${this.list.length - 8} more` : ""),
    );
  }
}
