// Policy text → validated PolicySpec: reads YAML/JSON documents, picks the schema by apiVersion and
// kind, validates (zod, then Cilium's cross-field rules while translating, then conflicting L7
// parsers across all policies), and translates every policy into IR rules. All problems are collected and thrown together as one
// PolicyValidationError with locations; warnings come back with the result. This module is
// browser compatible.

import type { z } from "zod";
import { expandLists, type PathPart, readDocuments, type SourceDocument } from "./documents.ts";
import { PolicyValidationError, type ValidationIssue } from "./errors.ts";
import { IssueSink } from "./issues.ts";
import type { PolicyRef, PolicySpec, RuleSpec } from "./ir.ts";
import {
  CiliumClusterwideNetworkPolicy,
  CiliumNetworkPolicy,
  type CiliumPolicy,
  KINDS,
  NetworkPolicy,
} from "./schema.ts";
import { translateCiliumRule } from "./translate_cilium.ts";
import { translateNetworkPolicy } from "./translate_k8s.ts";
import { findL7Conflicts } from "./l7_conflicts.ts";
import type { RegexCheck } from "./l7_rules.ts";
import type { ServiceRef } from "./translate_services.ts";
import { suggest } from "./suggest.ts";

export interface PolicySource {
  text: string;
  file?: string;
  /** Line/column offset of `text` inside its file (policies embedded in a scenario). */
  offset?: { line: number; column: number };
}

export interface CompileOptions {
  clusterName?: string;
  /** The engine's regex compiler; without it, regexes are checked when the engine loads them. */
  regexCheck?: RegexCheck;
  /** The cluster's services, for toServices; without them toServices selects no peer (offline). */
  services?: readonly ServiceRef[];
}

export interface CompileResult {
  spec: PolicySpec;
  warnings: ValidationIssue[];
  /** Line and column of a path (`spec.ingress[0]`) inside policy `policy` of the spec. */
  locate(policy: number, path: string): { line: number; column: number; file?: string } | undefined;
  /** First and last line of a path inside policy `policy` ("" = the whole document). */
  span(policy: number, path: string): { line: number; endLine: number; file?: string } | undefined;
  /** metadata.annotations of policy `policy` of the spec ({} when it has none). */
  annotations(policy: number): Record<string, string>;
}

/** `spec.ingress[0].toPorts[1]` → ["spec", "ingress", 0, "toPorts", 1]. */
export function parsePath(path: string): PathPart[] {
  const out: PathPart[] = [];
  for (const m of path.matchAll(/([^.[\]]+)|\[(\d+)\]/g)) {
    if (m[2] !== undefined) out.push(Number(m[2]));
    else out.push(m[1]!);
  }
  return out;
}

const SCHEMAS = {
  CiliumNetworkPolicy,
  CiliumClusterwideNetworkPolicy,
  NetworkPolicy,
} as const;

/** True when the object at `path`'s parent exists but has no key `path`'s last part. */
function isMissing(value: unknown, path: readonly PathPart[]): boolean {
  if (path.length === 0) return false;
  let v = value;
  for (const p of path.slice(0, -1)) {
    if (v === null || typeof v !== "object") return false;
    v = (v as Record<PathPart, unknown>)[p];
  }
  const last = path[path.length - 1]!;
  return v !== null && typeof v === "object" && !Array.isArray(v) && !Object.hasOwn(v, last);
}

function zodIssues(error: z.ZodError, sink: IssueSink, value: unknown): void {
  for (const iss of error.issues) {
    const path = iss.path.map((p) => (typeof p === "symbol" ? String(p) : p)) as PathPart[];
    if (iss.code !== "unrecognized_keys" && iss.code !== "custom" && isMissing(value, path)) {
      sink.error(path, `Missing required field "${String(path[path.length - 1])}"`);
      continue;
    }
    if (iss.code === "unrecognized_keys") {
      const parts = iss.message.split("; ");
      iss.keys.forEach((k, i) => {
        let msg = parts[i] ?? `Unknown field "${k}"`;
        if (k === "rules" && path.some((p) => p === "ingressDeny" || p === "egressDeny")) {
          msg = "L7 rules are not allowed in deny rules: deny works at L3/L4 only";
        }
        sink.error(path, msg, k);
      });
      continue;
    }
    let msg = iss.message;
    if (iss.code === "invalid_union") msg = unionMessage(iss);
    if (msg.startsWith("Invalid input: expected")) msg = `Expected ${msg.slice(24)}`;
    sink.error(path, msg);
  }
}

function unionMessage(iss: z.core.$ZodIssueInvalidUnion): string {
  const first = iss.errors.map((e) => e[0]?.message).filter(Boolean);
  return first.length > 0 ? first.join(", or ") : "Invalid value";
}

