// The outcome of an L7 check, shared by the HTTP, Kafka and DNS matchers, and a helper to run a
// compiled regex on an AssemblyScript string.

import { Regex } from "./regex/index";

export const L7_NOT_EVALUATED: u8 = 0;
export const L7_ALLOWED: u8 = 1;
export const L7_DENIED: u8 = 2;

export class L7Result {
  status: u8 = L7_NOT_EVALUATED;
  /** The entry and its L7 rule index that admitted the request, or -1. */
  entry: i32 = -1;
  rule: i32 = -1;
  /** Protocol detail: HTTP status, Kafka error code, DNS rcode. */
  detail: i32 = 0;
}

/** Full match of `re` against `s`; a null regex matches everything (field not set). */
export function regexMatches(re: Regex | null, s: string): bool {
  if (re === null) return true;
  const buf = String.UTF8.encode(s, false);
  return re.fullMatch(changetype<usize>(buf), buf.byteLength);
}
