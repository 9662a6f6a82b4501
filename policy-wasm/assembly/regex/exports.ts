// The number-only WASM exports of the regex engine, for the TypeScript side (validation, tests,
// benchmarks): patterns and inputs arrive through io.ts's input buffer (lengths clamped to it),
// compiled patterns live in a handle table (which also keeps them alive for the GC). Never throws:
// errors are negative codes.
// This module is browser compatible.

import { ensureOutput, inputLen, inputPtr, output_ptr, setOutputLen } from "../io";
import {
  compileRegex,
  compileRegexSet,
  lastRegexError,
  lastRegexErrorOffset,
  lastRegexSetIndex,
  Regex,
  REGEX_SET_MAX,
} from "./index";

const handles = new Array<Regex | null>();
const freeHandles = new Array<i32>();

/**
 * Compiles the pattern the host wrote via input_reserve(len) with REGEX_* `flags`; returns a
 * handle >= 0, or -code (a REGEX_ERR_* code) on error.
 */
export function regex_compile(len: i32, flags: i32): i32 {
  return _handle(compileRegex(inputPtr(), inputLen(len), flags));
}

/**
 * Compiles a set of 1 to 31 patterns matched together (regex_match_set, regex_match_batch): the
 * input is a u32 count, then per pattern a u32 byte length and its UTF-8 bytes. Returns a handle
 * >= 0, or -code; a malformed list is REGEX_ERR_TOO_LARGE at offset 0 of pattern 0.
 */
export function regex_set_compile(len: i32, flags: i32): i32 {
  const base = inputPtr();
  const end = <i64> inputLen(len);
  const ptrs = new Array<usize>();
  const lens = new Array<i32>();
  let at: i64 = 4;
  const count = end >= 4 ? load<u32>(base) : 0;
  if (count >= 1 && count <= <u32> REGEX_SET_MAX) {
    for (let i: u32 = 0; i < count && at + 4 <= end; i++) {
      const n = <i64> load<u32>(base + <usize> at);
      if (at + 4 + n > end) break;
      ptrs.push(base + <usize> (at + 4));
      lens.push(<i32> n);
      at += 4 + n;
    }
  }
  if (ptrs.length != <i32> count || at != end) ptrs.length = 0; // malformed: compile refuses it
  return _handle(compileRegexSet(ptrs, lens, flags));
}

/** The index in its set of the pattern that made the last regex_set_compile() fail. */
export function regex_set_error_index(): i32 {
  return lastRegexSetIndex();
}

function _handle(re: Regex | null): i32 {
  if (re == null) return -lastRegexError();
  if (freeHandles.length > 0) {
    const h = freeHandles.pop();
    handles[h] = re;
    return h;
  }
  handles.push(re);
  return handles.length - 1;
}

/** Byte offset in the pattern of the last compile error. */
export function regex_error_offset(): i32 {
  return lastRegexErrorOffset();
}

/** Full-matches the input the host wrote via input_reserve(len): 1 match, 0 none, -1 bad handle. */
export function regex_match(handle: i32, len: i32): i32 {
  if (handle < 0 || handle >= handles.length) return -1;
  const re = handles[handle];
  if (re == null) return -1;
  return re.fullMatch(inputPtr(), inputLen(len)) ? 1 : 0;
}

/**
 * The patterns of the set (bit i: pattern i; a plain regex is a set of one) that the input the
 * host wrote via input_reserve(len) fully matches, or -1 for a bad handle.
 */
export function regex_match_set(handle: i32, len: i32): i32 {
  const re = _regex(handle);
  if (re == null) return -1;
  return <i32> re.matches(inputPtr(), inputLen(len));
}

/**
 * Matches `n` inputs in one call: the input buffer holds n u32 end offsets (cumulative, into the
 * bytes that follow them), then the inputs' bytes back to back. Writes n u32 masks (as
 * regex_match_set) to the output buffer and returns n; -1 for a bad handle, -2 when the offsets
 * decrease or run past `len`.
 */
export function regex_match_batch(handle: i32, n: i32, len: i32): i32 {
  const re = _regex(handle);
  if (re == null) return -1;
  const base = inputPtr();
  const total = <i64> inputLen(len);
  if (n < 0 || (<i64> n << 2) > total) return -2;
  const bytes = base + (<usize> n << 2);
  const size = <u32> (total - (<i64> n << 2));
  let start: u32 = 0;
  for (let i = 0; i < n; i++) {
    const stop = load<u32>(base + (<usize> i << 2));
    if (stop < start || stop > size) return -2;
    start = stop;
  }
  ensureOutput(n << 2);
  re.matchBatch(bytes, base, n, output_ptr());
  setOutputLen(n << 2);
  return n;
}

function _regex(handle: i32): Regex | null {
  if (handle < 0 || handle >= handles.length) return null;
  return handles[handle];
}

/** Frees a handle; releasing an unknown or released handle does nothing. */
export function regex_release(handle: i32): void {
  if (handle < 0 || handle >= handles.length || handles[handle] == null) return;
  handles[handle] = null;
  freeHandles.push(handle);
}
