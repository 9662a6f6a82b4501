/**
 * Policy documents as the repository stores them: one policy per document, keyed
 * `cilia/policies/<kind>/<namespace or _>/<name>` (each part percent-encoded), its text YAML that imports again unchanged
 * (comments kept; JSON and `kind: List` items written as block YAML). Splits import text that
 * `compilePolicies` has already accepted; reads stored text back. Pure: no I/O.
 */

import { isMap, parseAllDocuments, stringify } from "yaml";

export const POLICIES_PREFIX = "cilia/policies/";

export interface PolicyRef {
  kind: string;
  namespace?: string;
  name: string;
  labels: Record<string, string>;
}

export interface PolicyDocument extends PolicyRef {
  key: string;
  /** YAML text of this one document, ending in a newline, without a `---` line. */
  text: string;
  /** Stable JSON of the parsed document: equal for documents that mean the same. */
  canonical: string;
}

/**
 * The store key of a policy. Each part is percent-encoded, so no name or namespace can reach
 * into another's key (`{namespace: "default/deny", name: "1"}` and `{namespace: "default",
 * name: "deny/1"}` are different keys); valid Kubernetes names are unchanged by the encoding.
 */
export function policyKey(ref: { kind: string; namespace?: string; name: string }): string {
  const part = encodeURIComponent;
  return `${POLICIES_PREFIX}${part(ref.kind)}/${
    ref.namespace === undefined ? "_" : part(ref.namespace)
  }/${part(ref.name)}`;
}

function stable(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(stable);
  if (v !== null && typeof v === "object") {
    return Object.fromEntries(
      Object.keys(v).sort().map((k) => [k, stable((v as Record<string, unknown>)[k])]),
    );
  }
  return v;
}

/** The document for one parsed policy object, or null when it lacks kind or name. */
function toDocument(value: unknown, text: string): PolicyDocument | null {
  const v = value as {
    kind?: unknown;
    metadata?: { name?: unknown; namespace?: unknown; labels?: unknown };
  };
  if (typeof v?.kind !== "string" || typeof v.metadata?.name !== "string") return null;
  const namespace = v.kind === "CiliumClusterwideNetworkPolicy"
    ? undefined
    : typeof v.metadata.namespace === "string"
    ? v.metadata.namespace
    : "default";
  const labels: Record<string, string> = {};
  const raw = v.metadata.labels;
  if (raw !== null && typeof raw === "object") {
    for (const [k, l] of Object.entries(raw)) labels[k] = String(l);
  }
  const ref = { kind: v.kind, name: v.metadata.name, ...(namespace ? { namespace } : {}) };
  return {
    ...ref,
    labels,
    key: policyKey(ref),
    text: text.endsWith("\n") ? text : text + "\n",
    canonical: JSON.stringify(stable(value)),
  };
}

/** One document per policy in `text` (YAML or JSON, `---`-separated, or v1 Lists). */
export function splitDocuments(text: string): PolicyDocument[] {
  const out: PolicyDocument[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) continue;
    const value = doc.toJS({ maxAliasCount: 100 }) as unknown;
    if (value === null || value === undefined) continue;
    const v = value as { kind?: unknown; items?: unknown };
    if (v.kind === "List" && Array.isArray(v.items)) {
      for (const item of v.items) {
        const d = toDocument(item, stringify(item, { lineWidth: 0 }));
        if (d) out.push(d);
      }
      continue;
    }
    const flow = isMap(doc.contents) && doc.contents.flow === true;
    const own = flow ? stringify(value, { lineWidth: 0 }) : doc.toString({ lineWidth: 0 });
    const d = toDocument(value, own.replace(/^---[ \t]*\r?\n/, ""));
    if (d) out.push(d);
  }
  return out;
}

/** A stored document back from its text; null when it is not one policy. */
export function readStored(text: string): PolicyDocument | null {
  const docs = splitDocuments(text);
  return docs.length === 1 ? docs[0]! : null;
}

/** Documents as one YAML stream that imports again unchanged. */
export function joinDocuments(docs: readonly PolicyDocument[]): string {
  return docs.map((d) => d.text).join("---\n");
}

export function refOf(d: PolicyDocument): PolicyRef {
  return {
    kind: d.kind,
    ...(d.namespace !== undefined ? { namespace: d.namespace } : {}),
    name: d.name,
    labels: d.labels,
  };
}

export interface PolicyFilter {
  kind?: string;
  namespace?: string;
  name?: string;
  /** Every one of these must be among the policy's metadata.labels. */
  labels?: Record<string, string>;
}

export function matches(d: PolicyDocument, f: PolicyFilter): boolean {
  if (f.kind !== undefined && d.kind !== f.kind) return false;
  if (f.namespace !== undefined && d.namespace !== f.namespace) return false;
  if (f.name !== undefined && d.name !== f.name) return false;
  for (const [k, v] of Object.entries(f.labels ?? {})) if (d.labels[k] !== v) return false;
  return true;
}
