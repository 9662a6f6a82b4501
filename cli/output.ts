// Rendering of CLI results from one model: `-o table` (aligned columns), `-o json` and `-o yaml`
// (the model itself, so YAML output can be fed back). Streams are NDJSON. This module is browser
// compatible.

import { stringify } from "yaml";

export type Format = "table" | "json" | "yaml";

export const FORMATS: readonly Format[] = ["table", "json", "yaml"];

export class UsageError extends Error {
  override name = "UsageError";
}

export function parseFormat(v: string | undefined, fallback: Format = "table"): Format {
  if (v === undefined) return fallback;
  if ((FORMATS as readonly string[]).includes(v)) return v as Format;
  throw new UsageError(`Invalid output format "${v}": expected one of ${FORMATS.join(", ")}`);
}

export interface Column<T> {
  header: string;
  value: (row: T) => string | number | boolean | undefined;
}

// deno-lint-ignore no-control-regex
const ANSI = /\x1b\[[0-9;]*m/g;

/** The length of a cell as the terminal shows it (colour escapes take no room). */
export function visibleLength(text: string): number {
  return text.replace(ANSI, "").length;
}

/** Aligned text table; the last column is not padded (colour escapes are not counted). */
export function table<T>(rows: readonly T[], columns: readonly Column<T>[]): string {
  const cells = rows.map((r) => columns.map((c) => String(c.value(r) ?? "")));
  const widths = columns.map((c, i) =>
    Math.max(c.header.length, ...cells.map((row) => visibleLength(row[i]!)))
  );
  const pad = (v: string, w: number) => v + " ".repeat(Math.max(0, w - visibleLength(v)));
  const line = (vals: string[]) =>
    vals.map((v, i) => (i === vals.length - 1 ? v : pad(v, widths[i]!))).join("  ").trimEnd();
  return [line(columns.map((c) => c.header)), ...cells.map(line)].join("\n");
}

export function renderModel(model: unknown, format: Exclude<Format, "table">): string {
  if (format === "json") return JSON.stringify(model, null, 2);
  return stringify(model, { lineWidth: 0 }).trimEnd();
}

/** Renders a listing: the table from `columns`, or the model as JSON/YAML. */
export function renderList<T>(
  rows: readonly T[],
  columns: readonly Column<T>[],
  format: Format,
): string {
  if (format === "table") return table(rows, columns);
  return renderModel(rows, format);
}
