// Error codes of the regular-expression compiler and the record of the last failure. Codes mirror
// RE2's error classes; each names what was wrong and the offset says where (a byte offset into the
// pattern). This module is browser compatible; it only stores two numbers and never throws.

/** No error. */
export const REGEX_OK: i32 = 0;
/** A `(` has no matching `)`: `(ab`. Offset: the unclosed `(`. */
export const REGEX_ERR_MISSING_PAREN: i32 = 1;
/** A `)` has no matching `(`: `ab)`. Offset: the stray `)`. */
export const REGEX_ERR_UNEXPECTED_PAREN: i32 = 2;
/** A `[` has no matching `]`: `[ab`, `[]`. Offset: the unclosed `[`. */
export const REGEX_ERR_MISSING_BRACKET: i32 = 3;
/** An unknown or malformed escape: `\q`, `\x{zz}`, a trailing `\`. Offset: the `\`. */
export const REGEX_ERR_BAD_ESCAPE: i32 = 4;
/** A repeat operator with nothing to repeat: `*a`, `(+)`, `a|?`. Offset: the operator. */
export const REGEX_ERR_MISSING_REPEAT_ARG: i32 = 5;
/** A repeat operator applied to a repeat: `a**`, `a+*`, `a{2}{3}`, `a*??`. Offset: the first one. */
export const REGEX_ERR_BAD_REPEAT_OP: i32 = 6;
/** A count above 1000, `{n,m}` with n > m, or nested counts whose product exceeds 1000. Offset: `{`. */
export const REGEX_ERR_REPEAT_SIZE: i32 = 7;
/** A range whose end is below its start (`[z-a]`) or an unknown `[:name:]`. Offset: the range. */
export const REGEX_ERR_BAD_CHAR_RANGE: i32 = 8;
/** The pattern is not valid UTF-8. Offset: the first bad byte. */
export const REGEX_ERR_BAD_UTF8: i32 = 9;
/** A malformed `(?...)`: unknown flag, `(?i-)`, bad or duplicate group name. Offset: the `(`. */
export const REGEX_ERR_BAD_GROUP: i32 = 10;
/**
 * Valid Perl/PCRE syntax that RE2 (and so this engine) does not support: backreferences `\1`
 * `(?P=n)`, lookaround `(?=` `(?!` `(?<=` `(?<!`, atomic groups, `\pL` `\p{Greek}`, `\C`.
 * Offset: the construct.
 */
export const REGEX_ERR_UNSUPPORTED: i32 = 11;
/** The compiled program would exceed 65536 instructions. Offset: 0. */
export const REGEX_ERR_TOO_LARGE: i32 = 12;
/** Groups nest deeper than 250 levels (RE2 allows 1000). Offset: the `(` that went too deep. */
export const REGEX_ERR_NESTING_DEPTH: i32 = 13;

let lastCode: i32 = 0;
let lastOffset: i32 = 0;

/** Records the outcome of a compile: `code` 0 clears the error. */
export function setRegexError(code: i32, offset: i32): void {
  lastCode = code;
  lastOffset = offset;
}

/** Error code of the last failed compile, 0 after a successful one. */
export function lastRegexError(): i32 {
  return lastCode;
}

/** Byte offset in the pattern where the last compile error was found. */
export function lastRegexErrorOffset(): i32 {
  return lastOffset;
}
