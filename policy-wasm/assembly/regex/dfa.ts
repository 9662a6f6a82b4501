// A lazily built DFA over rune classes that caches the NFA steps: a state is a sorted thread set
// plus its context, a transition is computed by the Stepper the first time it is taken. The cache
// is bounded (MAX_ENTRIES transitions, MAX_POOL thread ids); when full it is flushed and rebuilt
// from the current state, and a match that keeps flushing finishes on the plain NFA. Either way
// the cost stays O(input × program). A program may hold a set of patterns (one OP_MATCH each):
// a state then knows which of them match at the end, so one pass answers for all of them, and
// matchBatch() walks many ASCII inputs on built transitions without leaving its loop. This module
// is browser compatible.

import { buildRuneClasses, RuneClasses } from "./classes";
import { Stepper } from "./nfa";
import { Program } from "./program";
import { decodeRune } from "./utf8";

/** Transition-table budget in entries (4 bytes each). */
const MAX_ENTRIES: i32 = 1 << 18;
/** Thread-id budget of the state pool. */
const MAX_POOL: i32 = 1 << 18;
const MAX_STATES: i32 = 4096;
/** Below this many states the cache is not worth it and matching uses the NFA alone. */
const MIN_STATES: i32 = 16;
/** Flushes within one match before it finishes on the NFA. */
const MAX_FLUSHES_PER_MATCH: i32 = 8;
const UNKNOWN: i32 = -1;
const DEAD: i32 = -2;

export class Dfa {
  prog: Program;
  stepper: Stepper;
  classes: RuneClasses;
  ncls: i32;
  /** Entries per transition row: ncls rounded up to a power of two. */
  stride: i32;
  /**
   * Bytes per transition row are 1 << rowShift; a "row" below is a state's byte offset in trans
   * (state << rowShift), so row >> rowShift is the state.
   */
  rowShift: i32;
  /**
   * classes.ascii pre-multiplied by 4, to index trans by bytes; bytes from 0x80 map to column
   * ncls, which no class uses, so its entries stay UNKNOWN and send matchBatch() to the slow path.
   */
  ascii4: StaticArray<i32> = new StaticArray<i32>(256);
  maxStates: i32;
  nfaOnly: bool;
  /** The entry at byte offset row + 4 × cls: the row reached on class cls, UNKNOWN or DEAD. */
  trans: StaticArray<i32> = new StaticArray<i32>(0);
  setOff: StaticArray<i32> = new StaticArray<i32>(0);
  setLen: StaticArray<i32> = new StaticArray<i32>(0);
  context: StaticArray<i32> = new StaticArray<i32>(0);
  /** The patterns the state matches at the end of input (a u32 mask), or -1 until first asked. */
  accept: StaticArray<i64> = new StaticArray<i64>(0);
  pool: StaticArray<i32> = new StaticArray<i32>(64);
  poolLen: i32 = 0;
  /** Open-addressing index of the states: state + 1, or 0 when free. */
  index: StaticArray<i32> = new StaticArray<i32>(0);
  nstates: i32 = 0;
  startRow: i32 = UNKNOWN;
  flushes: i32 = 0;

  constructor(prog: Program) {
    this.prog = prog;
    this.stepper = new Stepper(prog);
    this.classes = buildRuneClasses(prog);
    this.ncls = this.classes.count;
    let stride = 1;
    while (stride <= this.ncls) stride <<= 1; // one spare column (see ascii4)
    this.stride = stride;
    this.rowShift = 2 + ctz(stride);
    for (let b = 0; b < 128; b++) unchecked(this.ascii4[b] = this.classes.ascii[b] << 2);
    for (let b = 128; b < 256; b++) unchecked(this.ascii4[b] = this.ncls << 2);
    this.maxStates = min(MAX_STATES, MAX_ENTRIES / stride);
    this.nfaOnly = this.maxStates < MIN_STATES;
    let size = 16;
    while (size < 2 * this.maxStates) size <<= 1;
    this.index = new StaticArray<i32>(this.nfaOnly ? 0 : size);
  }

  /** True when the `len` bytes at `ptr` match the whole pattern. */
  fullMatch(ptr: usize, len: i32): bool {
    return this.matches(ptr, len) != 0;
  }

