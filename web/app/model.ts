// The simulator's working copy of a scenario: the scenario file's fields with all policy documents
// as one `---`-separated text (what the editor holds), and the conversions both ways, so that
// import → edit → export keeps the `cilia policy test` format. Also the endpoint table's labels and
// the L7 tester's headers, read by policy-wasm's one parser. Pure data; no DOM. This module is
// browser compatible.

import { stringify } from "yaml";
import {
  formatLabelList,
  parseHeaderLines,
  parseLabelList,
  type Scenario,
} from "../../policy-wasm/mod.ts";

export type EndpointRow = Scenario["endpoints"][number];
export type ScenarioQuery = Scenario["queries"][number];

export interface Workspace {
  name?: string | undefined;
  description?: string | undefined;
  namespaces?: Scenario["namespaces"];
  /** Every policy document, `---`-separated: the editor's text. */
  policies: string;
  endpoints: EndpointRow[];
  queries: ScenarioQuery[];
}

const SEPARATOR = /^---[ \t]*(?:#.*)?$/;

/** Splits `---`-separated text into documents, dropping blank ones; each ends with one newline. */
export function splitPolicies(text: string): string[] {
  const docs: string[][] = [[]];
  for (const line of text.split("\n")) {
    if (SEPARATOR.test(line)) docs.push([]);
    else docs[docs.length - 1]!.push(line);
  }
  return docs.map((d) => d.join("\n").replace(/^\s*\n/, "").trimEnd())
    .filter((d) => d.trim() !== "")
    .map((d) => d + "\n");
}

/** The inverse of splitPolicies() for normalised documents. */
export function joinPolicies(docs: readonly string[]): string {
  return docs.map((d) => d.trimEnd() + "\n").join("---\n");
}

export function workspaceOf(s: Scenario): Workspace {
  const docs = s.policies.map((p) => typeof p === "string" ? p : stringify(p));
  return {
    ...(s.name !== undefined ? { name: s.name } : {}),
    ...(s.description !== undefined ? { description: s.description } : {}),
    ...(s.namespaces !== undefined ? { namespaces: s.namespaces } : {}),
    policies: joinPolicies(docs.flatMap(splitPolicies)),
    endpoints: s.endpoints.map((e) => ({ ...e })),
    queries: s.queries.map((q) => ({ ...q })),
  };
}

export function scenarioOf(w: Workspace): Scenario {
  return {
    ...(w.name ? { name: w.name } : {}),
    ...(w.description ? { description: w.description } : {}),
    ...(w.namespaces ? { namespaces: w.namespaces } : {}),
    policies: splitPolicies(w.policies),
    endpoints: w.endpoints,
    queries: w.queries,
  };
}

/** `k=v,k2=v2` → labels, by parseLabelList()'s rules; a syntax error as its message. */
export function parseLabels(
  text: string,
): { labels: Record<string, string> } | { error: string } {
  try {
    return { labels: parseLabelList(text) };
  } catch (e) {
    if (e instanceof SyntaxError) return { error: e.message };
    throw e;
  }
}

export const formatLabels = formatLabelList;

/** `Name: value` lines → headers, by parseHeaderLines()'s rules; a syntax error as its message. */
export function parseHeaders(
  text: string,
): { headers: Record<string, string> } | { error: string } {
  try {
    return { headers: parseHeaderLines(text) };
  } catch (e) {
    if (e instanceof SyntaxError) return { error: e.message };
    throw e;
  }
}

/** A name not yet used by an endpoint: `pod-1`, `pod-2`, … */
export function freshEndpoint(rows: readonly EndpointRow[]): EndpointRow {
  const names = new Set(rows.map((r) => r.name));
  let n = rows.length + 1;
  while (names.has(`pod-${n}`)) n++;
  const ips = new Set(rows.map((r) => r.ip));
  let host = 10 + rows.length;
  while (ips.has(`10.0.9.${host}`)) host++;
  return {
    name: `pod-${n}`,
    namespace: rows.at(-1)?.namespace ?? "default",
    labels: { app: `pod-${n}` },
    ip: `10.0.9.${host}`,
  };
}
