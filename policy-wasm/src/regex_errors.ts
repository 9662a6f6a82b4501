// Messages for the regex compiler's error codes (policy-wasm/assembly/regex/errors.ts). This
// module is browser compatible.

const MESSAGES: Record<number, string> = {
  1: "missing closing )",
  2: "unexpected )",
  3: "missing closing ]",
  4: "invalid escape sequence",
  5: "missing argument to repetition operator",
  6: "invalid nested repetition operator",
  7: "invalid repeat count (at most 1000)",
  8: "invalid character class range",
  9: "invalid UTF-8",
  10: "invalid or unsupported group syntax",
  11: "unsupported Perl syntax (backreferences, lookaround and \\p classes are not RE2)",
  12: "expression too large",
  13: "expression nests too deeply",
};

export function regexErrorMessage(code: number, offset: number): string {
  return `${MESSAGES[code] ?? `error ${code}`} at offset ${offset}`;
}
