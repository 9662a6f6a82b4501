// Parses what follows `(?` in a pattern: a group name (`(?P<name>`, `(?<name>`) or Perl flags
// (`(?i)`, `(?i-s:`), and rejects the Perl/PCRE group forms RE2 does not support (lookaround,
// atomic groups, named backreferences, recursion). It updates the ParseState's flags but never
// parses a group body. This module is browser compatible.

import { REGEX_ERR_BAD_GROUP, REGEX_ERR_UNSUPPORTED } from "./errors";
import { FLAG_DOT_NL, FLAG_FOLD, FLAG_MULTI_LINE, FLAG_UNGREEDY, ParseState } from "./parse_state";

/**
 * Parses what follows `(?`: a name (`P<n>`, `<n>`) or flags (`i-s:`, `i)`). Returns 1 when a
 * group body follows, 0 for a flags-only group, -1 on error.
 */
export function parseGroupPrefix(st: ParseState, start: i32): i32 {
  const c1 = st.peek(1);
  const c2 = st.peek(2);
  if (c1 == 0x3d || c1 == 0x21 || c1 == 0x3e || c1 == 0x23 || c1 == 0x7c || c1 == 0x26) {
    return _failed(st, REGEX_ERR_UNSUPPORTED, start); // = ! > # | &: lookahead, atomic, ...
  }
  if (c1 == 0x3c && (c2 == 0x3d || c2 == 0x21)) return _failed(st, REGEX_ERR_UNSUPPORTED, start);
  if (c1 == 0x50 && (c2 == 0x3d || c2 == 0x3e)) return _failed(st, REGEX_ERR_UNSUPPORTED, start);
  if (c1 == 0x28 || c1 == 0x52 || c1 == 0x2b || (c1 >= 0x30 && c1 <= 0x39)) {
    return _failed(st, REGEX_ERR_UNSUPPORTED, start); // conditionals, recursion
  }
  if (c1 == 0x3c || (c1 == 0x50 && c2 == 0x3c)) return _parseName(st, start, c1 == 0x50 ? 3 : 2);
  if (c1 == 0x50) return _failed(st, REGEX_ERR_BAD_GROUP, start);
  return _parseFlags(st, start);
}

function _parseName(st: ParseState, start: i32, skip: i32): i32 {
  st.pos += skip;
  const nameStart = st.pos;
  while (_isWordByte(st.peek())) st.pos++;
  const len = st.pos - nameStart;
  if (len == 0 || st.peek() != 0x3e) return _failed(st, REGEX_ERR_BAD_GROUP, start);
  for (let i = 0; i < st.names.length; i += 2) {
    if (st.names[i + 1] == len && _sameBytes(st, st.names[i], nameStart, len)) {
      return _failed(st, REGEX_ERR_BAD_GROUP, start);
    }
  }
  st.names.push(nameStart);
  st.names.push(len);
  st.pos++;
  return 1;
}

function _parseFlags(st: ParseState, start: i32): i32 {
  st.pos++; // ?
  let flags = st.flags;
  let negated = false;
  let sawFlag = false;
  while (true) {
    const c = st.peek();
    st.pos++;
    let bit = 0;
    if (c == 0x69) bit = FLAG_FOLD;
    else if (c == 0x6d) bit = FLAG_MULTI_LINE;
    else if (c == 0x73) bit = FLAG_DOT_NL;
    else if (c == 0x55) bit = FLAG_UNGREEDY;
    if (bit != 0) {
      flags = negated ? flags & ~bit : flags | bit;
      sawFlag = true;
      continue;
    }
    if (c == 0x2d && !negated) { // -
      negated = true;
      sawFlag = false;
      continue;
    }
    if ((c == 0x3a || c == 0x29) && (!negated || sawFlag)) { // : )
      st.flags = flags;
      return c == 0x3a ? 1 : 0;
    }
    return _failed(st, REGEX_ERR_BAD_GROUP, start);
  }
}

function _failed(st: ParseState, code: i32, at: i32): i32 {
  st.fail(code, at);
  return -1;
}

function _isWordByte(c: i32): bool {
  const lower = c | 0x20;
  return (c >= 0x30 && c <= 0x39) || (lower >= 0x61 && lower <= 0x7a) || c == 0x5f;
}

function _sameBytes(st: ParseState, a: i32, b: i32, len: i32): bool {
  return memory.compare(st.base + <usize> a, st.base + <usize> b, <usize> len) == 0;
}
