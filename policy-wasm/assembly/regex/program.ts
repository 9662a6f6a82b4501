// The compiled form of a pattern: a Thompson NFA as flat instruction arrays plus the rune lists
// the RUNE instructions test. Immutable once built; shared by the NFA stepper, the rune-class
// builder and the DFA. This module is browser compatible and holds no matching state.

/** Consumes one rune that lies in rune list `arg`, then continues at `out`. */
export const OP_RUNE: i32 = 0;
/** The whole pattern matched (a full match also needs the input to end here). */
export const OP_MATCH: i32 = 1;
/** Continues at `out`. */
export const OP_JMP: i32 = 2;
/** Continues at both `out` and `arg`. */
export const OP_SPLIT: i32 = 3;
/** Continues at `out` if the empty-width assertion `arg` (an ASSERT_* kind) holds. */
export const OP_ASSERT: i32 = 4;

export class Program {
  op: StaticArray<i32>;
  out: StaticArray<i32>;
  arg: StaticArray<i32>;
  /** Rune list `l` is the inclusive ranges ranges[2*listStart[l] ...] of listLen[l] pairs. */
  listStart: StaticArray<i32>;
  listLen: StaticArray<i32>;
  ranges: StaticArray<i32>;
  /** True when some instruction is an OP_ASSERT, so matching must track the context. */
  hasAsserts: bool;

  constructor(
    op: Array<i32>,
    out: Array<i32>,
    arg: Array<i32>,
    lists: Array<i32>,
    ranges: Array<i32>,
    hasAsserts: bool,
  ) {
    this.op = StaticArray.fromArray<i32>(op);
    this.out = StaticArray.fromArray<i32>(out);
    this.arg = StaticArray.fromArray<i32>(arg);
    const n = lists.length >> 1;
    const listStart = new StaticArray<i32>(n);
    const listLen = new StaticArray<i32>(n);
    for (let i = 0; i < n; i++) {
      unchecked(listStart[i] = lists[2 * i]);
      unchecked(listLen[i] = lists[2 * i + 1]);
    }
    this.listStart = listStart;
    this.listLen = listLen;
    this.ranges = StaticArray.fromArray<i32>(ranges);
    this.hasAsserts = hasAsserts;
  }

  get length(): i32 {
    return this.op.length;
  }

  get listCount(): i32 {
    return this.listStart.length;
  }

  /** True when rune `r` lies in rune list `list`. */
  inList(list: i32, r: i32): bool {
    const ranges = this.ranges;
    let lo = unchecked(this.listStart[list]);
    let hi = lo + unchecked(this.listLen[list]);
    while (hi - lo > 4) {
      const mid = (lo + hi) >>> 1;
      if (r < unchecked(ranges[2 * mid])) hi = mid;
      else lo = mid;
    }
    for (let i = lo; i < hi; i++) {
      if (r < unchecked(ranges[2 * i])) return false;
      if (r <= unchecked(ranges[2 * i + 1])) return true;
    }
    return false;
  }
}
