// The request path as the proxy judges it and forwards it, so the engine decides on exactly the
// path the server will see (POLICY-SEMANTICS §9.1, Envoy's normalisation): percent-escapes of
// unreserved characters and of `/` are decoded (`%2e%2e` → `..`, `%2F` → `/`), other escapes
// upper-cased; `//` merged; dot segments removed (RFC 3986 §5.2.4). The query string is kept as
// sent. Invalid escapes and characters a path may not hold are errors, never passed on. This
// module is browser compatible.

export class PathError extends SyntaxError {}

const hex = (c: number) =>
  c >= 48 && c <= 57 ? c - 48 : c >= 65 && c <= 70 ? c - 55 : c >= 97 && c <= 102 ? c - 87 : -1;
const unreserved = (c: number) =>
  (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 45 ||
  c === 46 || c === 95 || c === 126;

/** RFC 3986 pchar plus `/`: visible ASCII other than space, `"`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}`, `#`. */
function allowed(c: number): boolean {
  return c > 32 && c < 127 && !'"<>\\^`{|}#'.includes(String.fromCharCode(c));
}

function decodeEscapes(path: string): string {
  let out = "";
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c !== 37) {
      if (!allowed(c)) throw new PathError(`Invalid character in path at ${i}`);
      out += path[i];
      continue;
    }
    const h = hex(path.charCodeAt(i + 1)), l = hex(path.charCodeAt(i + 2));
    if (h < 0 || l < 0) throw new PathError(`Invalid percent-escape in path at ${i}`);
    const v = (h << 4) | l;
    if (v === 0) throw new PathError("NUL in path");
    out += unreserved(v) || v === 47
      ? String.fromCharCode(v)
      : `%${path.slice(i + 1, i + 3).toUpperCase()}`;
    i += 2;
  }
  return out;
}

function removeDotSegments(path: string): string {
  const out: string[] = [];
  const segs = path.split("/").slice(1); // path starts with "/"
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    const last = i === segs.length - 1;
    if (s === "..") {
      out.pop();
      if (last) out.push("");
    } else if (s === ".") {
      if (last) out.push("");
    } else out.push(s);
  }
  return "/" + out.join("/");
}

/**
 * Whether normalisePath() would return `target` unchanged, decided in one pass without building
 * strings: a path of allowed characters with no escapes, no `//` and no segment starting with `.`,
 * then an allowed query. False means only "normalise it", not "bad".
 */
export function isNormalPath(target: string): boolean {
  if (target.charCodeAt(0) !== 47) return false;
  let i = 0;
  for (; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c === 63) break; // "?"
    if (c === 37 || !allowed(c)) return false;
    if (c === 47 && (target.charCodeAt(i + 1) === 47 || target.charCodeAt(i + 1) === 46)) {
      return false;
    }
  }
  for (; i < target.length; i++) {
    if (!allowed(target.charCodeAt(i)) && target.charCodeAt(i) !== 63) return false;
  }
  return true;
}

/** The normalised origin-form target (`/path?query`); throws PathError on a bad one. */
export function normalisePath(target: string): string {
  if (!target.startsWith("/")) throw new PathError(`Request target "${target}" is not a path`);
  const q = target.indexOf("?");
  const rawPath = q < 0 ? target : target.slice(0, q);
  const query = q < 0 ? "" : target.slice(q);
  for (let i = 0; i < query.length; i++) {
    if (!allowed(query.charCodeAt(i)) && query[i] !== "?") {
      throw new PathError(`Invalid character in query at ${i}`);
    }
  }
  const merged = decodeEscapes(rawPath).replace(/\/{2,}/g, "/");
  return removeDotSegments(merged) + query;
}
