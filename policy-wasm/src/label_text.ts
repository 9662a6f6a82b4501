// The one reader of labels and header lines as people type them: `app=web,k8s:tier=1` (CLI flags,
// API query strings, CNI_ARGS, the browser's endpoint table) and `Name: value` (HTTP headers in
// `cilia policy trace` and the browser's L7 tester). Syntax only: whether a key is a valid label
// key is the caller's question. It imports nothing, so the CNI plugin can use it without loading
// the engine. This module is browser compatible.

/**
 * `k=v,k2=v2` → labels. Rules: entries are separated by commas; blanks around entries, keys and
 * values are dropped; empty entries are skipped; every entry needs "=" after a non-empty key; the
 * value may be empty (`k=`); a repeated key keeps its last value. Throws SyntaxError naming the
 * entry (and `what`, e.g. "--src-labels", when given).
 */
export function parseLabelList(text: string, what?: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const raw of text.split(",")) {
    const part = raw.trim();
    if (part === "") continue;
    const eq = part.indexOf("=");
    const key = eq < 0 ? "" : part.slice(0, eq).trim();
    if (key === "") {
      throw new SyntaxError(`Invalid label "${part}"${where(what)}: expected key=value`);
    }
    labels[key] = part.slice(eq + 1).trim();
  }
  return labels;
}

/** The inverse of parseLabelList() for keys and values without "," and "=". */
export function formatLabelList(labels: Readonly<Record<string, string>> | undefined): string {
  return Object.entries(labels ?? {}).map(([k, v]) => `${k}=${v}`).join(",");
}

/**
 * `Name: value` lines → headers. Rules: one header per line (a string is split at newlines, an
 * array is taken line by line); blanks around names and values are dropped; blank lines are
 * skipped; every line needs ":" after a non-empty name; the value may contain ":"; a repeated
 * name keeps its last value. Throws SyntaxError naming the line (and `what`, when given).
 */
export function parseHeaderLines(
  lines: string | readonly string[],
  what?: string,
): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const raw of typeof lines === "string" ? lines.split("\n") : lines) {
    const line = raw.trim();
    if (line === "") continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? "" : line.slice(0, colon).trim();
    if (name === "") {
      throw new SyntaxError(`Invalid header "${line}"${where(what)}: expected Name: value`);
    }
    headers[name] = line.slice(colon + 1).trim();
  }
  return headers;
}

const where = (what: string | undefined) => (what ? ` in ${what}` : "");
