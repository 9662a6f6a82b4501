// Parses the parts of a pattern that start with `\` or `[`: escapes (`\n`, `\x{41}`, `\101`,
// `\d`, `\b`, `\Q...\E`) and bracket classes with ranges, negation and `[:alpha:]` names. Each
// function leaves the cursor after what it consumed or records an error and returns a failure
// value. This module is browser compatible.

import {
  ASSERT_BEGIN_TEXT,
  ASSERT_END_TEXT,
  ASSERT_NOT_WORD_BOUNDARY,
  ASSERT_WORD_BOUNDARY,
  assertNode,
  classNode,
  Node,
} from "./ast";
import {
  REGEX_ERR_BAD_CHAR_RANGE,
  REGEX_ERR_BAD_ESCAPE,
  REGEX_ERR_MISSING_BRACKET,
  REGEX_ERR_UNSUPPORTED,
} from "./errors";
import { FLAG_FOLD, ParseState } from "./parse_state";
import { addPerlClass, addPosixClass, Ranges } from "./ranges";

/** Parses an escape outside a class, pushing what it matches to `items`; false on error. */
export function parseEscape(st: ParseState, items: Array<Node>): bool {
  const start = st.pos;
  const c = st.peek(1);
  let kind = 0;
  if (c == 0x41) kind = ASSERT_BEGIN_TEXT; // \A
  else if (c == 0x7a) kind = ASSERT_END_TEXT; // \z
  else if (c == 0x62) kind = ASSERT_WORD_BOUNDARY; // \b
  else if (c == 0x42) kind = ASSERT_NOT_WORD_BOUNDARY; // \B
  if (kind != 0) {
    st.pos += 2;
    items.push(assertNode(kind));
    return true;
  }
  if (c == 0x51) return _parseQuoted(st, items); // \Q...\E
  if (_isPerlClass(c)) {
    const set = new Ranges();
    addPerlClass(c, set, (st.flags & FLAG_FOLD) != 0);
    set.normalize();
    st.pos += 2;
    items.push(classNode(set));
    return true;
  }
  if (c == 0x70 || c == 0x50 || c == 0x43) return st.fail(REGEX_ERR_UNSUPPORTED, start); // \p \P \C
  const r = parseEscapeRune(st);
  if (r < 0) return false;
  items.push(st.literal(r));
  return true;
}

/** Parses a single-rune escape at the cursor (a `\`); returns the rune, or -1 on error. */
export function parseEscapeRune(st: ParseState): i32 {
  const start = st.pos;
  const c = st.peek(1);
  st.pos += 2;
  if (c >= 0x31 && c <= 0x39 && !_isOctal(st.peek())) {
    st.fail(REGEX_ERR_UNSUPPORTED, start); // \1: a backreference
    return -1;
  }
  if (c >= 0x30 && c <= 0x37) {
    let code = c - 0x30;
    for (let i = 0; i < 2 && _isOctal(st.peek()); i++) {
      code = code * 8 + st.peek() - 0x30;
      st.pos++;
    }
    return code;
  }
  if (c == 0x78) return _parseHex(st, start);
  if (c == 0x61) return 0x07; // \a
  if (c == 0x66) return 0x0c; // \f
  if (c == 0x74) return 0x09; // \t
  if (c == 0x6e) return 0x0a; // \n
  if (c == 0x72) return 0x0d; // \r
  if (c == 0x76) return 0x0b; // \v
  if (c >= 0 && c < 0x80 && !_isAlnum(c)) return c; // escaped punctuation
  st.fail(REGEX_ERR_BAD_ESCAPE, start);
  return -1;
}

