// `toServices` egress peers → IR peer selectors, resolved against the cluster's services the
// caller passes in (the agent's service records). Cilium's semantics (pkg/policy/k8s/service.go,
// resolveToServices / processRule), which this module follows and must not loosen:
//
//  1. `k8sService: {serviceName, namespace}` selects the service of that name in that namespace;
//     `k8sServiceSelector: {selector, namespace}` selects every service whose *labels* match the
//     selector (label sources are ignored). A missing or empty namespace matches any namespace.
//  2. A selected service with a pod selector stands for its backends' pods: its selector becomes
//     an endpoint selector, scoped to the service's namespace (`k8s:io.kubernetes.pod.namespace`).
//  3. A selected service without a selector stands for its backends' addresses: one /32 CIDR each.
//  4. A toServices entry that selects no service adds no peer: the rule stays an L3 rule that
//     selects nothing (it never widens to an L4-only "any peer" rule).
//  5. Without services (offline tools: the simulator, `policy test`) nothing can be resolved:
//     each entry selects no peer and a warning says that toServices needs a live cluster.
//
// This module is browser compatible.

import type { PathPart } from "./documents.ts";
import type { PeerSpec, Requirement } from "./ir.ts";
import type { IssueSink } from "./issues.ts";
import {
  cidrSelector,
  labelRequirements,
  labelsSelector,
  NS_LABEL,
  splitSource,
} from "./selectors.ts";
import type { LabelSelector } from "./schema.ts";

/** One Kubernetes Service as toServices sees it (all ports of it together). */
export interface ServiceRef {
  name: string;
  namespace: string;
  /** The Service's own labels (matched by `k8sServiceSelector`). */
  labels?: Record<string, string>;
  /** The Service's pod selector; absent or empty: a selector-less service. */
  selector?: Record<string, string>;
  /** The backends' addresses (used for selector-less services). */
  backends: string[];
}

interface ServiceEntry {
  k8sService?: { serviceName: string; namespace?: string | undefined } | undefined;
  k8sServiceSelector?: { selector: LabelSelector; namespace?: string | undefined } | undefined;
}

/** Does `reqs` (a service label selector) match `labels`? Sources are ignored (Cilium). */
function matches(reqs: Requirement[], labels: Record<string, string>): boolean {
  return reqs.every((r) => {
    const v = Object.hasOwn(labels, r.key) ? labels[r.key] : undefined;
    switch (r.op) {
      case "In":
        return v !== undefined && r.values.includes(v);
      case "NotIn":
        return v === undefined || !r.values.includes(v);
      case "Exists":
        return v !== undefined;
      case "DoesNotExist":
        return v === undefined;
      default:
        return false;
    }
  });
}

const nsMatches = (want: string | undefined, ns: string) => !want || want === ns;

/** The services one toServices entry selects (invariant 1); issues go to `sink`. */
function selected(
  e: ServiceEntry,
  services: readonly ServiceRef[],
  o: { sink: IssueSink; path: PathPart[] },
): ServiceRef[] {
  if (e.k8sService && e.k8sServiceSelector) {
    o.sink.error(
      o.path,
      "Expected exactly one of k8sService and k8sServiceSelector, got both",
      "k8sServiceSelector",
    );
    return [];
  }
  if (e.k8sService) {
    const { serviceName, namespace } = e.k8sService;
    if (serviceName === "") {
      o.sink.error([...o.path, "k8sService"], "Expected a non-empty serviceName", "serviceName");
      return [];
    }
    return services.filter((s) => s.name === serviceName && nsMatches(namespace, s.namespace));
  }
  if (e.k8sServiceSelector) {
    const { selector, namespace } = e.k8sServiceSelector;
    const reqs = labelRequirements(selector, o.sink, [...o.path, "k8sServiceSelector", "selector"]);
    return services.filter((s) =>
      nsMatches(namespace, s.namespace) && matches(reqs, s.labels ?? {})
    );
  }
  o.sink.error(o.path, `Expected "k8sService" or "k8sServiceSelector"`);
  return [];
}

/** The peers of an egress item's `toServices` (invariants 2–5). */
export function servicePeers(
  list: readonly ServiceEntry[],
  o: { sink: IssueSink; path: PathPart[]; services: readonly ServiceRef[] | undefined },
): PeerSpec[] {
  const out: PeerSpec[] = [];
  const seen = new Set<string>();
  const push = (p: PeerSpec) => {
    const k = JSON.stringify(p.selector);
    if (!seen.has(k)) out.push(p), seen.add(k);
  };
  list.forEach((e, i) => {
    const path = [...o.path, "toServices", i];
    const found = selected(e, o.services ?? [], { sink: o.sink, path });
    if (o.services === undefined) {
      o.sink.warn(
        path,
        "toServices needs a live cluster: the agent resolves it against its services; offline it selects no peer",
        undefined,
        "to-services-offline",
      );
      return;
    }
    for (const s of found) {
      const sel = Object.entries(s.selector ?? {});
      if (sel.length > 0) {
        const reqs: Requirement[] = sel.map(([k, v]) => {
          const [source, key] = splitSource(k);
          return { source, key, op: "In", values: [v] };
        });
        reqs.push({ source: "k8s", key: NS_LABEL, op: "In", values: [s.namespace] });
        push({ selector: labelsSelector(reqs), requiresApply: true });
        continue;
      }
      for (const ip of s.backends) {
        const c = cidrSelector(ip.includes(":") ? `${ip}/128` : `${ip}/32`, [], o.sink, path);
        if (c) push({ selector: c, requiresApply: false });
      }
    }
  });
  if (out.length > 0 || list.length === 0) return out;
  const why = o.services === undefined
    ? "toServices is resolved by the agent against its services: offline it selects no peer"
    : "toServices selects no known service";
  return [{ selector: { kind: "none", why }, requiresApply: false }];
}