  /**
   * The patterns that match the whole of the `len` bytes at `ptr`: bit i for the program's
   * OP_MATCH with arg i (one pattern: bit 0). One pass, whatever the number of patterns.
   */
  matches(ptr: usize, len: i32): u32 {
    const end = ptr + <usize> len;
    if (this.nfaOnly) {
      this.stepper.start(false);
      return this._finishOnNfa(ptr, end);
    }
    let row = this.startRow;
    if (row < 0) {
      this.stepper.start(true);
      row = this._intern();
      this.startRow = row;
    }
    const classes = this.classes;
    const firstFlush = this.flushes;
    // Raw addresses keep the hot loop free of GC bookkeeping; trans is re-read after a
    // transition is computed, as that may grow (reallocate) it.
    const ascii = changetype<usize>(this.ascii4);
    let trans = changetype<usize>(this.trans);
    let p = ptr;
    while (p < end) {
      const b = <usize> load<u8>(p);
      let cls4: i32;
      if (b < 0x80) {
        cls4 = load<i32>(ascii + (b << 2));
        p++;
      } else {
        const d = decodeRune(p, end);
        p += <usize> (d >>> 24);
        cls4 = classes.classOfSlow(d & 0xffffff) << 2;
      }
      let next = load<i32>(trans + <usize> (row + cls4));
      if (next < 0) {
        if (next == DEAD) return 0;
        next = this._transition(row, cls4);
        if (next == DEAD) return 0;
        if (this.flushes - firstFlush > MAX_FLUSHES_PER_MATCH) {
          this._loadState(next);
          return this._finishOnNfa(p, end);
        }
        trans = changetype<usize>(this.trans);
      }
      row = next;
    }
    return this._accepts(row >> this.rowShift);
  }

  /**
   * matches() of `n` inputs in one go: input i is the bytes from `bytes` + the end of input i-1
   * (0 for the first) to `bytes` + the u32 end at `ends` + 4i; its mask goes to the u32 at `out`
   * + 4i. The caller checked the ends. ASCII inputs on transitions already built stay in this
   * loop; any other goes through matches(), which builds what is missing.
   */
  matchBatch(bytes: usize, ends: usize, n: i32, out: usize): void {
    let start: usize = bytes;
    let row0 = this.startRow;
    let trans = changetype<usize>(this.trans);
    const ascii = changetype<usize>(this.ascii4);
    const shift = this.rowShift;
    for (let i = 0; i < n; i++) {
      const stop = bytes + <usize> load<u32>(ends + (<usize> i << 2));
      let row = row0;
      let p = start;
      // 0: walked to the end, 1: dead, 2: needs the slow path (not started, non-ASCII, not built)
      let how = 0;
      if (row < 0 || this.nfaOnly) {
        how = 2;
      } else {
        while (p < stop) {
          const next = load<i32>(
            trans + <usize> (row + load<i32>(ascii + (<usize> load<u8>(p) << 2))),
          );
          if (next < 0) {
            how = next == DEAD ? 1 : 2;
            break;
          }
          row = next;
          p++;
        }
      }
      let mask: u32 = 0;
      if (how == 0) { // p == stop
        const a = unchecked(this.accept[row >> shift]);
        mask = a >= 0 ? <u32> a : this._accepts(row >> shift);
      } else if (how == 2) {
        mask = this.matches(start, <i32> (stop - start));
        row0 = this.startRow;
        trans = changetype<usize>(this.trans);
      }
      store<u32>(out + (<usize> i << 2), mask);
      start = stop;
    }
  }

  private _accepts(s: i32): u32 {
    let a = unchecked(this.accept[s]);
    if (a < 0) {
      const off = unchecked(this.setOff[s]);
      const len = unchecked(this.setLen[s]);
      a = <i64> this.stepper.matchesAtEnd(this.pool, off, len, unchecked(this.context[s]));
      unchecked(this.accept[s] = a);
    }
    return <u32> a;
  }

  /** Computes, caches and returns the transition of `row` on the class at byte offset `cls4`. */
  private _transition(row: i32, cls4: i32): i32 {
    const s = row >> this.rowShift;
    const at = (row + cls4) >> 2;
    const r = unchecked(this.classes.rep[cls4 >> 2]);
    const off = unchecked(this.setOff[s]);
    const ctx = unchecked(this.context[s]);
    this.stepper.step(this.pool, off, unchecked(this.setLen[s]), ctx, r, true);
    if (this.stepper.nextLen == 0) {
      unchecked(this.trans[at] = DEAD);
      return DEAD;
    }
    const flushes = this.flushes;
    const next = this._intern();
    if (this.flushes == flushes) unchecked(this.trans[at] = next);
    return next;
  }

