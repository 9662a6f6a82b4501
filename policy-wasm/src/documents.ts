// Reads YAML or JSON text (several documents, `---`-separated, or a v1 List) into documents that
// remember where each value came from, so every validation issue can name its line and column.
// This module is browser compatible.

import { type Document, isMap, isSeq, LineCounter, type Node, parseAllDocuments } from "yaml";
import type { ValidationIssue } from "./errors.ts";

export type PathPart = string | number;

export interface SourceDocument {
  value: unknown;
  /** Position of the document in its file (0-based). */
  index: number;
  file?: string;
  /** Line and column (1-based) of the value at `path`, or of the key `key` of that object. */
  locate(path: readonly PathPart[], key?: string): { line: number; column: number } | undefined;
  /** First and last line (1-based) of the value at `path` (the nearest existing parent). */
  span?(path: readonly PathPart[]): { line: number; endLine: number } | undefined;
}

export function formatPath(path: readonly PathPart[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else out += out === "" ? p : `.${p}`;
  }
  return out;
}

interface Offsets {
  /** Added to every line; for text embedded in another file. */
  line: number;
  column: number;
}

function nodeAt(doc: Document, path: readonly PathPart[]): Node | undefined {
  if (path.length === 0) return doc.contents ?? undefined;
  const n = doc.getIn(path as PathPart[], true);
  return n && typeof n === "object" && "range" in (n as object) ? n as Node : undefined;
}

function keyNode(doc: Document, path: readonly PathPart[], key: string): Node | undefined {
  const parent = nodeAt(doc, path);
  if (!parent || !isMap(parent)) return undefined;
  for (const pair of parent.items) {
    const k = pair.key as Node & { value?: unknown };
    if (k && typeof k === "object" && "value" in k && k.value === key) return k;
  }
  return undefined;
}

/** Keeps a message readable when the offending token is a whole binary file. */
function clip(text: string, max = 200): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** Parses text into documents; YAML syntax errors come back as issues (nothing is thrown). */
export function readDocuments(
  text: string,
  opts: { file?: string; offset?: Offsets } = {},
): { documents: SourceDocument[]; issues: ValidationIssue[] } {
  const lc = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const off = opts.offset ?? { line: 0, column: 0 };
  const pos = (offset: number) => {
    const p = lc.linePos(offset);
    return { line: p.line + off.line, column: p.col + (p.line === 1 ? off.column : off.column) };
  };
  const issues: ValidationIssue[] = [];
  const documents: SourceDocument[] = [];
  const list = Array.isArray(docs) ? docs : [docs];
  list.forEach((doc, index) => {
    for (const e of doc.errors) {
      const at = pos(e.pos[0]);
      issues.push({
        message: `Invalid YAML: ${clip(e.message.split("\n")[0] ?? "")}`,
        path: "",
        ...at,
        ...(opts.file ? { file: opts.file } : {}),
      });
    }
    if (doc.errors.length > 0) return;
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: 100 });
    } catch (err) {
      // The yaml package resolves aliases here, and throws (ReferenceError) for an alias bomb
      // ("Excessive alias count") or an alias before its anchor: the document is invalid.
      issues.push({
        message: `Invalid YAML: ${(err as Error)?.message ?? String(err)}`,
        path: "",
        ...pos(doc.contents?.range?.[0] ?? 0),
        ...(opts.file ? { file: opts.file } : {}),
      });
      return;
    }
    if (value === null || value === undefined) return; // empty document between separators
    const locate = (path: readonly PathPart[], key?: string) => {
      let n = key !== undefined ? keyNode(doc, path, key) : undefined;
      for (let cut = path.length; !n && cut >= 0; cut--) n = nodeAt(doc, path.slice(0, cut));
      return n?.range ? pos(n.range[0]) : undefined;
    };
    const span = (path: readonly PathPart[]) => {
      let n: Node | undefined;
      for (let cut = path.length; !n && cut >= 0; cut--) n = nodeAt(doc, path.slice(0, cut));
      if (!n?.range) return undefined;
      // range[1] is where the value ends; a block value's end is the start of the next line.
      const end = Math.max(n.range[0], n.range[1] - 1);
      return { line: pos(n.range[0]).line, endLine: pos(end).line };
    };
    documents.push({ value, index, ...(opts.file ? { file: opts.file } : {}), locate, span });
  });
  return { documents, issues };
}

/** Expands `kind: List` documents into their items, keeping locations. */
export function expandLists(documents: SourceDocument[]): SourceDocument[] {
  const out: SourceDocument[] = [];
  for (const d of documents) {
    const v = d.value as { kind?: unknown; items?: unknown };
    if (v && typeof v === "object" && v.kind === "List" && Array.isArray(v.items)) {
      v.items.forEach((item, i) => {
        out.push({
          value: item,
          index: d.index,
          ...(d.file ? { file: d.file } : {}),
          locate: (path, key) => d.locate(["items", i, ...path], key),
          ...(d.span ? { span: (path) => d.span!(["items", i, ...path]) } : {}),
        });
      });
    } else {
      out.push(d);
    }
  }
  return out;
}

export { isMap, isSeq };
