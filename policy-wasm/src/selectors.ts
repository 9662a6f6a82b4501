// Translation of label selectors, entities and CIDRs into the IR's SelectorSpec, with Cilium's
// label-source parsing (POLICY-SEMANTICS §3) and namespace scoping (§4.3). This module is
// browser compatible.

import type { PathPart } from "./documents.ts";
import type { IssueSink } from "./issues.ts";
import type { PeerSpec, Requirement, SelectorSpec } from "./ir.ts";
import type { LabelSelector } from "./schema.ts";
import { canonicalPrefix, parseAddress, parsePrefix, prefixContains } from "./cidr.ts";
import { checkLabelKey } from "./schema.ts";
import { suggest } from "./suggest.ts";

export const NS_LABEL = "io.kubernetes.pod.namespace";
export const NS_LABELS_PREFIX = "io.cilium.k8s.namespace.labels.";
export const SA_LABEL = "io.cilium.k8s.policy.serviceaccount";
export const CLUSTER_LABEL = "io.cilium.k8s.policy.cluster";

/** `k8s:app` → [k8s, app]; `app` → [any, app] (Cilium reads a bare key as `any:`). */
export function splitSource(key: string, defaultSource = "any"): [string, string] {
  const colon = key.indexOf(":");
  if (colon <= 0) return [defaultSource, key];
  return [key.slice(0, colon), key.slice(colon + 1)];
}

const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

function checkValue(sink: IssueSink, path: readonly PathPart[], v: string): void {
  if (v.length > 63 || !LABEL_VALUE.test(v)) {
    sink.error(
      path,
      `Invalid label value "${v}": expected at most 63 characters of [A-Za-z0-9-_.], starting and ending with an alphanumeric`,
    );
  }
}

/** A selector key must be a Kubernetes qualified name after its source (k8s:, any:). */
function checkKey(
  sink: IssueSink,
  path: readonly PathPart[],
  at: string,
  [source, key]: [string, string],
  written = at,
): void {
  if (source !== "any" && source !== "k8s") return;
  if (key.startsWith(NS_LABELS_PREFIX) || key === "") return;
  const problem = checkLabelKey(key);
  if (problem) sink.error(path, `Invalid label key "${written}": ${problem}`, at);
}

