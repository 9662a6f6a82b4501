// The simulated cluster of observed traffic: one endpoint per workload (a distinct set of identity
// labels in a namespace) that the connections name, with a readable name (its `app`-like label,
// else its pod name without the replica hashes), the namespaces with their labels, and the peer
// reference (endpoint name, `{cidr}` for an outside address, `{entity}`) of every peer. Replay
// judges the connections in it; suggest writes it into the generated scenario. This module is
// browser compatible.

import type { EndpointInput, NamespaceInput } from "./cluster.ts";
import type { PeerRef } from "./flow.ts";
import { type ObservedConnection, type ObservedPeer, peerKey } from "./observed.ts";

export interface ObservedCluster {
  endpoints: EndpointInput[];
  namespaces: NamespaceInput[];
  clusterName?: string;
  /** The reference of a peer of one of the connections. */
  ref(peer: ObservedPeer): PeerRef;
  /** The workload name of an endpoint peer: `namespace/name`. */
  workload(peer: ObservedPeer & { kind: "endpoint" }): string;
}

const NAME_KEYS = ["app.kubernetes.io/name", "app", "k8s-app", "name", "component", "role"];

/** `frontend-7d4b9c6f5-x2x9z` → `frontend`; `db-0` → `db`. */
function podBase(pod: string): string {
  return pod.replace(/-[a-z0-9]{5}$/, "").replace(/-[a-f0-9]{6,10}$/, "").replace(/-\d+$/, "");
}

function baseName(p: ObservedPeer & { kind: "endpoint" }): string {
  for (const k of NAME_KEYS) {
    const v = p.labels[k];
    if (v) return v;
  }
  if (p.pod) return podBase(p.pod);
  const first = Object.entries(p.labels)[0];
  return first ? `${first[0].replace(/.*[:/]/, "")}-${first[1]}` : "workload";
}

/** Name, namespace, labels → one endpoint per distinct identity; unique names per namespace. */
export function clusterOfConnections(connections: readonly ObservedConnection[]): ObservedCluster {
  const names = new Map<string, string>();
  const taken = new Set<string>();
  const endpoints: EndpointInput[] = [];
  const namespaces = new Map<string, Record<string, string>>();
  let clusterName: string | undefined;
  const add = (p: ObservedPeer) => {
    if (p.kind !== "endpoint") return;
    const key = peerKey(p);
    if (names.has(key)) return;
    const base = baseName(p).toLowerCase().replace(/[^a-z0-9.-]+/g, "-") || "workload";
    let name = base;
    for (let i = 2; taken.has(`${p.namespace}/${name}`); i++) name = `${base}-${i}`;
    taken.add(`${p.namespace}/${name}`);
    names.set(key, name);
    namespaces.set(p.namespace, { ...namespaces.get(p.namespace), ...p.namespaceLabels });
    clusterName ??= p.cluster;
    endpoints.push({
      name,
      namespace: p.namespace,
      labels: { ...p.labels },
      ...(p.ip && !endpoints.some((e) => e.ip === p.ip) ? { ip: p.ip } : {}),
      ...(p.serviceAccount ? { serviceAccount: p.serviceAccount } : {}),
    });
  };
  for (const c of connections) {
    add(c.from);
    add(c.to);
  }
  const workload = (p: ObservedPeer & { kind: "endpoint" }) =>
    `${p.namespace}/${names.get(peerKey(p)) ?? baseName(p)}`;
  return {
    endpoints,
    namespaces: [...namespaces].map(([name, labels]) => ({
      name,
      ...(Object.keys(labels).length > 0 ? { labels } : {}),
    })),
    ...(clusterName ? { clusterName } : {}),
    ref(p) {
      if (p.kind === "endpoint") return workload(p);
      if (p.kind === "world") return { cidr: p.ip };
      return { entity: p.entity };
    },
    workload,
  };
}
