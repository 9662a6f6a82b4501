// The cursor and flags the parser modules share: where it is in the UTF-8 pattern, which `(?imsU)`
// flags are on, and the first error it met. Also builds the literal and `.` nodes, which depend on
// the flags. This module is browser compatible; it never throws.

import { classNode, Node } from "./ast";
import { REGEX_ERR_BAD_UTF8 } from "./errors";
import { Ranges } from "./ranges";
import { decodeRune, RUNE_INVALID } from "./utf8";

/** `(?i)`: case-insensitive. Same bit as the public REGEX_CASE_INSENSITIVE. */
export const FLAG_FOLD: i32 = 1;
/** `(?s)`: `.` also matches `\n`. */
export const FLAG_DOT_NL: i32 = 2;
/** `(?m)`: `^` and `$` also match at line boundaries. */
export const FLAG_MULTI_LINE: i32 = 4;
/** `(?U)`: swaps greedy and lazy repeats; has no effect on a full-match test. */
export const FLAG_UNGREEDY: i32 = 8;

export class ParseState {
  base: usize;
  len: i32;
  pos: i32 = 0;
  flags: i32;
  depth: i32 = 0;
  err: i32 = 0;
  errPos: i32 = 0;
  /** The counts of the last `{n,m}` read: max -1 when unbounded. */
  repMin: i32 = 0;
  repMax: i32 = 0;
  /** Start and length of every group name seen, to reject duplicates. */
  names: Array<i32> = new Array<i32>();

  constructor(base: usize, len: i32, flags: i32) {
    this.base = base;
    this.len = len;
    this.flags = flags;
  }

  /** The byte `k` places ahead of the cursor, or -1 past the end. */
  peek(k: i32 = 0): i32 {
    const at = this.pos + k;
    return at < this.len ? <i32> load<u8>(this.base + <usize> at) : -1;
  }

  atEnd(): bool {
    return this.pos >= this.len;
  }

  /** Records the first error; returns false so callers can `return st.fail(...)`. */
  fail(code: i32, at: i32): bool {
    if (this.err == 0) {
      this.err = code;
      this.errPos = at;
    }
    return false;
  }

  /** Decodes the rune at the cursor and advances past it; -1 (and an error) on bad UTF-8. */
  nextRune(): i32 {
    const d = decodeRune(this.base + <usize> this.pos, this.base + <usize> this.len);
    const r = d & 0xffffff;
    if (r == RUNE_INVALID) {
      this.fail(REGEX_ERR_BAD_UTF8, this.pos);
      return -1;
    }
    this.pos += d >>> 24;
    return r;
  }

  /** A node matching rune `r`, case-folded under `(?i)`. */
  literal(r: i32): Node {
    const set = new Ranges();
    set.add(r, r);
    if ((this.flags & FLAG_FOLD) != 0) set.fold();
    return classNode(set);
  }

  /** The node for `.`: any rune but `\n`, or any rune at all under `(?s)`. */
  anyChar(): Node {
    const set = new Ranges();
    if ((this.flags & FLAG_DOT_NL) != 0) {
      set.add(0, RUNE_INVALID);
    } else {
      set.add(0, 0x09);
      set.add(0x0b, RUNE_INVALID);
    }
    return classNode(set);
  }
}