function sortRequirements(reqs: Requirement[]): Requirement[] {
  const key = (r: Requirement) => `${r.key}\0${r.source}\0${r.op}\0${r.values.join("\0")}`;
  return reqs.map((r) => ({ ...r, values: [...new Set(r.values)].sort() }))
    .sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

/** A Kubernetes label selector → requirements; `prefixSource` forces a source (KNP: `k8s`). */
export function labelRequirements(
  sel: LabelSelector | null | undefined,
  sink: IssueSink,
  path: readonly PathPart[],
  opts: { forceSource?: string; keyPrefix?: string } = {},
): Requirement[] {
  const reqs: Requirement[] = [];
  const mk = (rawKey: string): [string, string] => {
    if (opts.forceSource) return [opts.forceSource, (opts.keyPrefix ?? "") + rawKey];
    return splitSource(rawKey);
  };
  for (const [k, v] of Object.entries(sel?.matchLabels ?? {})) {
    checkValue(sink, [...path, "matchLabels", k], v);
    const [source, key] = mk(k);
    checkKey(sink, [...path, "matchLabels"], k, opts.forceSource ? ["k8s", k] : [source, key]);
    reqs.push({ source, key, op: "In", values: [v] });
  }
  (sel?.matchExpressions ?? []).forEach((e, i) => {
    const p = [...path, "matchExpressions", i];
    const values = e.values ?? [];
    if ((e.operator === "In" || e.operator === "NotIn") && values.length === 0) {
      sink.error(p, `Operator "${e.operator}" needs at least one value`, "values");
    }
    if ((e.operator === "Exists" || e.operator === "DoesNotExist") && values.length > 0) {
      sink.error(p, `Operator "${e.operator}" takes no values`, "values");
    }
    values.forEach((v, j) => checkValue(sink, [...p, "values", j], v));
    const [source, key] = mk(e.key);
    checkKey(sink, p, "key", opts.forceSource ? ["k8s", e.key] : [source, key], e.key);
    reqs.push({ source, key, op: e.operator, values });
  });
  return sortRequirements(reqs);
}

export function labelsSelector(reqs: Requirement[]): SelectorSpec {
  return { kind: "labels", requirements: sortRequirements(reqs) };
}

export type Scope = { kind: "namespaced"; namespace: string } | { kind: "cluster" };

/** Namespace scoping of a peer endpoint selector (POLICY-SEMANTICS §4.3). */
export function scopePeer(reqs: Requirement[], scope: Scope): Requirement[] {
  if (reqs.some((r) => r.source === "reserved")) return reqs;
  if (reqs.some((r) => r.key === NS_LABEL && (r.source === "k8s" || r.source === "any"))) {
    return reqs;
  }
  if (scope.kind === "cluster") {
    return [...reqs, { source: "k8s", key: NS_LABEL, op: "Exists", values: [] }];
  }
  if (reqs.some((r) => r.key.startsWith(NS_LABELS_PREFIX))) return reqs;
  return [...reqs, { source: "k8s", key: NS_LABEL, op: "In", values: [scope.namespace] }];
}

const reserved = (name: string): SelectorSpec =>
  labelsSelector([{ source: "reserved", key: name, op: "Exists", values: [] }]);

export const ENTITIES = [
  "all",
  "world",
  "cluster",
  "host",
  "remote-node",
  "init",
  "health",
  "unmanaged",
  "kube-apiserver",
  "ingress",
  "none",
] as const;

/** An entity → the selectors of the reserved identities (and pods) it stands for (§7). */
export function entitySelectors(entity: string, clusterName: string): SelectorSpec[] | undefined {
  switch (entity) {
    case "all":
      return [{ kind: "all" }];
    case "none":
      return [];
    case "world":
      return [reserved("world")];
    case "cluster":
      return [
        ...["host", "remote-node", "init", "health", "unmanaged", "kube-apiserver", "ingress"]
          .map(reserved),
        labelsSelector([{ source: "k8s", key: CLUSTER_LABEL, op: "In", values: [clusterName] }]),
      ];
    case "host":
    case "remote-node":
    case "init":
    case "health":
    case "unmanaged":
    case "kube-apiserver":
    case "ingress":
      return [reserved(entity)];
  }
  return undefined;
}

export function entityPeers(
  list: readonly string[],
  sink: IssueSink,
  path: readonly PathPart[],
  clusterName: string,
): PeerSpec[] {
  const out: PeerSpec[] = [];
  list.forEach((e, i) => {
    const sels = entitySelectors(e, clusterName);
    if (!sels) {
      const hint = suggest(e, ENTITIES);
      sink.error(
        [...path, i],
        `Unknown entity "${e}"${hint ? `: did you mean "${hint}"?` : ""} (expected one of ${
          ENTITIES.join(", ")
        })`,
      );
      return;
    }
    for (const s of sels) out.push({ selector: s, requiresApply: false });
  });
  return out;
}

/** A CIDR (or bare IP) with excepts → selector; excepts must lie inside the CIDR. */
export function cidrSelector(
  cidr: string,
  except: readonly string[],
  sink: IssueSink,
  path: readonly PathPart[],
): SelectorSpec | undefined {
  let outer;
  try {
    outer = parsePrefix(cidr);
  } catch (e) {
    sink.error(path, `Invalid CIDR "${cidr}": ${(e as Error).message}`);
    return undefined;
  }
  const ex: string[] = [];
  except.forEach((x, i) => {
    try {
      const inner = parsePrefix(x);
      if (!prefixContains(outer, inner)) {
        sink.error([...path.slice(0, -1), "except", i], `Except "${x}" is not inside "${cidr}"`);
        return;
      }
      ex.push(canonicalPrefix(x));
    } catch (e) {
      sink.error(
        [...path.slice(0, -1), "except", i],
        `Invalid CIDR "${x}": ${(e as Error).message}`,
      );
    }
  });
  const canonical = canonicalPrefix(cidr);
  if (cidr.includes("/") && hostBitsSet(cidr, canonical)) {
    sink.warn(
      path,
      `The CIDR "${cidr}" has host bits set: it is read as "${canonical}". Write "${canonical}", or "${
        cidr.split("/")[0]
      }/${cidr.includes(":") ? 128 : 32}" for the one address`,
      undefined,
      "cidr-host-bits",
    );
  }
  return { kind: "cidr", cidr: canonical, except: [...new Set(ex)].sort() };
}

function hostBitsSet(cidr: string, canonical: string): boolean {
  const a = parseAddress(cidr.split("/")[0]!);
  const b = parseAddress(canonical.split("/")[0]!);
  return a !== null && b !== null && a.addr.some((x, i) => x !== b.addr[i]);
}