  /** Finds or adds the state held in stepper.next; returns its row. May flush the cache. */
  private _intern(): i32 {
    const st = this.stepper;
    const set = st.next;
    const len = st.nextLen;
    const ctx = st.nextContext;
    let h: u32 = (2166136261 ^ <u32> ctx) * 16777619;
    for (let i = 0; i < len; i++) h = (h ^ <u32> unchecked(set[i])) * 16777619;
    const mask = this.index.length - 1;
    let slot = <i32> (h & <u32> mask);
    while (true) {
      const id = unchecked(this.index[slot]) - 1;
      if (id < 0) break;
      if (this._sameState(id, set, len, ctx)) return id << this.rowShift;
      slot = (slot + 1) & mask;
    }
    if (this.nstates >= this.maxStates || this.poolLen + len > MAX_POOL) {
      this._flush();
      slot = <i32> (h & <u32> mask);
    }
    return this._add(slot, set, len, ctx);
  }

  private _add(slot: i32, set: StaticArray<i32>, len: i32, ctx: i32): i32 {
    const id = this.nstates++;
    this._reserve(this.nstates, this.poolLen + len);
    const off = this.poolLen;
    memory.copy(
      changetype<usize>(this.pool) + (<usize> off << 2),
      changetype<usize>(set),
      <usize> len << 2,
    );
    this.poolLen += len;
    unchecked(this.setOff[id] = off);
    unchecked(this.setLen[id] = len);
    unchecked(this.context[id] = ctx);
    unchecked(this.accept[id] = -1);
    const mask = this.index.length - 1;
    while (unchecked(this.index[slot]) != 0) slot = (slot + 1) & mask;
    unchecked(this.index[slot] = id + 1);
    return id << this.rowShift;
  }

  private _sameState(id: i32, set: StaticArray<i32>, len: i32, ctx: i32): bool {
    if (unchecked(this.setLen[id]) != len || unchecked(this.context[id]) != ctx) return false;
    const a = changetype<usize>(this.pool) + (<usize> unchecked(this.setOff[id]) << 2);
    return memory.compare(a, changetype<usize>(set), <usize> len << 2) == 0;
  }

  /** Grows the state arrays to hold `states` states and the pool to hold `pool` ids. */
  private _reserve(states: i32, pool: i32): void {
    if (states > this.setOff.length) {
      const cap = min(this.maxStates, max(16, this.setOff.length * 2));
      this.setOff = _grow<i32>(this.setOff, cap);
      this.setLen = _grow<i32>(this.setLen, cap);
      this.context = _grow<i32>(this.context, cap);
      this.accept = _grow<i64>(this.accept, cap);
      const old = this.trans.length;
      this.trans = _grow<i32>(this.trans, cap * this.stride);
      for (let i = old; i < this.trans.length; i++) unchecked(this.trans[i] = UNKNOWN);
    }
    if (pool > this.pool.length) {
      let cap = this.pool.length;
      while (cap < pool) cap <<= 1;
      this.pool = _grow<i32>(this.pool, cap);
    }
  }

  private _flush(): void {
    this.flushes++;
    this.nstates = 0;
    this.poolLen = 0;
    this.startRow = UNKNOWN;
    this.index.fill(0);
    this.trans.fill(UNKNOWN);
  }

  /** Puts the thread set of the state at `row` into stepper.next. */
  private _loadState(row: i32): void {
    const s = row >> this.rowShift;
    const st = this.stepper;
    const len = unchecked(this.setLen[s]);
    memory.copy(
      changetype<usize>(st.next),
      changetype<usize>(this.pool) + (<usize> unchecked(this.setOff[s]) << 2),
      <usize> len << 2,
    );
    st.nextLen = len;
    st.nextContext = unchecked(this.context[s]);
  }

  /** Runs the plain NFA from the threads in stepper.next over [p, end). */
  private _finishOnNfa(p: usize, end: usize): u32 {
    const st = this.stepper;
    let cur = new StaticArray<i32>(st.next.length);
    while (p < end) {
      const d = decodeRune(p, end);
      p += <usize> (d >>> 24);
      const len = st.nextLen;
      const tmp = st.next;
      st.next = cur;
      cur = tmp;
      st.step(cur, 0, len, st.nextContext, d & 0xffffff, false);
      if (st.nextLen == 0) return 0;
    }
    return st.matchesAtEnd(st.next, 0, st.nextLen, st.nextContext);
  }
}

function _grow<T>(a: StaticArray<T>, cap: i32): StaticArray<T> {
  const b = new StaticArray<T>(cap);
  memory.copy(changetype<usize>(b), changetype<usize>(a), <usize> a.length << alignof<T>());
  return b;
}
