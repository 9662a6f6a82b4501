// Parses an RE2 pattern (UTF-8 bytes) into a syntax tree: alternation, concatenation, repeats and
// groups, delegating escapes and bracket classes to parse_escape.ts and `(?...` prefixes to
// parse_group.ts. Follows RE2's Perl-mode rules (`a**` is an error, a `{` that is not a repeat is
// a literal, counts are capped at 1000) and rejects what RE2 rejects (backreferences,
// lookaround). Never throws: errors land in the ParseState. This module is browser compatible.

import {
  ASSERT_BEGIN_LINE,
  ASSERT_BEGIN_TEXT,
  ASSERT_END_LINE,
  ASSERT_END_TEXT,
  assertNode,
  listNode,
  Node,
  NODE_ALT,
  NODE_CONCAT,
  NODE_REPEAT,
} from "./ast";
import {
  REGEX_ERR_BAD_REPEAT_OP,
  REGEX_ERR_MISSING_PAREN,
  REGEX_ERR_MISSING_REPEAT_ARG,
  REGEX_ERR_NESTING_DEPTH,
  REGEX_ERR_REPEAT_SIZE,
  REGEX_ERR_UNEXPECTED_PAREN,
} from "./errors";
import { parseClass, parseEscape } from "./parse_escape";
import { parseGroupPrefix } from "./parse_group";
import { FLAG_MULTI_LINE, ParseState } from "./parse_state";

/** RE2's limit on a repeat count, and on the product of nested counts. */
const MAX_REPEAT: i32 = 1000;
/** Deepest group nesting accepted: recursion beyond ~500 levels overflows the shadow stack. */
const MAX_DEPTH: i32 = 250;

/** Parses the whole pattern; null on error, with the error in `st`. */
export function parseRegex(st: ParseState): Node | null {
  const node = _parseAlt(st);
  if (node == null) return null;
  if (!st.atEnd()) {
    st.fail(REGEX_ERR_UNEXPECTED_PAREN, st.pos);
    return null;
  }
  return node;
}

function _parseAlt(st: ParseState): Node | null {
  const alts = new Array<Node>();
  while (true) {
    const n = _parseConcat(st);
    if (n == null) return null;
    alts.push(n);
    if (st.peek() != 0x7c) break;
    st.pos++;
  }
  return listNode(NODE_ALT, alts);
}

function _parseConcat(st: ParseState): Node | null {
  const items = new Array<Node>();
  let lastRepeat = -1;
  while (!st.atEnd()) {
    const c = st.peek();
    if (c == 0x7c || c == 0x29) break; // | )
    const start = st.pos;
    if (c == 0x2a || c == 0x2b || c == 0x3f) { // * + ?
      st.pos++;
      if (!_repeat(st, items, c == 0x2b ? 1 : 0, c == 0x3f ? 1 : -1, false, start, lastRepeat)) {
        return null;
      }
      lastRepeat = start;
      continue;
    }
    if (c == 0x7b && _parseBraces(st)) {
      if (!_repeat(st, items, st.repMin, st.repMax, true, start, lastRepeat)) return null;
      lastRepeat = start;
      continue;
    }
    lastRepeat = -1;
    if (!_parseAtom(st, items)) return null;
  }
  return listNode(NODE_CONCAT, items);
}

/** Wraps the last item in a repeat; `start` is where the operator began. */
function _repeat(
  st: ParseState,
  items: Array<Node>,
  min: i32,
  max: i32,
  counted: bool,
  start: i32,
  lastRepeat: i32,
): bool {
  if (st.peek() == 0x3f) st.pos++; // lazy: irrelevant to a full match
  if (lastRepeat >= 0) return st.fail(REGEX_ERR_BAD_REPEAT_OP, lastRepeat);
  if (items.length == 0) return st.fail(REGEX_ERR_MISSING_REPEAT_ARG, start);
  if (counted && (min > MAX_REPEAT || max > MAX_REPEAT || (max >= 0 && min > max))) {
    return st.fail(REGEX_ERR_REPEAT_SIZE, start);
  }
  const sub = items[items.length - 1];
  const n = new Node(NODE_REPEAT);
  n.subs.push(sub);
  n.min = min;
  n.max = max;
  n.product = sub.product;
  const count = max >= 0 ? max : min;
  if (counted && count > 0) {
    if (count * sub.product > MAX_REPEAT) return st.fail(REGEX_ERR_REPEAT_SIZE, start);
    n.product = count * sub.product;
  }
  items[items.length - 1] = n;
  return true;
}

/** `{n}`, `{n,}` or `{n,m}` at the cursor: sets repMin/repMax and advances; false if not one. */
function _parseBraces(st: ParseState): bool {
  const save = st.pos;
  st.pos++;
  let min = _parseInt(st);
  let max = min;
  if (min >= 0 && st.peek() == 0x2c) {
    st.pos++;
    max = st.peek() == 0x7d ? -1 : _parseInt(st);
    if (max == -2) min = -2;
  }
  if (min < 0 || st.peek() != 0x7d) {
    st.pos = save;
    return false;
  }
  st.pos++;
  st.repMin = min;
  st.repMax = max;
  return true;
}

/** Decimal digits without a leading zero; -2 if there are none. Large values saturate. */
function _parseInt(st: ParseState): i32 {
  const c = st.peek();
  if (c < 0x30 || c > 0x39) return -2;
  if (c == 0x30 && st.peek(1) >= 0x30 && st.peek(1) <= 0x39) return -2;
  let n = 0;
  while (st.peek() >= 0x30 && st.peek() <= 0x39) {
    if (n < 100000000) n = n * 10 + st.peek() - 0x30;
    st.pos++;
  }
  return n;
}

function _parseAtom(st: ParseState, items: Array<Node>): bool {
  const c = st.peek();
  if (c == 0x28) return _parseGroup(st, items); // (
  if (c == 0x5c) return parseEscape(st, items); // \
  if (c == 0x5b) { // [
    const cls = parseClass(st);
    if (cls == null) return false;
    items.push(cls);
    return true;
  }
  if (c == 0x2e) { // .
    st.pos++;
    items.push(st.anyChar());
    return true;
  }
  const multi = (st.flags & FLAG_MULTI_LINE) != 0;
  if (c == 0x5e || c == 0x24) { // ^ $
    st.pos++;
    if (c == 0x5e) items.push(assertNode(multi ? ASSERT_BEGIN_LINE : ASSERT_BEGIN_TEXT));
    else items.push(assertNode(multi ? ASSERT_END_LINE : ASSERT_END_TEXT));
    return true;
  }
  const r = st.nextRune();
  if (r < 0) return false;
  items.push(st.literal(r));
  return true;
}

function _parseGroup(st: ParseState, items: Array<Node>): bool {
  const start = st.pos;
  if (st.depth >= MAX_DEPTH) return st.fail(REGEX_ERR_NESTING_DEPTH, start);
  const saved = st.flags;
  st.pos++;
  if (st.peek() == 0x3f) { // (?
    const kind = parseGroupPrefix(st, start);
    if (kind < 0) return false;
    if (kind == 0) return true; // (?flags) changes the flags of the enclosing group
  }
  st.depth++;
  const body = _parseAlt(st);
  st.depth--;
  if (body == null) return false;
  if (st.peek() != 0x29) return st.fail(REGEX_ERR_MISSING_PAREN, start);
  st.pos++;
  st.flags = saved;
  items.push(body);
  return true;
}
