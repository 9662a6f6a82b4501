// The regular-expression engine's API for the rest of the policy engine: compile an RE2 pattern
// (UTF-8) once, then test inputs for a FULL match (the pattern is anchored at both ends, as in
// Cilium's and Envoy's HTTP rules). Matching is linear in the input: a lazily built DFA over a
// Thompson NFA, no backtracking. Nothing here throws; a failed compile returns null and leaves its
// code and offset in lastRegexError()/lastRegexErrorOffset(). This module is browser compatible.

import { compileProgram } from "./compile";
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

/** A compiled pattern. Holds a DFA cache, so one Regex must not be used re-entrantly. */
export class Regex {
  private dfa: Dfa;

  constructor(dfa: Dfa) {
    this.dfa = dfa;
  }

  /** True when the `len` UTF-8 bytes at `ptr` match the whole pattern. */
  fullMatch(ptr: usize, len: i32): bool {
    return this.dfa.fullMatch(ptr, len < 0 ? 0 : len);
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

/** compileRegex() of a pattern held in an AS string. */
export function compileRegexString(s: string, flags: i32): Regex | null {
  const buf = String.UTF8.encode(s);
  return compileRegex(changetype<usize>(buf), buf.byteLength, flags);
}
