// UTF-8 decoding shared by the pattern parser and the matcher. Decoding is strict (no overlong
// forms, no surrogates, nothing above U+10FFFF); an invalid byte decodes as one RUNE_INVALID so the
// matcher can step over it. This module is browser compatible and allocates nothing.

/** Stands for one byte of invalid UTF-8 in the input: `.` and negated classes match it. */
export const RUNE_INVALID: i32 = 0x110000;
/** One past the largest rune the matcher sees (RUNE_INVALID included). */
export const RUNE_LIMIT: i32 = 0x110001;

/**
 * Decodes the rune at `p` (with `p < end`) and returns `(size << 24) | rune`; invalid UTF-8
 * yields size 1 and RUNE_INVALID.
 */
export function decodeRune(p: usize, end: usize): i32 {
  const b0 = <i32> load<u8>(p);
  if (b0 < 0x80) return (1 << 24) | b0;
  const invalid = (1 << 24) | RUNE_INVALID;
  if (b0 < 0xc2 || b0 > 0xf4) return invalid;
  if (p + 1 >= end) return invalid;
  const b1 = <i32> load<u8>(p + 1);
  if (b0 < 0xe0) {
    if ((b1 & 0xc0) != 0x80) return invalid;
    return (2 << 24) | ((b0 & 0x1f) << 6) | (b1 & 0x3f);
  }
  let lo = 0x80;
  let hi = 0xbf;
  if (b0 == 0xe0) lo = 0xa0;
  else if (b0 == 0xed) hi = 0x9f;
  else if (b0 == 0xf0) lo = 0x90;
  else if (b0 == 0xf4) hi = 0x8f;
  if (b1 < lo || b1 > hi || p + 2 >= end) return invalid;
  const b2 = <i32> load<u8>(p + 2);
  if ((b2 & 0xc0) != 0x80) return invalid;
  if (b0 < 0xf0) return (3 << 24) | ((b0 & 0x0f) << 12) | ((b1 & 0x3f) << 6) | (b2 & 0x3f);
  if (p + 3 >= end) return invalid;
  const b3 = <i32> load<u8>(p + 3);
  if ((b3 & 0xc0) != 0x80) return invalid;
  return (4 << 24) | ((b0 & 0x07) << 18) | ((b1 & 0x3f) << 12) | ((b2 & 0x3f) << 6) | (b3 & 0x3f);
}

/** True for the ASCII word characters `[0-9A-Za-z_]` that `\b` and `\w` use. */
export function isWordRune(r: i32): bool {
  return (r >= 0x30 && r <= 0x39) || (r >= 0x41 && r <= 0x5a) || (r >= 0x61 && r <= 0x7a) ||
    r == 0x5f;
}
