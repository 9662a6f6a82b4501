// The churn bench's figures per round and its verdicts (scripts/bench/churn_bench.ts).
//
// What is judged is memory after full collections, so that a leak cannot hide in, nor be faked by,
// the moment V8 last collected: the V8 heap after two last-resort full GCs (retained JS objects:
// maps keyed by endpoint or identity, listeners, closures), and the resident set after those GCs
// and glibc's malloc_trim (native memory the process still holds, which no heap figure shows: e.g.
// the ~100 KB per spawned process of denoland/deno#24674). Both compare the last round with round 1
// (round 1 warms up: JIT code, pools, caches); the growth per pod churned is printed with them,
// over all rounds and over the second half alone (a leak keeps growing there; warm-up has levelled
// off).

export interface RoundFigures {
  round: number;
  rssMb: number;
  heapMb?: number;
  externalMb?: number;
  wasmMb?: number;
  /**
   * After full collections (POST /v1/debug/gc): what a leak shows in; RSS also after glibc's
   * malloc_trim, so it counts what the process holds, not the allocator's free pages.
   */
  gc?: {
    rssMb: number;
    heapMb: number;
    externalMb: number;
    /** The policy engine's WASM memory (never shrinks) and interned strings. */
    wasmMb: number;
    engineStrings: number;
  };
  fds: number;
  identities: number;
  endpoints: number;
  seconds: number;
}

/** Heap after full GC, last round / round 1. */
export const HEAP_GROWTH_TARGET = 1.1;
/**
 * RSS after full GC and malloc_trim, last round / round 1: 1.04x over 10 rounds of 100 pods (4 Dec,
 * load 10-12); a native leak of 16 KB per pod misses it over such a run.
 */
export const RSS_GROWTH_TARGET = 1.1;

function judge(
  f: RoundFigures[],
  pods: number,
  what: string,
  pick: (x: RoundFigures) => number,
  target: number,
): string {
  const rounds = f.filter((x) => x.round >= 1 && x.gc !== undefined);
  if (rounds.length < 2) return `${what}: needs at least 2 rounds to judge`;
  const first = pick(rounds[0]!), last = pick(rounds.at(-1)!);
  const ratio = last / first;
  const perPod = (a: RoundFigures, b: RoundFigures) =>
    Math.round(((pick(b) - pick(a)) * 1024 * 1024) / (pods * (b.round - a.round)));
  const half = rounds[Math.floor((rounds.length - 1) / 2)]!;
  const tail = half.round < rounds.at(-1)!.round
    ? `, ${perPod(half, rounds.at(-1)!)} from round ${half.round}`
    : "";
  return `${what}, round ${rounds.at(-1)!.round} vs round 1: ${last.toFixed(1)} / ` +
    `${first.toFixed(1)} MB = ${ratio.toFixed(2)}x (target <= ${target}x: ` +
    `${ratio <= target ? "met" : "MISSED"}); per pod churned ` +
    `${perPod(rounds[0]!, rounds.at(-1)!)} bytes${tail}`;
}

/**
 * The judged lines: V8 heap after full GC, RSS after full GC and malloc_trim, and the policy
 * engine's strings (its WASM memory never shrinks and grows by doubling, so a leak there shows in
 * that figure late: at ~1,500 pods for the label strings it kept before 4 Dec).
 */
export function verdicts(f: RoundFigures[], pods: number): string[] {
  const rounds = f.filter((x) => x.round >= 1 && x.gc !== undefined);
  const strings = rounds.length < 2
    ? "Policy engine strings: needs at least 2 rounds to judge"
    : (() => {
      const [first, last] = [rounds[0]!.gc!, rounds.at(-1)!.gc!];
      return `Policy engine strings after round ${rounds.at(-1)!.round} vs round 1: ` +
        `${last.engineStrings} / ${first.engineStrings} (target: no more: ` +
        `${last.engineStrings <= first.engineStrings ? "met" : "MISSED"}), WASM memory ` +
        `${last.wasmMb.toFixed(1)} / ${first.wasmMb.toFixed(1)} MB`;
    })();
  return [
    judge(f, pods, "Heap after full GC", (x) => x.gc!.heapMb, HEAP_GROWTH_TARGET),
    judge(f, pods, "RSS after full GC and malloc_trim", (x) => x.gc!.rssMb, RSS_GROWTH_TARGET),
    strings,
  ];
}
