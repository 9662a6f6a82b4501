// The key-typo lint: selector label keys that select nothing because of a typo — an unknown label
// source (`ap:` read as source "ap"), a near-miss of a key Cilium or Kubernetes sets
// (`io.kubernetes.pod.namespac`), and, when the endpoints are known (`policy test`, the agent), a
// key that no endpoint carries. Reports through lint_rules.ts's Emit. This module is browser
// compatible.

import type { CompileResult } from "./policies.ts";
import type { Requirement, SelectorSpec } from "./ir.ts";
import { CLUSTER_LABEL, NS_LABEL, NS_LABELS_PREFIX, SA_LABEL } from "./selectors.ts";
import { editDistance, suggest } from "./suggest.ts";
import { type Emit, itemOf } from "./lint_rules.ts";

export const LABEL_SOURCES = [
  "any",
  "k8s",
  "reserved",
  "cidr",
  "cidrgroup",
  "fqdn",
  "unspec",
  "container",
  "cilium-generated",
  "kvstore",
  "node",
];

/** Keys Kubernetes and Cilium put on endpoints themselves. */
export const WELL_KNOWN_KEYS = [
  NS_LABEL,
  SA_LABEL,
  CLUSTER_LABEL,
  "io.kubernetes.pod.name",
  "k8s-app",
  "app.kubernetes.io/name",
  "app.kubernetes.io/instance",
  "app.kubernetes.io/component",
  "kubernetes.io/metadata.name",
];

const PREFIXES = ["io.kubernetes.", "io.cilium.", "app.kubernetes.io/", NS_LABELS_PREFIX];

/** A well-known key (or key prefix) that `key` is a near-miss of, as text for the message. */
function nearMiss(key: string): string | undefined {
  if (WELL_KNOWN_KEYS.includes(key)) return undefined;
  const hit = WELL_KNOWN_KEYS.find((k) => editDistance(key, k) <= 2);
  if (hit) return `"${hit}"`;
  if (PREFIXES.some((p) => key.startsWith(p))) return undefined;
  // A misspelt prefix: "io.cillium.k8s.namespace.labels.team".
  const p = PREFIXES.find((p) =>
    key.length > p.length && editDistance(key.slice(0, p.length), p) <= 2
  );
  return p ? `a key starting with "${p}"` : undefined;
}

function problem(q: Requirement, known: ReadonlySet<string> | undefined): string | undefined {
  const written = q.source === "any" ? q.key : `${q.source}:${q.key}`;
  if (!LABEL_SOURCES.includes(q.source)) {
    const hint = q.key === ""
      ? (known ? suggest(q.source, [...known]) : undefined)
      : suggest(q.source, LABEL_SOURCES);
    return `The label key "${written}" has the unknown source "${q.source}" (expected one of ${
      LABEL_SOURCES.join(", ")
    } before the ":"), so it selects nothing${hint ? `: did you mean "${hint}"?` : ""}`;
  }
  if (q.source !== "any" && q.source !== "k8s") return undefined;
  if (q.key === "") {
    return `The label key "${written}" is empty after its source: it selects nothing`;
  }
  const near = nearMiss(q.key);
  if (near) {
    return `The label key "${written}" is not a key Kubernetes or Cilium sets: did you mean ${near}? As written it selects nothing`;
  }
  if (!known || known.has(q.key) || WELL_KNOWN_KEYS.includes(q.key)) return undefined;
  if (q.key.startsWith(NS_LABELS_PREFIX) || q.op === "NotIn" || q.op === "DoesNotExist") {
    return undefined;
  }
  const hint = suggest(q.key, [...known]);
  return `No endpoint carries the label key "${written}", so this selector matches none of them${
    hint ? `: did you mean "${hint}"?` : ""
  }`;
}

/** Selector key typos; `known` = the label keys the known endpoints carry (when known). */
export function lintKeys(
  c: CompileResult,
  emit: Emit,
  known?: ReadonlySet<string>,
): void {
  c.spec.rules.forEach((r, ri) => {
    const done = new Set<string>();
    const check = (s: SelectorSpec, path: string) => {
      if (s.kind !== "labels") return;
      for (const q of s.requirements) {
        const msg = problem(q, known);
        const id = `${path}\0${q.source}:${q.key}`;
        if (msg === undefined || done.has(id)) continue;
        done.add(id);
        emit("key-typo", ri, path, msg);
      }
    };
    const p = c.spec.policies[r.policy]!;
    check(
      r.subject,
      p.kind === "NetworkPolicy" ? "spec.podSelector" : `${r.path}.endpointSelector`,
    );
    for (const e of r.entries) for (const peer of e.peers) check(peer.selector, itemOf(e.path));
  });
}
