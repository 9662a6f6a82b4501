// Steps a set of NFA threads over one rune (Thompson simulation, no backtracking): each step
// visits every instruction at most once, so matching costs O(input × program). The DFA caches
// these steps; this module owns only the set arithmetic and the empty-width context rules, never a
// cache. This module is browser compatible.
//
// A thread set lists RUNE, MATCH and pending ASSERT instructions, sorted. An assertion is pending
// when it needs the rune after the current position (`$`, `\z`, `\b`, `\B`); `^` and `\A` only need
// the rune before and are settled at once. The context of a position is a CTX_* bit set.

import {
  ASSERT_BEGIN_LINE,
  ASSERT_BEGIN_TEXT,
  ASSERT_END_LINE,
  ASSERT_END_TEXT,
  ASSERT_WORD_BOUNDARY,
} from "./ast";
import { OP_ASSERT, OP_JMP, OP_MATCH, OP_RUNE, OP_SPLIT, Program } from "./program";
import { isWordRune } from "./utf8";

/** Start or end of the input. */
export const CTX_EDGE: i32 = 1;
export const CTX_NEWLINE: i32 = 2;
export const CTX_WORD: i32 = 4;
/** The rune after the position is not known yet. */
const CTX_UNKNOWN: i32 = -1;

/** The context bits of rune `r` as the neighbour of a position. */
export function runeContext(r: i32): i32 {
  if (r == 0x0a) return CTX_NEWLINE;
  return isWordRune(r) ? CTX_WORD : 0;
}

export class Stepper {
  prog: Program;
  /** mark[pc] == gen when pc was visited in the current pass. */
  mark: StaticArray<i32>;
  gen: i32 = 0;
  stack: StaticArray<i32>;
  work: StaticArray<i32>;
  workLen: i32 = 0;
  /** The result of start() or step(): a sorted set and its context (0 unless it has asserts). */
  next: StaticArray<i32>;
  nextLen: i32 = 0;
  nextContext: i32 = 0;

  constructor(prog: Program) {
    const n = prog.length;
    this.prog = prog;
    this.mark = new StaticArray<i32>(n);
    this.stack = new StaticArray<i32>(n);
    this.work = new StaticArray<i32>(n);
    this.next = new StaticArray<i32>(n);
  }

  /** The threads at the start of the input; sorted when `canonical` (for the DFA). */
  start(canonical: bool): void {
    this._clear();
    this.nextLen = 0;
    this._follow(0, CTX_EDGE, CTX_UNKNOWN, true);
    this._finish(CTX_EDGE, canonical);
  }

  /**
   * The threads after `set[off, off+len)`, with context `ctx`, consumes rune `r`; sorted when
   * `canonical`.
   */
  step(set: StaticArray<i32>, off: i32, len: i32, ctx: i32, r: i32, canonical: bool): void {
    const after = runeContext(r);
    this._clear();
    this.workLen = 0;
    for (let i = 0; i < len; i++) this._follow(unchecked(set[off + i]), ctx, after, false);
    this._clear();
    this.nextLen = 0;
    const prog = this.prog;
    for (let i = 0; i < this.workLen; i++) {
      const pc = unchecked(this.work[i]);
      if (unchecked(prog.op[pc]) != OP_RUNE) continue;
      if (!prog.inList(unchecked(prog.arg[pc]), r)) continue;
      this._follow(unchecked(prog.out[pc]), after, CTX_UNKNOWN, true);
    }
    this._finish(after, canonical);
  }

  /** True when the threads `set[off, off+len)` with context `ctx` match at the end of input. */
  acceptsAtEnd(set: StaticArray<i32>, off: i32, len: i32, ctx: i32): bool {
    return this.matchesAtEnd(set, off, len, ctx) != 0;
  }

  /** The patterns (bit i: OP_MATCH arg i) the threads `set[off, off+len)` match at the end. */
  matchesAtEnd(set: StaticArray<i32>, off: i32, len: i32, ctx: i32): u32 {
    this._clear();
    this.workLen = 0;
    for (let i = 0; i < len; i++) this._follow(unchecked(set[off + i]), ctx, CTX_EDGE, false);
    const prog = this.prog;
    let mask: u32 = 0;
    for (let i = 0; i < this.workLen; i++) {
      const pc = unchecked(this.work[i]);
      if (unchecked(prog.op[pc]) == OP_MATCH) mask |= (<u32> 1) << <u32> unchecked(prog.arg[pc]);
    }
    return mask;
  }

  private _clear(): void {
    if (this.gen == i32.MAX_VALUE) {
      this.mark.fill(0);
      this.gen = 0;
    }
    this.gen++;
  }

