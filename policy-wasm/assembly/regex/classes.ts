// Partitions the runes into classes that no instruction of a program can tell apart, so the DFA
// needs one transition per class instead of one per rune: ASCII runes map through a 128-entry
// table, others through a binary search of the class boundaries. When the program has assertions,
// `\n` and the word runes are kept apart from the rest, as the context depends on them. This
// module is browser compatible.

import { Program } from "./program";
import { RUNE_LIMIT } from "./utf8";

/** Above this many interval×list visits the partition is not minimised (one class per interval). */
const MAX_REFINE_WORK: i32 = 1 << 22;
/** `\n` and `[0-9A-Z_a-z]` as interval boundaries (start, end+1). */
const CONTEXT_BOUNDS: StaticArray<i32> = [
  0x0a,
  0x0b,
  0x30,
  0x3a,
  0x41,
  0x5b,
  0x5f,
  0x60,
  0x61,
  0x7b,
];

export class RuneClasses {
  /** Interval i covers runes [starts[i], starts[i+1]) (the last one up to RUNE_LIMIT). */
  starts: StaticArray<i32>;
  intervalClass: StaticArray<i32>;
  ascii: StaticArray<i32> = new StaticArray<i32>(128);
  /** One rune of each class, to step the NFA with. */
  rep: StaticArray<i32>;
  count: i32;

  constructor(starts: StaticArray<i32>, intervalClass: StaticArray<i32>, count: i32) {
    this.starts = starts;
    this.intervalClass = intervalClass;
    this.count = count;
    this.rep = new StaticArray<i32>(count);
    this.rep.fill(-1);
    for (let i = starts.length - 1; i >= 0; i--) {
      unchecked(this.rep[intervalClass[i]] = starts[i]);
    }
    for (let r = 0; r < 128; r++) unchecked(this.ascii[r] = this.classOfSlow(r));
  }

  /** The class of rune `r` (RUNE_INVALID included). */
  @inline
  classOf(r: i32): i32 {
    return r < 128 ? unchecked(this.ascii[r]) : this.classOfSlow(r);
  }

  classOfSlow(r: i32): i32 {
    const starts = this.starts;
    let lo = 0;
    let hi = starts.length;
    while (hi - lo > 1) {
      const mid = (lo + hi) >>> 1;
      if (unchecked(starts[mid]) <= r) lo = mid;
      else hi = mid;
    }
    return unchecked(this.intervalClass[lo]);
  }
}

/** Builds the rune classes of `prog`. */
export function buildRuneClasses(prog: Program): RuneClasses {
  const starts = _intervalStarts(prog);
  const k = starts.length;
  const cls = new StaticArray<i32>(k);
  const lists = prog.listCount + (prog.hasAsserts ? 2 : 0);
  if (<i64> lists * <i64> k > <i64> MAX_REFINE_WORK) {
    for (let i = 0; i < k; i++) unchecked(cls[i] = i);
    return new RuneClasses(starts, cls, k);
  }
  let count = 1;
  const inside = new StaticArray<bool>(k);
  for (let l = 0; l < prog.listCount; l++) {
    for (let i = 0; i < k; i++) unchecked(inside[i] = prog.inList(l, unchecked(starts[i])));
    count = _refine(cls, inside, count);
  }
  if (prog.hasAsserts) {
    for (let i = 0; i < k; i++) unchecked(inside[i] = starts[i] == 0x0a);
    count = _refine(cls, inside, count);
    for (let i = 0; i < k; i++) {
      const r = unchecked(starts[i]);
      unchecked(inside[i] = r >= 0x30 && r < 0x7b && _inWordBounds(r));
    }
    count = _refine(cls, inside, count);
  }
  return new RuneClasses(starts, cls, count);
}

/** Splits every class by membership in `inside`; returns the new class count. */
function _refine(cls: StaticArray<i32>, inside: StaticArray<bool>, count: i32): i32 {
  const remap = new StaticArray<i32>(2 * count);
  remap.fill(-1);
  let next = 0;
  for (let i = 0; i < cls.length; i++) {
    const key = 2 * unchecked(cls[i]) + (unchecked(inside[i]) ? 1 : 0);
    let c = unchecked(remap[key]);
    if (c < 0) {
      c = next++;
      unchecked(remap[key] = c);
    }
    unchecked(cls[i] = c);
  }
  return next;
}

function _inWordBounds(r: i32): bool {
  return r <= 0x39 || (r >= 0x41 && r <= 0x5a) || r == 0x5f || r >= 0x61;
}

/** Sorted, distinct starts of the intervals between all list boundaries, beginning with 0. */
function _intervalStarts(prog: Program): StaticArray<i32> {
  const pts = new Array<i32>();
  pts.push(0);
  const ranges = prog.ranges;
  for (let i = 0; i < ranges.length; i += 2) {
    pts.push(unchecked(ranges[i]));
    pts.push(unchecked(ranges[i + 1]) + 1);
  }
  if (prog.hasAsserts) {
    for (let i = 0; i < CONTEXT_BOUNDS.length; i++) pts.push(unchecked(CONTEXT_BOUNDS[i]));
  }
  pts.sort();
  const out = new Array<i32>();
  for (let i = 0; i < pts.length; i++) {
    const v = unchecked(pts[i]);
    if (v >= RUNE_LIMIT) break;
    if (out.length == 0 || unchecked(out[out.length - 1]) != v) out.push(v);
  }
  return StaticArray.fromArray<i32>(out);
}
