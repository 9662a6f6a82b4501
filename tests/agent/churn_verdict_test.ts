// The churn bench's verdicts (scripts/bench/_churn_verdict.ts): judged on memory after full
// collections, so a leak shows however the heap before collection moved, and a heap that only
// looked big before collection passes.

import assert from "node:assert/strict";
import { type RoundFigures, verdicts } from "../../scripts/bench/_churn_verdict.ts";

/** Rounds 0..n with these figures after GC (heap, RSS) and a noisy heap before it. */
function rounds(heap: number[], rss: number[], strings: number[] = []): RoundFigures[] {
  return heap.map((h, i) => ({
    round: i,
    rssMb: rss[i]! + 30 * (i % 3),
    heapMb: h + 40 * (i % 2),
    gc: { heapMb: h, rssMb: rss[i]!, externalMb: 35, wasmMb: 1, engineStrings: strings[i] ?? 90 },
    fds: 65,
    identities: 0,
    endpoints: 0,
    seconds: 30,
  }));
}

Deno.test("churn verdict: flat after GC is met, however the heap before GC swings", () => {
  const [heap, rss, strings] = verdicts(
    rounds(
      [18.9, 21.0, 21.3, 21.6, 21.7, 21.8, 21.9, 21.9, 21.9, 21.9, 22.0],
      [134.7, 144.1, 146.4, 147.6, 147.8, 147.9, 148.9, 149.3, 149.5, 149.6, 149.3],
    ),
    100,
  );
  assert.match(heap!, /round 10 vs round 1: 22\.0 \/ 21\.0 MB = 1\.05x \(target <= 1\.1x: met\)/);
  assert.match(rss!, /149\.3 \/ 144\.1 MB = 1\.04x \(target <= 1\.1x: met\)/);
  assert.match(strings!, /round 10 vs round 1: 90 \/ 90 \(target: no more: met\)/);
});

Deno.test("churn verdict: 4 KB per pod kept on the heap, 60 KB native, 2 strings: all MISSED", () => {
  const heap = Array.from({ length: 11 }, (_, i) => 21 + (i * 100 * 4096) / 1048576);
  const rss = Array.from({ length: 11 }, (_, i) => 145 + (i * 100 * 61440) / 1048576);
  const strings = Array.from({ length: 11 }, (_, i) => 90 + i * 200);
  const [h, r, s] = verdicts(rounds(heap, rss, strings), 100);
  assert.match(s!, /round 10 vs round 1: 2090 \/ 290 \(target: no more: MISSED\)/);
  assert.match(h!, /target <= 1\.1x: MISSED\); per pod churned 4096 bytes, 4096 from round 5/);
  assert.match(r!, /target <= 1\.1x: MISSED\); per pod churned 61440 bytes/);
});

Deno.test("churn verdict: one round cannot be judged", () => {
  assert.deepEqual(verdicts(rounds([19, 21], [150, 200]), 100), [
    "Heap after full GC: needs at least 2 rounds to judge",
    "RSS after full GC and malloc_trim: needs at least 2 rounds to judge",
    "Policy engine strings: needs at least 2 rounds to judge",
  ]);
});
