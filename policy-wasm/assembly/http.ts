// HTTP L7 matching (POLICY-SEMANTICS §9.1): a request passes when one rule of the applicable
// entries matches. A rule is a conjunction: method, path and host are full-match RE2 regexes
// (path matched on the normalised path including the query string); `headers` entries require
// the header, and with a value a full-match regex on it (cilia's deliberate difference from
// Cilium's literal value); `headerMatches` compare exact values unless a mismatch action is set,
// in which case they only log or rewrite and never fail the rule.

import { entries, HttpRule } from "./model";
import { L7_ALLOWED, L7_DENIED, L7Result } from "./l7";
import { Regex } from "./regex/index";
import { decodeRune, RUNE_INVALID } from "./regex/utf8";
import { ABSENT, Reader } from "./wire";

/**
 * A request as the rules see it. A field (method, path, host, header value) whose bytes in the
 * query message are valid UTF-8 is matched in place and decoded to a string only if a rule
 * compares it as one (decoding and encoding again would give the same bytes); so is a path that
 * normalisation leaves unchanged. Other fields are decoded when read, and their UTF-8 is encoded
 * once, when a regex first needs it.
 */
export class HttpRequest {
  names: Array<string> = new Array<string>();
  /** Fields 0 method, 1 path (normalised), 2 host, 3 + j header value j; null: not decoded yet. */
  strs: Array<string | null> = new Array<string | null>();
  /** Where each field's bytes lie in the message; length -1: not usable, use the string. */
  rawPtr: Array<usize> = new Array<usize>();
  rawLen: Array<i32> = new Array<i32>();
  /** UTF-8 of a field without usable bytes in the message; null until first needed. */
  utf8: Array<ArrayBuffer | null> = new Array<ArrayBuffer | null>();

  /** Field `i` as a string. */
  field(i: i32): string {
    let s = unchecked(this.strs[i]);
    if (s === null) {
      s = String.UTF8.decodeUnsafe(unchecked(this.rawPtr[i]), <usize> this.rawLen[i], false);
      this.strs[i] = s;
    }
    return s;
  }

  /** Full match of `re` against field `i`. */
  fieldMatches(re: Regex | null, i: i32): bool {
    if (re === null) return true;
    const n = unchecked(this.rawLen[i]);
    if (n >= 0) return re.fullMatch(unchecked(this.rawPtr[i]), n);
    let b = this.utf8[i];
    if (b === null) {
      b = String.UTF8.encode(this.field(i), false);
      this.utf8[i] = b;
    }
    return re.fullMatch(changetype<usize>(b), b.byteLength);
  }
}

/** One request reused by every query (queries are not re-entrant): fewer objects for the GC. */
const reusable = new HttpRequest();

/** Reads the request of a query; the result is valid until the next call. */
export function readHttpRequest(r: Reader): HttpRequest {
  const q = reusable;
  q.names.length = 0;
  q.strs.length = 0;
  q.rawPtr.length = 0;
  q.rawLen.length = 0;
  readField(r, q);
  readField(r, q);
  if (q.rawLen[1] < 0 || !alreadyNormalBytes(q.rawPtr[1], q.rawLen[1])) {
    q.strs[1] = normalizePath(q.field(1));
    q.rawLen[1] = -1;
  }
  readField(r, q);
  const n = r.count(8);
  for (let i = 0; i < n; i++) {
    q.names.push(r.strOrEmpty().toLowerCase());
    readField(r, q);
  }
  const fields = q.strs.length;
  q.utf8.length = fields;
  for (let i = 0; i < fields; i++) q.utf8[i] = null;
  return q;
}

/**
 * Reads a string of the request as Reader.strOrEmpty() does; valid UTF-8 stays in place (its
 * string is decoded later if asked for), anything else is decoded now.
 */
function readField(r: Reader, q: HttpRequest): void {
  const n = r.u32();
  let ptr: usize = 0;
  let len = -1;
  let s: string | null = "";
  if (!r.failed && n != ABSENT) {
    ptr = r.bytes(<i32> n);
    if (r.failed) ptr = 0;
    else if (validUtf8(ptr, <i32> n)) {
      len = <i32> n;
      s = null;
    } else s = String.UTF8.decodeUnsafe(ptr, <usize> n, false);
  }
  q.strs.push(s);
  q.rawPtr.push(ptr);
  q.rawLen.push(len);
}

/** True when the `len` bytes at `p` are valid UTF-8 (strict, as the regex engine decodes). */
function validUtf8(p: usize, len: i32): bool {
  const end = p + <usize> len;
  while (p < end) {
    if (load<u8>(p) < 0x80) {
      p++;
      continue;
    }
    const d = decodeRune(p, end);
    if ((d & 0xffffff) == RUNE_INVALID) return false;
    p += <usize> (d >>> 24);
  }
  return true;
}

/**
 * alreadyNormal() of a path's UTF-8 bytes (with its query string): the bytes it looks at are ASCII,
 * which never occur inside a multi-byte sequence.
 */
function alreadyNormalBytes(p: usize, len: i32): bool {
  let end = 0;
  while (end < len && load<u8>(p + <usize> end) != 63) end++; // up to "?"
  if (end == 0 || load<u8>(p) != 47) return false;
  for (let i = 1; i < end; i++) {
    const c = <i32> load<u8>(p + <usize> i);
    const prev = <i32> load<u8>(p + <usize> (i - 1));
    if (c == 37 || c == 92) return false; // % \
    if (c == 47 && prev == 47) return false; // //
    if (c != 46 || prev != 47) continue; // a segment starting with "."
    const n = i + 1 < end ? <i32> load<u8>(p + <usize> (i + 1)) : 47;
    if (n == 47) return false; // "."
    if (n == 46 && (i + 2 >= end || load<u8>(p + <usize> (i + 2)) == 47)) return false; // ".."
  }
  return true;
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

/**
 * True when normalisation leaves the path (up to `end`) as it is: it starts with `/` and has no
 * escape, no backslash, no repeated slash and no `.` or `..` segment.
 */
function alreadyNormal(p: string, end: i32): bool {
  if (end == 0 || p.charCodeAt(0) != 47) return false;
  for (let i = 1; i < end; i++) {
    const c = p.charCodeAt(i);
    if (c == 37 || c == 92) return false; // % \
    if (c == 47 && p.charCodeAt(i - 1) == 47) return false; // //
    if (c != 46 || p.charCodeAt(i - 1) != 47) continue; // a segment starting with "."
    const n = i + 1 < end ? p.charCodeAt(i + 1) : 47;
    if (n == 47) return false; // "."
    if (n == 46 && (i + 2 >= end || p.charCodeAt(i + 2) == 47)) return false; // ".."
  }
  return true;
}

/** Envoy-style normalisation as Cilium configures it; the query string is kept unchanged. */
export function normalizePath(raw: string): string {
  const q = raw.indexOf("?");
  if (alreadyNormal(raw, q < 0 ? raw.length : q)) return raw;
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
      if (req.fieldMatches(h.value, 3 + j)) {
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
      if (want === null || want == req.field(3 + j)) {
        ok = true;
        break;
      }
    }
    if (!ok) return false;
  }
  return true;
}

export function httpRuleMatches(req: HttpRequest, rule: HttpRule): bool {
  return req.fieldMatches(rule.method, 0) && req.fieldMatches(rule.path, 1) &&
    req.fieldMatches(rule.host, 2) && headerRuleHolds(req, rule);
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
