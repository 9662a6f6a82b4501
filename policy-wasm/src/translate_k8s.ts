// Kubernetes NetworkPolicy → IR rule (POLICY-SEMANTICS §11): the subject is the pod selector in
// the policy's namespace; a direction is isolated when it is in policyTypes (omitted:
// Ingress, plus Egress when egress rules exist); each ingress/egress rule is peers × ports with
// missing peers = anyone (world and host included) and missing ports = every port; peers are pod
// selectors (same namespace), namespace selectors (namespace labels), both (AND), or ipBlocks;
// ports default to TCP. Rules of a direction that is not in policyTypes are ignored, as upstream.
// This module is browser compatible.

import type { PathPart } from "./documents.ts";
import type { IssueSink } from "./issues.ts";
import type { EntrySpec, PeerSpec, PortSpec, Requirement, RuleSpec } from "./ir.ts";
import type { K8sPeer, K8sPort, NetworkPolicy } from "./schema.ts";
import {
  cidrSelector,
  labelRequirements,
  labelsSelector,
  NS_LABEL,
  NS_LABELS_PREFIX,
} from "./selectors.ts";
import { translatePort } from "./l7_rules.ts";
import { cookieOf } from "./cookie.ts";

function peerSpec(
  peer: K8sPeer,
  ns: string,
  sink: IssueSink,
  path: PathPart[],
): PeerSpec | undefined {
  if (peer.ipBlock) {
    if (peer.podSelector || peer.namespaceSelector) {
      sink.error(
        path,
        "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
        "ipBlock",
      );
    }
    const s = cidrSelector(peer.ipBlock.cidr, peer.ipBlock.except ?? [], sink, [
      ...path,
      "ipBlock",
      "cidr",
    ]);
    return s ? { selector: s, requiresApply: false } : undefined;
  }
  if (!peer.podSelector && !peer.namespaceSelector) {
    sink.error(path, "Expected podSelector, namespaceSelector or ipBlock");
    return undefined;
  }
  const reqs: Requirement[] = [];
  if (peer.podSelector) {
    reqs.push(
      ...labelRequirements(peer.podSelector, sink, [...path, "podSelector"], {
        forceSource: "k8s",
      }),
    );
  }
  if (peer.namespaceSelector) {
    const nsReqs = labelRequirements(peer.namespaceSelector, sink, [...path, "namespaceSelector"], {
      forceSource: "k8s",
      keyPrefix: NS_LABELS_PREFIX,
    });
    if (nsReqs.length === 0) reqs.push({ source: "k8s", key: NS_LABEL, op: "Exists", values: [] });
    else reqs.push(...nsReqs);
  } else {
    reqs.push({ source: "k8s", key: NS_LABEL, op: "In", values: [ns] });
  }
  return { selector: labelsSelector(reqs), requiresApply: false };
}

function portSpecs(ports: K8sPort[], sink: IssueSink, path: PathPart[]): PortSpec[] {
  const out: PortSpec[] = [];
  ports.forEach((p, i) => {
    if (p.endPort !== undefined && p.port !== undefined && !/^[0-9]+$/.test(String(p.port))) {
      sink.error([...path, i], "endPort needs a numeric port", "endPort");
    }
    const spec = translatePort(
      { port: p.port, endPort: p.endPort ?? null, protocol: p.protocol ?? "TCP" },
      sink,
      [...path, i],
      "TCP",
    );
    if (spec) out.push(spec);
  });
  return out;
}

export function translateNetworkPolicy(
  np: NetworkPolicy,
  o: { sink: IssueSink; policy: number; labels: string[]; id: string },
): RuleSpec {
  const { sink } = o;
  const ns = np.metadata.namespace ?? "default";
  const spec = np.spec;
  const types = spec.policyTypes ??
    (spec.egress && spec.egress.length > 0 ? ["Ingress", "Egress"] : ["Ingress"]);
  const subjectReqs = labelRequirements(spec.podSelector, sink, ["spec", "podSelector"], {
    forceSource: "k8s",
  });
  subjectReqs.push({ source: "k8s", key: NS_LABEL, op: "In", values: [ns] });
  const entries: EntrySpec[] = [];
  const dirs = [["ingress", "Ingress", "from"], ["egress", "Egress", "to"]] as const;
  for (const [dir, type, peerField] of dirs) {
    const list = spec[dir] ?? [];
    if (!types.includes(type)) {
      if (list.length > 0) {
        sink.warn(["spec", dir], `spec.${dir} is ignored: "${type}" is not in policyTypes`);
      }
      continue;
    }
    list.forEach((r, i) => {
      const path: PathPart[] = ["spec", dir, i];
      const rawPeers = (r as Record<string, K8sPeer[] | null | undefined>)[peerField] ?? [];
      const peers = rawPeers.length === 0
        ? [{ selector: { kind: "all" } as const, requiresApply: false }]
        : rawPeers.flatMap((p, j) => peerSpec(p, ns, sink, [...path, peerField, j]) ?? []);
      const ports = portSpecs(r.ports ?? [], sink, [...path, "ports"]);
      const key = path.map((p) => (typeof p === "number" ? `[${p}]` : p)).join(".").replaceAll(
        ".[",
        "[",
      );
      entries.push({
        direction: dir,
        deny: false,
        peers,
        ports,
        cookie: cookieOf(`${o.id}/${key}`),
        path: key,
      });
    });
  }
  return {
    policy: o.policy,
    path: "spec",
    subject: labelsSelector(subjectReqs),
    subjectKind: "endpoint",
    defaultDeny: { ingress: types.includes("Ingress"), egress: types.includes("Egress") },
    requires: { ingress: [], egress: [] },
    entries,
    labels: o.labels,
  };
}