  /** Adds the closure of `pc` to next (toNext) or work; `after` may be CTX_UNKNOWN. */
  private _follow(pc: i32, before: i32, after: i32, toNext: bool): void {
    const prog = this.prog;
    const mark = this.mark;
    const stack = this.stack;
    const gen = this.gen;
    if (unchecked(mark[pc]) == gen) return;
    unchecked(mark[pc] = gen);
    unchecked(stack[0] = pc);
    let sp = 1;
    while (sp > 0) {
      const p = unchecked(stack[--sp]);
      const op = unchecked(prog.op[p]);
      let a = -1;
      let b = -1;
      if (op == OP_JMP) {
        a = unchecked(prog.out[p]);
      } else if (op == OP_SPLIT) {
        a = unchecked(prog.out[p]);
        b = unchecked(prog.arg[p]);
      } else if (op == OP_ASSERT) {
        const kind = unchecked(prog.arg[p]);
        if (after == CTX_UNKNOWN && _needsAfter(kind)) this._emit(p, toNext);
        else if (_assertHolds(kind, before, after)) a = unchecked(prog.out[p]);
      } else {
        this._emit(p, toNext);
      }
      if (a >= 0 && unchecked(mark[a]) != gen) {
        unchecked(mark[a] = gen);
        unchecked(stack[sp++] = a);
      }
      if (b >= 0 && unchecked(mark[b]) != gen) {
        unchecked(mark[b] = gen);
        unchecked(stack[sp++] = b);
      }
    }
  }

  /**
   * Sorts next. A large set is rebuilt by scanning the program for the instructions marked in
   * this pass that _follow() emits, which beats a comparison sort once the set is dense.
   */
  private _sort(): void {
    const len = this.nextLen;
    const prog = this.prog;
    const n = prog.length;
    if (len <= 32 || n > len * 16) {
      sortInts(this.next, len);
      return;
    }
    const mark = this.mark;
    const gen = this.gen;
    let k = 0;
    for (let pc = 0; pc < n; pc++) {
      if (unchecked(mark[pc]) != gen) continue;
      const op = unchecked(prog.op[pc]);
      if (op == OP_RUNE || op == OP_MATCH || (op == OP_ASSERT && _needsAfter(prog.arg[pc]))) {
        unchecked(this.next[k++] = pc);
      }
    }
  }

  private _emit(pc: i32, toNext: bool): void {
    if (toNext) unchecked(this.next[this.nextLen++] = pc);
    else unchecked(this.work[this.workLen++] = pc);
  }

  /** Sorts next if asked and sets its context: kept only when a pending assertion needs it. */
  private _finish(ctx: i32, canonical: bool): void {
    const set = this.next;
    const len = this.nextLen;
    if (canonical) this._sort();
    const op = this.prog.op;
    this.nextContext = 0;
    for (let i = 0; i < len; i++) {
      if (unchecked(op[unchecked(set[i])]) == OP_ASSERT) {
        this.nextContext = ctx;
        break;
      }
    }
  }
}

function _needsAfter(kind: i32): bool {
  return kind != ASSERT_BEGIN_TEXT && kind != ASSERT_BEGIN_LINE;
}

/** Numbered rules for each ASSERT_* kind, `before`/`after` being CTX_* bits of the neighbours. */
function _assertHolds(kind: i32, before: i32, after: i32): bool {
  // 1. `\A`, `^`: at the start; `^` under (?m) also right after a newline.
  if (kind == ASSERT_BEGIN_TEXT) return (before & CTX_EDGE) != 0;
  if (kind == ASSERT_BEGIN_LINE) return (before & (CTX_EDGE | CTX_NEWLINE)) != 0;
  // 2. `\z`, `$`: at the end; `$` under (?m) also right before a newline.
  if (kind == ASSERT_END_TEXT) return (after & CTX_EDGE) != 0;
  if (kind == ASSERT_END_LINE) return (after & (CTX_EDGE | CTX_NEWLINE)) != 0;
  // 3. `\b` between an ASCII word rune and a non-word rune or an edge; `\B` elsewhere.
  const boundary = ((before & CTX_WORD) != 0) != ((after & CTX_WORD) != 0);
  return kind == ASSERT_WORD_BOUNDARY ? boundary : !boundary;
}

/** Sorts `a[0, len)` ascending: insertion sort for short sets, heapsort beyond. */
export function sortInts(a: StaticArray<i32>, len: i32): void {
  if (len <= 24) {
    for (let i = 1; i < len; i++) {
      const v = unchecked(a[i]);
      let j = i - 1;
      while (j >= 0 && unchecked(a[j]) > v) {
        unchecked(a[j + 1] = a[j]);
        j--;
      }
      unchecked(a[j + 1] = v);
    }
    return;
  }
  for (let i = (len >> 1) - 1; i >= 0; i--) _siftDown(a, i, len);
  for (let end = len - 1; end > 0; end--) {
    const t = unchecked(a[0]);
    unchecked(a[0] = a[end]);
    unchecked(a[end] = t);
    _siftDown(a, 0, end);
  }
}

function _siftDown(a: StaticArray<i32>, root: i32, len: i32): void {
  while (true) {
    let child = 2 * root + 1;
    if (child >= len) return;
    if (child + 1 < len && unchecked(a[child + 1]) > unchecked(a[child])) child++;
    if (unchecked(a[root]) >= unchecked(a[child])) return;
    const t = unchecked(a[root]);
    unchecked(a[root] = a[child]);
    unchecked(a[child] = t);
    root = child;
  }
}
