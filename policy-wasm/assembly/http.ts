// HTTP L7 matching (POLICY-SEMANTICS §9.1): a request passes when one rule of the applicable
// entries matches. A rule is a conjunction: method, path and host are full-match RE2 regexes
// (path matched on the normalised path including the query string); `headers` entries require
// the header, and with a value a full-match regex on it (cilia's deliberate difference from
// Cilium's literal value); `headerMatches` compare exact values unless a mismatch action is set,
// in which case they only log or rewrite and never fail the rule.

import { entries, HttpRule } from "./model";
import { L7_ALLOWED, L7_DENIED, L7Result, regexMatches } from "./l7";
import { Reader } from "./wire";

export class HttpRequest {
  method: string = "";
  path: string = "";
  host: string = "";
  names: Array<string> = new Array<string>();
  values: Array<string> = new Array<string>();
}

export function readHttpRequest(r: Reader): HttpRequest {
  const q = new HttpRequest();
  q.method = r.strOrEmpty();
  q.path = normalizePath(r.strOrEmpty());
  q.host = r.strOrEmpty();
  const n = r.count(8);
  for (let i = 0; i < n; i++) {
    q.names.push(r.strOrEmpty().toLowerCase());
    q.values.push(r.strOrEmpty());
  }
  return q;
}

function hexVal(c: i32): i32 {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 65 && c <= 70) return c - 55;
  if (c >= 97 && c <= 102) return c - 87;
  return -1;
}

function isUnreserved(c: i32): bool {
  return (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 45 ||
    c == 46 || c == 95 || c == 126;
}

/** Decodes %XX of unreserved characters and of `/` and `\`, upper-cases other escapes. */
function decodeEscapes(p: string): string {
  let out = "";
  for (let i = 0; i < p.length; i++) {
    const c = p.charCodeAt(i);
    if (c == 37 && i + 2 < p.length) {
      const h = hexVal(p.charCodeAt(i + 1));
      const l = hexVal(p.charCodeAt(i + 2));
      if (h >= 0 && l >= 0) {
        const v = (h << 4) | l;
        if (isUnreserved(v) || v == 47 || v == 92) out += String.fromCharCode(v);
        else out += "%" + p.charAt(i + 1).toUpperCase() + p.charAt(i + 2).toUpperCase();
        i += 2;
        continue;
      }
    }
    out += String.fromCharCode(c);
  }
  return out;
}

/** RFC 3986 §5.2.4 on `/`-separated segments, after merging repeated slashes. */
function removeDotSegments(p: string): string {
  const parts = p.split("/");
  const stack = new Array<string>();
  let trailing = false;
  for (let i = 1; i < parts.length; i++) {
    const seg = parts[i];
    trailing = false;
    if (seg == "" && i < parts.length - 1) continue; // merged slash
    if (seg == ".") {
      trailing = true;
      continue;
    }
    if (seg == "..") {
      if (stack.length > 0) stack.pop();
      trailing = true;
      continue;
    }
    stack.push(seg);
  }
  let out = "";
  for (let i = 0; i < stack.length; i++) out += "/" + stack[i];
  if (out == "" || trailing) out += "/";
  return out;
}

/** Envoy-style normalisation as Cilium configures it; the query string is kept unchanged. */
export function normalizePath(raw: string): string {
  const q = raw.indexOf("?");
  const path = q < 0 ? raw : raw.substring(0, q);
  const query = q < 0 ? "" : raw.substring(q);
  if (!path.startsWith("/") && !path.startsWith("%2F") && !path.startsWith("%2f")) return raw;
  const decoded = decodeEscapes(path).replaceAll("\\", "/");
  return removeDotSegments(decoded) + query;
}

function headerRuleHolds(req: HttpRequest, rule: HttpRule): bool {
  for (let i = 0; i < rule.headers.length; i++) {
    const h = rule.headers[i];
    let ok = false;
    for (let j = 0; j < req.names.length; j++) {
      if (req.names[j] != h.name) continue;
      if (regexMatches(h.value, req.values[j])) {
        ok = true;
        break;
      }
    }
    if (!ok) return false;
  }
  for (let i = 0; i < rule.headerMatches.length; i++) {
    const m = rule.headerMatches[i];
    if (m.mismatch != 0) continue; // LOG/ADD/DELETE/REPLACE act on mismatch, never deny
    if (m.secret && m.value === null) return false; // a secret cilia cannot read never matches
    let ok = false;
    for (let j = 0; j < req.names.length; j++) {
      if (req.names[j] != m.name) continue;
      const want = m.value;
      if (want === null || want == req.values[j]) {
        ok = true;
        break;
      }
    }
    if (!ok) return false;
  }
  return true;
}

export function httpRuleMatches(req: HttpRequest, rule: HttpRule): bool {
  return regexMatches(rule.method, req.method) && regexMatches(rule.path, req.path) &&
    regexMatches(rule.host, req.host) && headerRuleHolds(req, rule);
}

export function httpCheck(req: HttpRequest, l7: Array<i32>): L7Result {
  const res = new L7Result();
  for (let i = 0; i < l7.length; i++) {
    const rulesOf = entries[l7[i]].http;
    for (let k = 0; k < rulesOf.length; k++) {
      if (httpRuleMatches(req, rulesOf[k])) {
        res.status = L7_ALLOWED;
        res.entry = l7[i];
        res.rule = k;
        res.detail = 200;
        return res;
      }
    }
  }
  res.status = L7_DENIED;
  res.detail = 403;
  return res;
}
