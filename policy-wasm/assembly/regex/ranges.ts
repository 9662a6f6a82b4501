// Rune sets as sorted lists of inclusive ranges, plus the fixed ASCII sets behind `\d \w \s` and
// the POSIX `[:name:]` classes. Owns normalisation (sort, merge), negation and case folding of a
// set; it knows nothing about syntax or matching. This module is browser compatible.

import { FOLD_DOMAIN, foldPartners } from "./fold";
import { RUNE_INVALID } from "./utf8";

/** A set of runes; `pairs` holds `(lo << 32) | hi` and is sorted and merged after normalize(). */
export class Ranges {
  pairs: Array<i64> = new Array<i64>();

  add(lo: i32, hi: i32): void {
    this.pairs.push((<i64> lo << 32) | <i64> hi);
  }

  addRanges(other: Ranges): void {
    for (let i = 0; i < other.pairs.length; i++) this.pairs.push(unchecked(other.pairs[i]));
  }

  count(): i32 {
    return this.pairs.length;
  }

  lo(i: i32): i32 {
    return <i32> (unchecked(this.pairs[i]) >> 32);
  }

  hi(i: i32): i32 {
    return <i32> (unchecked(this.pairs[i]) & 0xffffffff);
  }

  /** Sorts the ranges and merges overlapping or adjacent ones. */
  normalize(): void {
    const src = this.pairs;
    if (src.length == 0) return;
    src.sort();
    const out = new Array<i64>();
    let lo = <i32> (unchecked(src[0]) >> 32);
    let hi = <i32> (unchecked(src[0]) & 0xffffffff);
    for (let i = 1; i < src.length; i++) {
      const l = <i32> (unchecked(src[i]) >> 32);
      const h = <i32> (unchecked(src[i]) & 0xffffffff);
      if (l <= hi + 1) {
        if (h > hi) hi = h;
      } else {
        out.push((<i64> lo << 32) | <i64> hi);
        lo = l;
        hi = h;
      }
    }
    out.push((<i64> lo << 32) | <i64> hi);
    this.pairs = out;
  }

  /** Replaces the set by its complement within [0, RUNE_INVALID]; normalizes first. */
  negate(): void {
    this.normalize();
    const src = this.pairs;
    const out = new Array<i64>();
    let next = 0;
    for (let i = 0; i < src.length; i++) {
      const l = <i32> (unchecked(src[i]) >> 32);
      const h = <i32> (unchecked(src[i]) & 0xffffffff);
      if (l > next) out.push((<i64> next << 32) | <i64> (l - 1));
      next = h + 1;
    }
    if (next <= RUNE_INVALID) out.push((<i64> next << 32) | <i64> RUNE_INVALID);
    this.pairs = out;
  }

  /** Adds every simple case-folding partner of every member, then normalizes. */
  fold(): void {
    const n = this.pairs.length;
    for (let i = 0; i < n; i++) {
      const l = this.lo(i);
      const h = this.hi(i);
      for (let d = 0; d < FOLD_DOMAIN.length; d += 2) {
        const a = max(l, unchecked(FOLD_DOMAIN[d]));
        const b = min(h, unchecked(FOLD_DOMAIN[d + 1]));
        for (let c = a; c <= b; c++) foldPartners(c, this);
      }
    }
    this.normalize();
  }
}

/**
 * Adds `\d` (`kind` 'd'), `\s` ('s') or `\w` ('w'); the upper-case kinds add the complement.
 * With `fold`, the set is case-folded before it is negated, as RE2 does (`(?i)\W` excludes `k`'s
 * partner KELVIN SIGN).
 */
export function addPerlClass(kind: i32, out: Ranges, fold: bool): void {
  const set = new Ranges();
  const lower = kind | 0x20;
  if (lower == 0x64) set.add(0x30, 0x39);
  else if (lower == 0x73) _addList(set, [0x09, 0x0a, 0x0c, 0x0d, 0x20, 0x20]);
  else _addList(set, [0x30, 0x39, 0x41, 0x5a, 0x5f, 0x5f, 0x61, 0x7a]);
  _addGroup(set, kind != lower, fold, out);
}

const POSIX_NAMES: string[] = [
  "alnum",
  "alpha",
  "ascii",
  "blank",
  "cntrl",
  "digit",
  "graph",
  "lower",
  "print",
  "punct",
  "space",
  "upper",
  "word",
  "xdigit",
];

const POSIX_RANGES: i32[][] = [
  [0x30, 0x39, 0x41, 0x5a, 0x61, 0x7a],
  [0x41, 0x5a, 0x61, 0x7a],
  [0x00, 0x7f],
  [0x09, 0x09, 0x20, 0x20],
  [0x00, 0x1f, 0x7f, 0x7f],
  [0x30, 0x39],
  [0x21, 0x7e],
  [0x61, 0x7a],
  [0x20, 0x7e],
  [0x21, 0x2f, 0x3a, 0x40, 0x5b, 0x60, 0x7b, 0x7e],
  [0x09, 0x0d, 0x20, 0x20],
  [0x41, 0x5a],
  [0x30, 0x39, 0x41, 0x5a, 0x5f, 0x5f, 0x61, 0x7a],
  [0x30, 0x39, 0x41, 0x46, 0x61, 0x66],
];

/**
 * Adds the POSIX class named by the `len` bytes at `name` (`alpha`, or `^alpha` for the
 * complement) to `out`, case-folded first with `fold`; returns false when the name is unknown.
 */
export function addPosixClass(name: usize, len: i32, out: Ranges, fold: bool): bool {
  let negated = false;
  if (len > 0 && load<u8>(name) == 0x5e) {
    negated = true;
    name++;
    len--;
  }
  for (let i = 0; i < POSIX_NAMES.length; i++) {
    if (!_equalsAscii(name, len, unchecked(POSIX_NAMES[i]))) continue;
    const set = new Ranges();
    _addList(set, unchecked(POSIX_RANGES[i]));
    _addGroup(set, negated, fold, out);
    return true;
  }
  return false;
}

function _addGroup(set: Ranges, negated: bool, fold: bool, out: Ranges): void {
  if (fold) set.fold();
  if (negated) set.negate();
  out.addRanges(set);
}

function _addList(set: Ranges, list: i32[]): void {
  for (let i = 0; i < list.length; i += 2) set.add(unchecked(list[i]), unchecked(list[i + 1]));
}

function _equalsAscii(p: usize, len: i32, s: string): bool {
  if (len != s.length) return false;
  for (let i = 0; i < len; i++) {
    if (<i32> load<u8>(p + <usize> i) != s.charCodeAt(i)) return false;
  }
  return true;
}