/** A value in a message: JSON for scalars; lists and objects (possibly cyclic YAML) by kind. */
function shown(v: unknown): string {
  if (Array.isArray(v)) return "a list";
  if (v !== null && typeof v === "object") return "an object";
  return JSON.stringify(v ?? null);
}

function kindOf(doc: SourceDocument, sink: IssueSink): keyof typeof SCHEMAS | undefined {
  const v = doc.value as { apiVersion?: unknown; kind?: unknown };
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    sink.error([], "Expected a policy object with apiVersion and kind");
    return undefined;
  }
  const allKinds = Object.keys(SCHEMAS);
  // Own keys only: `"toString" in SCHEMAS` is true.
  if (v.kind === undefined && ("queries" in v || "endpoints" in v)) {
    sink.error(
      [],
      `This is a scenario (it has endpoints or queries), not a policy: run it with "cilia policy test"`,
    );
    return undefined;
  }
  if (typeof v.kind !== "string" || !Object.hasOwn(SCHEMAS, v.kind)) {
    const hint = typeof v.kind === "string" ? suggest(v.kind, allKinds) : undefined;
    const expected = `expected ${allKinds.slice(0, -1).join(", ")} or ${allKinds.at(-1)}`;
    sink.error(
      [],
      v.kind === undefined || v.kind === null
        ? `The document has no "kind": ${expected}`
        : `Unsupported kind ${shown(v.kind)}${
          hint ? `: did you mean "${hint}"?` : ""
        }: ${expected}`,
      v.kind === undefined ? undefined : "kind",
    );
    return undefined;
  }
  const kind = v.kind as keyof typeof SCHEMAS;
  const want = Object.entries(KINDS).find(([, ks]) => (ks as readonly string[]).includes(kind))![0];
  if (v.apiVersion !== want) {
    sink.error(
      [],
      `Expected apiVersion "${want}" for kind ${kind}, got ${shown(v.apiVersion)}`,
      "apiVersion",
    );
    return undefined;
  }
  return kind;
}

/** The annotation that puts a policy in audit mode (docs/policy.md, "Audit mode"). */
export const POLICY_MODE_ANNOTATION = "cilia.io/policy-mode";
const POLICY_MODES = ["enforce", "audit"] as const;

/** The policy's mode from its annotation; an unknown value is an error naming the field. */
function policyMode(
  annotations: Record<string, string> | null | undefined,
  sink: IssueSink,
): "audit" | undefined {
  const v = annotations?.[POLICY_MODE_ANNOTATION];
  if (v === undefined) return undefined;
  if (!(POLICY_MODES as readonly string[]).includes(v)) {
    sink.error(
      ["metadata", "annotations"],
      `Invalid annotation ${POLICY_MODE_ANNOTATION} "${v}": expected one of ${
        POLICY_MODES.map((m) => `"${m}"`).join(", ")
      }`,
      POLICY_MODE_ANNOTATION,
    );
    return undefined;
  }
  return v === "audit" ? "audit" : undefined;
}

function policyLabels(ref: PolicyRef, uid: string | undefined): string[] {
  const out = [
    `k8s:io.cilium.k8s.policy.derived-from=${ref.kind}`,
    `k8s:io.cilium.k8s.policy.name=${ref.name}`,
  ];
  if (ref.namespace !== undefined) out.push(`k8s:io.cilium.k8s.policy.namespace=${ref.namespace}`);
  if (uid !== undefined) out.push(`k8s:io.cilium.k8s.policy.uid=${uid}`);
  return out;
}

interface Accumulator {
  spec: PolicySpec;
  issues: ValidationIssue[];
  warnings: ValidationIssue[];
  seen: Map<string, ValidationIssue | undefined>;
  docs: SourceDocument[];
}

