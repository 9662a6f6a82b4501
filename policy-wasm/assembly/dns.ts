// DNS L7 matching (POLICY-SEMANTICS §9.3, Cilium pkg/fqdn/matchpattern):
//
//  1. matchName is an exact, case-insensitive, FQDN-normalised name (trailing dot added).
//  2. matchPattern is lower-cased, FQDN-normalised and translated to a full-match regex, label by
//     label: `*` alone (or `**` alone) matches every name (one or more labels, or the root `.`);
//     a label that is exactly `**` matches one or more whole labels, wherever it stands
//     (`**.cilium.io`, `1.**.cilium.io`, `*.**.io`); any other `*` matches zero or more of
//     [-a-zA-Z0-9_] and never a dot; `.` is literal.
//  3. A pattern never matches a name with an empty label (`.io.`, `a..b.`): such a name cannot
//     be asked on the wire, and `*` (zero characters) must not turn into an empty label.
//
// Refused queries get rcode 5 (REFUSED).

import { entries } from "./model";
import { L7_ALLOWED, L7_DENIED, L7Result, regexMatches } from "./l7";

export const DNS_REFUSED: i32 = 5;

const LABEL_CHARS = "[-a-zA-Z0-9_]";

/** Lower-cases and adds the trailing dot. */
export function fqdn(name: string): string {
  const n = name.toLowerCase();
  return n.endsWith(".") ? n : n + ".";
}

/** Invariant 3: a label of the name is empty (the root name `.` alone is not). */
export function hasEmptyLabel(name: string): bool {
  return name != "." && (name.startsWith(".") || name.includes(".."));
}

/** Invariant 2: the regex (full match) a matchPattern stands for. */
export function dnsPatternRegex(pattern: string): string {
  const raw = pattern.trim();
  if (raw == "*" || raw == "**") return "(?:(?:" + LABEL_CHARS + "+\\.)+|\\.)";
  const labels = fqdn(raw).split(".");
  let re = "";
  // The last element is the empty string after the trailing dot.
  for (let l = 0; l + 1 < labels.length; l++) {
    const label = labels[l];
    if (label == "**") {
      re += "(?:" + LABEL_CHARS + "+\\.)+";
      continue;
    }
    for (let i = 0; i < label.length; i++) {
      const c = label.charAt(i);
      if (c == "*") re += LABEL_CHARS + "*";
      else if (c == "-" || c == "_" || (c >= "a" && c <= "z") || (c >= "0" && c <= "9")) re += c;
      else re += "\\" + c;
    }
    re += "\\.";
  }
  return re;
}

export function dnsCheck(name: string, l7: Array<i32>): L7Result {
  const res = new L7Result();
  const q = fqdn(name);
  for (let i = 0; i < l7.length; i++) {
    const rs = entries[l7[i]].dns;
    for (let k = 0; k < rs.length; k++) {
      const rule = rs[k];
      const exact = rule.name;
      const ok = exact !== null
        ? fqdn(exact) == q
        : rule.pattern !== null && !hasEmptyLabel(q) && regexMatches(rule.pattern, q);
      if (ok) {
        res.status = L7_ALLOWED;
        res.entry = l7[i];
        res.rule = k;
        return res;
      }
    }
  }
  res.status = L7_DENIED;
  res.detail = DNS_REFUSED;
  return res;
}
