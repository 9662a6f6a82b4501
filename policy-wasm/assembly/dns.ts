// DNS L7 matching (POLICY-SEMANTICS §9.3): matchName is an exact, case-insensitive, FQDN-normalised
// name; matchPattern is translated to a regex: `*` alone matches every name, `*` elsewhere matches
// zero or more of [-a-zA-Z0-9_] (never a dot), a leading `**.` matches one or more labels.
// Refused queries get rcode 5 (REFUSED).

import { entries } from "./model";
import { L7_ALLOWED, L7_DENIED, L7Result, regexMatches } from "./l7";

export const DNS_REFUSED: i32 = 5;

/** Lower-cases and adds the trailing dot. */
export function fqdn(name: string): string {
  const n = name.toLowerCase();
  return n.endsWith(".") ? n : n + ".";
}

export function dnsPatternRegex(pattern: string): string {
  const p = fqdn(pattern.trim());
  if (p == "*.") return "(?s:.*)";
  let re = "";
  let i = 0;
  if (p.startsWith("**.")) {
    re = "(?:[-a-zA-Z0-9_]+\\.)+";
    i = 3;
  }
  for (; i < p.length; i++) {
    const c = p.charAt(i);
    if (c == "*") re += "[-a-zA-Z0-9_]*";
    else if (c == ".") re += "\\.";
    else if (c == "-" || c == "_" || (c >= "a" && c <= "z") || (c >= "0" && c <= "9")) re += c;
    else re += "\\" + c;
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
        : rule.pattern !== null && regexMatches(rule.pattern, q);
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
