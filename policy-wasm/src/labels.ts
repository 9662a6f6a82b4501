// Identity labels of a pod-like endpoint, derived as Cilium derives a Kubernetes pod's
// (POLICY-SEMANTICS §3): its labels under `k8s:` filtered by the identity-relevant label filter,
// its namespace, its namespace's labels, its service account and its cluster; and the reserved
// identities. This module is browser compatible.

import { CLUSTER_LABEL, NS_LABEL, NS_LABELS_PREFIX, SA_LABEL } from "./selectors.ts";
import type { IdentitySpec } from "./ir.ts";

/** A label filter entry: a regex anchored at the start of the key; `!` excludes. */
export type LabelPattern = string;

/** Cilium's default identity-relevant label filter (docs: "Limiting Identity-Relevant Labels"). */
export const DEFAULT_LABEL_FILTER: readonly LabelPattern[] = [
  "io\\.kubernetes\\.pod\\.namespace$",
  "io\\.cilium\\.k8s\\.namespace\\.labels\\.",
  "io\\.cilium\\.k8s\\.policy\\.",
  "app\\.kubernetes\\.io/",
  "!io\\.kubernetes\\.",
  "!([^/]*\\.)?kubernetes\\.io/",
  "!([^/]*\\.)?k8s\\.io/",
  "!pod-template-generation$",
  "!pod-template-hash$",
  "!controller-revision-hash$",
  "!controller-uid$",
  "!job-name$",
  "!annotation\\.",
  "!etcd_node$",
];

export class LabelFilter {
  #include: RegExp[] = [];
  #exclude: RegExp[] = [];

  /** Includes win over excludes; a key matching neither is kept. */
  constructor(patterns: readonly LabelPattern[] = DEFAULT_LABEL_FILTER) {
    for (const p of patterns) {
      const neg = p.startsWith("!");
      const src = neg ? p.slice(1) : p;
      let re: RegExp;
      try {
        re = new RegExp(`^(?:${src})`);
      } catch (cause) {
        throw new SyntaxError(`Invalid label filter pattern "${p}"`, { cause });
      }
      (neg ? this.#exclude : this.#include).push(re);
    }
  }

  keeps(key: string): boolean {
    if (this.#include.some((r) => r.test(key))) return true;
    return !this.#exclude.some((r) => r.test(key));
  }
}

export interface PodLike {
  labels: Record<string, string>;
  namespace: string;
  namespaceLabels?: Record<string, string>;
  serviceAccount?: string;
}

/** `k8s:`-sourced identity labels of a pod, sorted. */
export function podIdentityLabels(
  pod: PodLike,
  opts: { clusterName?: string; filter?: LabelFilter } = {},
): string[] {
  const filter = opts.filter ?? DEFAULT_FILTER;
  const out = new Set<string>();
  for (const [k, v] of Object.entries(pod.labels)) {
    const colon = k.indexOf(":");
    const [source, key] = colon > 0 && !k.slice(0, colon).includes("/")
      ? [k.slice(0, colon), k.slice(colon + 1)]
      : ["k8s", k];
    if (source === "k8s" && !filter.keeps(key)) continue;
    out.add(`${source}:${key}=${v}`);
  }
  out.add(`k8s:${NS_LABEL}=${pod.namespace}`);
  const nsLabels = { "kubernetes.io/metadata.name": pod.namespace, ...pod.namespaceLabels };
  for (const [k, v] of Object.entries(nsLabels)) out.add(`k8s:${NS_LABELS_PREFIX}${k}=${v}`);
  out.add(`k8s:${SA_LABEL}=${pod.serviceAccount ?? "default"}`);
  out.add(`k8s:${CLUSTER_LABEL}=${opts.clusterName ?? "default"}`);
  return [...out].sort();
}

const DEFAULT_FILTER = new LabelFilter();

/** Reserved identities (POLICY-SEMANTICS §10); world also stands for 0.0.0.0/0 and ::/0. */
export const RESERVED_IDENTITIES: readonly IdentitySpec[] = [
  { id: 1, labels: ["reserved:host"] },
  { id: 2, labels: ["reserved:world"], cidr: "world" },
  { id: 3, labels: ["reserved:unmanaged"] },
  { id: 4, labels: ["reserved:health"] },
  { id: 5, labels: ["reserved:init"] },
  { id: 6, labels: ["reserved:remote-node"] },
  // The apiserver runs on nodes: its identity also carries remote-node (Cilium numericidentity.go).
  { id: 7, labels: ["reserved:kube-apiserver", "reserved:remote-node"] },
  { id: 8, labels: ["reserved:ingress"] },
];

export const RESERVED_BY_NAME: Readonly<Record<string, number>> = {
  host: 1,
  world: 2,
  unmanaged: 3,
  health: 4,
  init: 5,
  "remote-node": 6,
  "kube-apiserver": 7,
  ingress: 8,
};

/** First node-local (CIDR) identity: bit 24 set (POLICY-SEMANTICS §10). */
export const LOCAL_IDENTITY_BASE = 1 << 24;

/** A CIDR identity's labels: `cidr:<prefix>` and reserved:world. */
export function cidrIdentityLabels(prefix: string): string[] {
  return [`cidr:${prefix.replaceAll(":", "-")}`, "reserved:world"];
}

/** Every distinct prefix that the spec's CIDR selectors name (with their excepts). */
export function cidrPrefixesOf(
  spec: { rules: { entries: { peers: { selector: { kind: string } }[] }[] }[] },
): string[] {
  const out = new Set<string>();
  for (const r of spec.rules) {
    for (const e of r.entries) {
      for (const p of e.peers) {
        const s = p.selector as { kind: string; cidr?: string; except?: string[] };
        if (s.kind !== "cidr") continue;
        out.add(s.cidr!);
        for (const x of s.except ?? []) out.add(x);
      }
    }
  }
  return [...out].sort();
}
