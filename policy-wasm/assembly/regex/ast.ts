// The syntax tree the parser builds and the compiler walks. Captures, names and greediness are
// dropped while parsing: a full-match test only asks whether some path through the pattern spells
// the whole input, so `(a+?)` and `a+` are the same tree. This module is browser compatible.

import { Ranges } from "./ranges";

/** Matches the empty string. */
export const NODE_EMPTY: i32 = 0;
/** Matches one rune in `ranges`. */
export const NODE_CLASS: i32 = 1;
/** Matches the empty string where `assert` (an ASSERT_* kind) holds. */
export const NODE_ASSERT: i32 = 2;
/** Matches `subs` one after the other. */
export const NODE_CONCAT: i32 = 3;
/** Matches any one of `subs`. */
export const NODE_ALT: i32 = 4;
/** Matches `subs[0]` between `min` and `max` times (`max` -1: unbounded). */
export const NODE_REPEAT: i32 = 5;

export const ASSERT_BEGIN_TEXT: i32 = 1;
export const ASSERT_END_TEXT: i32 = 2;
export const ASSERT_BEGIN_LINE: i32 = 3;
export const ASSERT_END_LINE: i32 = 4;
export const ASSERT_WORD_BOUNDARY: i32 = 5;
export const ASSERT_NOT_WORD_BOUNDARY: i32 = 6;

export class Node {
  kind: i32;
  subs: Array<Node> = new Array<Node>();
  ranges: Ranges | null = null;
  min: i32 = 0;
  max: i32 = 0;
  assert: i32 = 0;
  /** Largest product of nested counted repeats below and including this node (RE2 caps it). */
  product: i32 = 1;
  /** The compiler's rune-list id for a CLASS node, once assigned (-1 before). */
  listId: i32 = -1;

  constructor(kind: i32) {
    this.kind = kind;
  }
}

export function classNode(ranges: Ranges): Node {
  const n = new Node(NODE_CLASS);
  n.ranges = ranges;
  return n;
}

export function assertNode(kind: i32): Node {
  const n = new Node(NODE_ASSERT);
  n.assert = kind;
  return n;
}

/** Wraps `subs` in a CONCAT or ALT node, or returns the only one (EMPTY when there is none). */
export function listNode(kind: i32, subs: Array<Node>): Node {
  if (subs.length == 0) return new Node(NODE_EMPTY);
  if (subs.length == 1) return unchecked(subs[0]);
  const n = new Node(kind);
  n.subs = subs;
  let product = 1;
  for (let i = 0; i < subs.length; i++) product = max(product, unchecked(subs[i]).product);
  n.product = product;
  return n;
}
