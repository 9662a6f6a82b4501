// Simple case folding for `(?i)`: the partners of a rune under Unicode simple case folding, for
// ASCII, Latin-1, Latin Extended-A, basic Greek and Cyrillic, and the odd orbits that reach ASCII
// (K/k/KELVIN SIGN, S/s/LONG S, Å/å/ANGSTROM SIGN). Other scripts fold to themselves. This module is
// browser compatible; it must stay free of matching logic.

import { Ranges } from "./ranges";

/** The inclusive ranges outside which no rune has a partner, as flat lo, hi pairs. */
export const FOLD_DOMAIN: StaticArray<i32> = [
  0x41,
  0x7a,
  0xb5,
  0xb5,
  0xc0,
  0x17f,
  0x386,
  0x3ce,
  0x400,
  0x4ff,
  0x1e9e,
  0x1e9e,
  0x212a,
  0x212b,
];

/** Adds to `out` every rune other than `c` in the case-folding orbit of `c`. */
export function foldPartners(c: i32, out: Ranges): void {
  if (c < 0x80) {
    _foldAscii(c, out);
  } else if (c < 0x100) {
    _foldLatin1(c, out);
  } else if (c < 0x180) {
    _foldLatinExtA(c, out);
  } else if (c >= 0x370 && c < 0x400) {
    _foldGreek(c, out);
  } else if (c >= 0x400 && c < 0x500) {
    _foldCyrillic(c, out);
  } else if (c == 0x1e9e) {
    _one(out, 0xdf);
  } else if (c == 0x212a) {
    _two(out, 0x4b, 0x6b);
  } else if (c == 0x212b) {
    _two(out, 0xc5, 0xe5);
  }
}

function _foldAscii(c: i32, out: Ranges): void {
  const lower = c | 0x20;
  if (lower < 0x61 || lower > 0x7a) return;
  _one(out, c ^ 0x20);
  if (lower == 0x6b) _one(out, 0x212a);
  if (lower == 0x73) _one(out, 0x17f);
}

function _foldLatin1(c: i32, out: Ranges): void {
  if (c == 0xb5) _two(out, 0x39c, 0x3bc);
  else if (c == 0xdf) _one(out, 0x1e9e);
  else if (c == 0xff) _one(out, 0x178);
  else if (c == 0xd7 || c == 0xf7 || c < 0xc0) return;
  else _one(out, c ^ 0x20);
  if (c == 0xc5 || c == 0xe5) _one(out, 0x212b);
}

function _foldLatinExtA(c: i32, out: Ranges): void {
  if (c == 0x178) _one(out, 0xff);
  else if (c == 0x17f) _two(out, 0x53, 0x73);
  else if (c <= 0x12f || (c >= 0x132 && c <= 0x137) || (c >= 0x14a && c <= 0x177)) {
    _one(out, c ^ 1);
  } else if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) {
    _one(out, (c & 1) != 0 ? c + 1 : c - 1);
  }
}

function _foldGreek(c: i32, out: Ranges): void {
  if (c == 0x3a3 || c == 0x3c2 || c == 0x3c3) {
    if (c != 0x3a3) _one(out, 0x3a3);
    if (c != 0x3c2) _one(out, 0x3c2);
    if (c != 0x3c3) _one(out, 0x3c3);
  } else if (c == 0x39c || c == 0x3bc) {
    _two(out, 0xb5, c ^ 0x20);
  } else if ((c >= 0x391 && c <= 0x3ab) || (c >= 0x3b1 && c <= 0x3cb)) {
    if (c != 0x3a2) _one(out, c < 0x3b1 ? c + 32 : c - 32);
  } else if (c == 0x386) _one(out, 0x3ac);
  else if (c == 0x3ac) _one(out, 0x386);
  else if (c >= 0x388 && c <= 0x38a) _one(out, c + 37);
  else if (c >= 0x3ad && c <= 0x3af) _one(out, c - 37);
  else if (c == 0x38c) _one(out, 0x3cc);
  else if (c == 0x3cc) _one(out, 0x38c);
  else if (c == 0x38e || c == 0x38f) _one(out, c + 63);
  else if (c == 0x3cd || c == 0x3ce) _one(out, c - 63);
}

function _foldCyrillic(c: i32, out: Ranges): void {
  if (c < 0x410) _one(out, c + 80);
  else if (c < 0x430) _one(out, c + 32);
  else if (c < 0x450) _one(out, c - 32);
  else if (c < 0x460) _one(out, c - 80);
  else if (c <= 0x481 || (c >= 0x48a && c <= 0x4bf) || (c >= 0x4d0 && c <= 0x4ff)) {
    _one(out, c ^ 1);
  } else if (c == 0x4c0) _one(out, 0x4cf);
  else if (c == 0x4cf) _one(out, 0x4c0);
  else if (c >= 0x4c1 && c <= 0x4ce) _one(out, (c & 1) != 0 ? c + 1 : c - 1);
}

function _one(out: Ranges, r: i32): void {
  out.add(r, r);
}

function _two(out: Ranges, a: i32, b: i32): void {
  out.add(a, a);
  out.add(b, b);
}