/** Parses a bracket class at the cursor (a `[`); null on error. */
export function parseClass(st: ParseState): Node | null {
  const start = st.pos;
  st.pos++;
  const set = new Ranges();
  let negated = false;
  if (st.peek() == 0x5e) {
    negated = true;
    st.pos++;
  }
  let first = true;
  while (true) {
    const c = st.peek();
    if (c < 0) {
      st.fail(REGEX_ERR_MISSING_BRACKET, start);
      return null;
    }
    if (c == 0x5d && !first) break;
    first = false;
    if (c == 0x5b && st.peek(1) == 0x3a) {
      const posix = _parsePosix(st, set);
      if (posix < 0) return null;
      if (posix > 0) continue;
    }
    if (c == 0x5c && _isPerlClass(st.peek(1))) {
      addPerlClass(st.peek(1), set, (st.flags & FLAG_FOLD) != 0);
      st.pos += 2;
      continue;
    }
    if (c == 0x5c && (st.peek(1) == 0x70 || st.peek(1) == 0x50)) {
      st.fail(REGEX_ERR_UNSUPPORTED, st.pos);
      return null;
    }
    if (!_parseClassRange(st, set)) return null;
  }
  st.pos++;
  if ((st.flags & FLAG_FOLD) != 0) set.fold();
  if (negated) set.negate();
  else set.normalize();
  return classNode(set);
}

function _parseClassRange(st: ParseState, set: Ranges): bool {
  const start = st.pos;
  const lo = _classChar(st);
  if (lo < 0) return false;
  if (st.peek() != 0x2d || st.peek(1) == 0x5d || st.peek(1) < 0) {
    set.add(lo, lo);
    return true;
  }
  st.pos++;
  const hi = _classChar(st);
  if (hi < 0) return false;
  if (hi < lo) return st.fail(REGEX_ERR_BAD_CHAR_RANGE, start);
  set.add(lo, hi);
  return true;
}

function _classChar(st: ParseState): i32 {
  if (st.peek() == 0x5c) {
    if (st.peek(1) < 0) {
      st.fail(REGEX_ERR_BAD_ESCAPE, st.pos);
      return -1;
    }
    return parseEscapeRune(st);
  }
  return st.nextRune();
}

/** `[:name:]` at the cursor: 1 added, 0 not a POSIX class (the `[` is a literal), -1 error. */
function _parsePosix(st: ParseState, set: Ranges): i32 {
  let end = st.pos + 2;
  while (end + 1 < st.len) {
    if (load<u8>(st.base + <usize> end) == 0x3a && load<u8>(st.base + <usize> end + 1) == 0x5d) {
      break;
    }
    end++;
  }
  if (end + 1 >= st.len) return 0;
  const name = st.base + <usize> (st.pos + 2);
  if (!addPosixClass(name, end - st.pos - 2, set, (st.flags & FLAG_FOLD) != 0)) {
    st.fail(REGEX_ERR_BAD_CHAR_RANGE, st.pos);
    return -1;
  }
  st.pos = end + 2;
  return 1;
}

function _parseQuoted(st: ParseState, items: Array<Node>): bool {
  st.pos += 2;
  while (!st.atEnd()) {
    if (st.peek() == 0x5c && st.peek(1) == 0x45) {
      st.pos += 2;
      break;
    }
    const r = st.nextRune();
    if (r < 0) return false;
    items.push(st.literal(r));
  }
  return true;
}

function _parseHex(st: ParseState, start: i32): i32 {
  if (st.peek() != 0x7b) {
    const h1 = _hexValue(st.peek());
    const h2 = _hexValue(st.peek(1));
    if (h1 < 0 || h2 < 0) {
      st.fail(REGEX_ERR_BAD_ESCAPE, start);
      return -1;
    }
    st.pos += 2;
    return h1 * 16 + h2;
  }
  st.pos++;
  let value = 0;
  let digits = 0;
  while (_hexValue(st.peek()) >= 0) {
    value = value * 16 + _hexValue(st.peek());
    st.pos++;
    digits++;
    if (value > 0x10ffff) break;
  }
  if (digits == 0 || value > 0x10ffff || st.peek() != 0x7d) {
    st.fail(REGEX_ERR_BAD_ESCAPE, start);
    return -1;
  }
  st.pos++;
  return value;
}

function _hexValue(c: i32): i32 {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const lower = c | 0x20;
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x61 + 10;
  return -1;
}

function _isOctal(c: i32): bool {
  return c >= 0x30 && c <= 0x37;
}

function _isAlnum(c: i32): bool {
  const lower = c | 0x20;
  return (c >= 0x30 && c <= 0x39) || (lower >= 0x61 && lower <= 0x7a);
}

function _isPerlClass(c: i32): bool {
  const lower = c | 0x20;
  return lower == 0x64 || lower == 0x73 || lower == 0x77;
}