function translateDocument(doc: SourceDocument, acc: Accumulator, opts: CompileOptions): void {
  const pre = new IssueSink(doc);
  const kind = kindOf(doc, pre);
  if (!kind) {
    acc.issues.push(...pre.issues);
    return;
  }
  const parsed = SCHEMAS[kind].safeParse(doc.value);
  const name = (doc.value as { metadata?: { name?: unknown } }).metadata?.name;
  const sink = new IssueSink(doc, typeof name === "string" ? name : undefined);
  if (!parsed.success) {
    zodIssues(parsed.error, sink, doc.value);
    acc.issues.push(...sink.issues);
    return;
  }
  const p = parsed.data;
  const namespace = kind === "CiliumClusterwideNetworkPolicy"
    ? undefined
    : (p.metadata.namespace ?? "default");
  const mode = policyMode(p.metadata.annotations, sink);
  const ref: PolicyRef = {
    kind,
    name: p.metadata.name,
    ...(namespace !== undefined ? { namespace } : {}),
    ...(mode ? { mode } : {}),
    ...(doc.file ? { file: doc.file } : {}),
    ...(doc.locate([])?.line !== undefined ? { line: doc.locate([])!.line } : {}),
  };
  const id = `${kind}/${namespace ?? ""}/${ref.name}`;
  if (acc.seen.has(id)) {
    sink.error(
      ["metadata"],
      `Duplicate policy "${namespace ? namespace + "/" : ""}${ref.name}" (${kind})`,
      "name",
    );
  }
  acc.seen.set(id, undefined);
  const policy = acc.spec.policies.length;
  const labels = policyLabels(ref, p.metadata.uid);
  const rules: RuleSpec[] = [];
  if (kind === "NetworkPolicy") {
    rules.push(
      translateNetworkPolicy(p as z.infer<typeof NetworkPolicy>, { sink, policy, labels, id }),
    );
  } else {
    const cp = p as CiliumPolicy;
    const scope = namespace !== undefined
      ? { kind: "namespaced" as const, namespace }
      : { kind: "cluster" as const };
    const ctx = {
      sink,
      scope,
      clusterName: opts.clusterName ?? "default",
      id,
      ...(opts.regexCheck ? { check: opts.regexCheck } : {}),
      services: opts.services,
    };
    if (!cp.spec && (!cp.specs || cp.specs.length === 0)) {
      sink.error([], `Expected "spec" or "specs"`, "spec");
    }
    if (cp.spec) rules.push(translateCiliumRule(cp.spec, ctx, ["spec"], policy, labels));
    (cp.specs ?? []).forEach((r, i) =>
      rules.push(translateCiliumRule(r, ctx, ["specs", i], policy, labels))
    );
  }
  acc.warnings.push(...sink.warnings);
  if (sink.failed) {
    acc.issues.push(...sink.issues);
    return;
  }
  acc.spec.policies.push(ref);
  acc.docs.push(doc);
  acc.spec.rules.push(...rules);
}

/** Conflicting L7 parsers across the accepted rules (l7_conflicts.ts), located. */
function l7ConflictIssues(acc: Accumulator): ValidationIssue[] {
  return findL7Conflicts(acc.spec).map((c) => {
    const doc = acc.docs[c.policy]!;
    const ref = acc.spec.policies[c.policy]!;
    return {
      message: c.message,
      path: c.path,
      ...(doc.locate(parsePath(c.path)) ?? {}),
      ...(doc.file ? { file: doc.file } : {}),
      policy: ref.name,
    };
  });
}

/** Validates and translates every document of every source; throws PolicyValidationError. */
export function compilePolicies(
  sources: PolicySource | PolicySource[],
  opts: CompileOptions = {},
): CompileResult {
  const list = Array.isArray(sources) ? sources : [sources];
  const acc: Accumulator = {
    spec: { policies: [], rules: [] },
    issues: [],
    warnings: [],
    seen: new Map(),
    docs: [],
  };
  for (const src of list) {
    const { documents, issues } = readDocuments(src.text, {
      ...(src.file ? { file: src.file } : {}),
      ...(src.offset ? { offset: src.offset } : {}),
    });
    acc.issues.push(...issues);
    for (const doc of expandLists(documents)) translateDocument(doc, acc, opts);
  }
  if (acc.issues.length === 0) acc.issues.push(...l7ConflictIssues(acc));
  if (acc.issues.length > 0) throw new PolicyValidationError(acc.issues);
  const locate = (policy: number, path: string) => {
    const doc = acc.docs[policy];
    const at = doc?.locate(parsePath(path));
    return at && doc ? { ...at, ...(doc.file ? { file: doc.file } : {}) } : undefined;
  };
  const span = (policy: number, path: string) => {
    const doc = acc.docs[policy];
    const at = doc?.span?.(parsePath(path));
    return at && doc ? { ...at, ...(doc.file ? { file: doc.file } : {}) } : undefined;
  };
  const annotations = (policy: number): Record<string, string> => {
    const v = acc.docs[policy]?.value as { metadata?: { annotations?: unknown } } | undefined;
    const a = v?.metadata?.annotations;
    return a !== null && typeof a === "object" ? a as Record<string, string> : {};
  };
  return { spec: acc.spec, warnings: acc.warnings, locate, span, annotations };
}

/** Like compilePolicies() but returns the problems instead of throwing. */
export function validatePolicies(
  sources: PolicySource | PolicySource[],
  opts: CompileOptions = {},
): { issues: ValidationIssue[]; warnings: ValidationIssue[]; spec?: PolicySpec } {
  try {
    const r = compilePolicies(sources, opts);
    return { issues: [], warnings: r.warnings, spec: r.spec };
  } catch (e) {
    if (e instanceof PolicyValidationError) return { issues: e.issues, warnings: [] };
    throw e;
  }
}
