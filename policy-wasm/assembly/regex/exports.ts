// The number-only WASM exports of the regex engine, for the TypeScript side (validation, tests,
// benchmarks): patterns and inputs arrive through io.ts's input buffer (lengths clamped to it),
// compiled patterns live in a handle table (which also keeps them alive for the GC). Never throws:
// errors are negative codes.
// This module is browser compatible.

import { inputLen, inputPtr } from "../io";
import { compileRegex, lastRegexError, lastRegexErrorOffset, Regex } from "./index";

const handles = new Array<Regex | null>();
const freeHandles = new Array<i32>();

/**
 * Compiles the pattern the host wrote via input_reserve(len) with REGEX_* `flags`; returns a
 * handle >= 0, or -code (a REGEX_ERR_* code) on error.
 */
export function regex_compile(len: i32, flags: i32): i32 {
  const re = compileRegex(inputPtr(), inputLen(len), flags);
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

/** Frees a handle; releasing an unknown or released handle does nothing. */
export function regex_release(handle: i32): void {
  if (handle < 0 || handle >= handles.length || handles[handle] == null) return;
  handles[handle] = null;
  freeHandles.push(handle);
}
