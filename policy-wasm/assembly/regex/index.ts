// The regular-expression engine's API for the rest of the policy engine: compile an RE2 pattern
// (UTF-8) once, then test inputs for a FULL match (the pattern is anchored at both ends, as in
// Cilium's and Envoy's HTTP rules). Matching is linear in the input: a lazily built DFA over a
// Thompson NFA, no backtracking. Nothing here throws; a failed compile returns null and leaves its
// code and offset in lastRegexError()/lastRegexErrorOffset(). This module is browser compatible.

import { Node } from "./ast";
import { compileProgram, compileProgramSet } from "./compile";
import { Dfa } from "./dfa";
import { REGEX_ERR_TOO_LARGE, setRegexError } from "./errors";
import { parseRegex } from "./parse";
import { FLAG_DOT_NL, FLAG_FOLD, FLAG_MULTI_LINE, ParseState } from "./parse_state";

export {
  lastRegexError,
  lastRegexErrorOffset,
  REGEX_ERR_BAD_CHAR_RANGE,
  REGEX_ERR_BAD_ESCAPE,
  REGEX_ERR_BAD_GROUP,
  REGEX_ERR_BAD_REPEAT_OP,
  REGEX_ERR_BAD_UTF8,
  REGEX_ERR_MISSING_BRACKET,
  REGEX_ERR_MISSING_PAREN,
  REGEX_ERR_MISSING_REPEAT_ARG,
  REGEX_ERR_NESTING_DEPTH,
  REGEX_ERR_REPEAT_SIZE,
  REGEX_ERR_TOO_LARGE,
  REGEX_ERR_UNEXPECTED_PAREN,
  REGEX_ERR_UNSUPPORTED,
  REGEX_OK,
} from "./errors";

/** Case-insensitive matching, as `(?i)`. */
export const REGEX_CASE_INSENSITIVE: i32 = FLAG_FOLD;
/** `.` also matches `\n`, as `(?s)`. */
export const REGEX_DOT_NL: i32 = FLAG_DOT_NL;
/** `^` and `$` also match at line boundaries, as `(?m)`. */
export const REGEX_MULTI_LINE: i32 = FLAG_MULTI_LINE;

/** Most patterns in one set: bit i of a match mask (a non-negative i32) is pattern i. */
export const REGEX_SET_MAX: i32 = 31;

/**
 * A compiled pattern, or a set of patterns matched in one pass. Holds a DFA cache, so one Regex
 * must not be used re-entrantly.
 */
export class Regex {
  private dfa: Dfa;

  constructor(dfa: Dfa) {
    this.dfa = dfa;
  }

  /** True when the `len` UTF-8 bytes at `ptr` match the whole pattern (any pattern of a set). */
  fullMatch(ptr: usize, len: i32): bool {
    return this.dfa.fullMatch(ptr, len < 0 ? 0 : len);
  }

  /**
   * matches() of `n` inputs: input i ends at the u32 offset at `ends` + 4i into `bytes` and starts
   * where input i-1 ended (0 for the first); the offsets must not decrease. Masks go to the u32s at
   * `out`.
   */
  matchBatch(bytes: usize, ends: usize, n: i32, out: usize): void {
    this.dfa.matchBatch(bytes, ends, n, out);
  }

  /** The patterns of the set (bit i: pattern i) that match the whole `len` bytes at `ptr`. */
  matches(ptr: usize, len: i32): u32 {
    return this.dfa.matches(ptr, len < 0 ? 0 : len);
  }

  /** fullMatch() of an AS string (encoded to UTF-8 first). */
  fullMatchString(s: string): bool {
    const buf = String.UTF8.encode(s);
    return this.fullMatch(changetype<usize>(buf), buf.byteLength);
  }
}

/**
 * Compiles the `len`-byte UTF-8 pattern at `ptr` with REGEX_* `flags`; null on error (see
 * lastRegexError()).
 */
export function compileRegex(ptr: usize, len: i32, flags: i32): Regex | null {
  const st = new ParseState(
    ptr,
    len < 0 ? 0 : len,
    flags & (FLAG_FOLD | FLAG_DOT_NL | FLAG_MULTI_LINE),
  );
  const ast = parseRegex(st);
  if (ast == null) {
    setRegexError(st.err, st.errPos);
    return null;
  }
  const prog = compileProgram(ast);
  if (prog == null) {
    setRegexError(REGEX_ERR_TOO_LARGE, 0);
    return null;
  }
  setRegexError(0, 0);
  return new Regex(new Dfa(prog));
}

let lastSetIndex: i32 = 0;

/** The index in the set of the pattern that made the last compileRegexSet() fail. */
export function lastRegexSetIndex(): i32 {
  return lastSetIndex;
}

/**
 * Compiles patterns i = 0 … ptrs.length-1 (UTF-8, `lens[i]` bytes at `ptrs[i]`, 1 to
 * REGEX_SET_MAX of them) into one set with REGEX_* `flags`; null on error (see lastRegexError(),
 * lastRegexSetIndex()).
 */
export function compileRegexSet(ptrs: Array<usize>, lens: Array<i32>, flags: i32): Regex | null {
  const n = ptrs.length;
  lastSetIndex = 0;
  if (n == 0 || n > REGEX_SET_MAX) {
    setRegexError(REGEX_ERR_TOO_LARGE, 0);
    return null;
  }
  const roots = new Array<Node>(n);
  for (let i = 0; i < n; i++) {
    const len = lens[i];
    const st = new ParseState(
      ptrs[i],
      len < 0 ? 0 : len,
      flags & (FLAG_FOLD | FLAG_DOT_NL | FLAG_MULTI_LINE),
    );
    const ast = parseRegex(st);
    if (ast == null) {
      lastSetIndex = i;
      setRegexError(st.err, st.errPos);
      return null;
    }
    roots[i] = ast;
  }
  const prog = compileProgramSet(roots);
  if (prog == null) {
    setRegexError(REGEX_ERR_TOO_LARGE, 0);
    return null;
  }
  setRegexError(0, 0);
  return new Regex(new Dfa(prog));
}

/** compileRegex() of a pattern held in an AS string. */
export function compileRegexString(s: string, flags: i32): Regex | null {
  const buf = String.UTF8.encode(s);
  return compileRegex(changetype<usize>(buf), buf.byteLength, flags);
}
