// Least-privilege policies from observed traffic: one CiliumNetworkPolicy per workload that the
// allowed connections name, whose ingress lists the peers that reached it and whose egress lists
// the peers it reached — workloads by their identity labels (pod-specific labels such as
// pod-template-hash are never identity labels) and namespace, outside addresses as `toCIDR` /32
// (`toFQDNs` with a DNS rule when DNS answers named them), entities as `fromEntities`, each with
// the observed ports and protocols; HTTP rules (method, exact path) on the destination's ingress
// when L7 flows show requests (on one side only: one rule per path judges the requests), and DNS to the
// observed DNS server on 53/UDP and 53/TCP. Dropped connections are never allowed. It returns
// plain documents; suggest_scenario.ts writes their tests. This module is browser compatible.

import { stringify } from "yaml";
import { LINT_IGNORE_ANNOTATION } from "./lint.ts";
import { NS_LABEL } from "./selectors.ts";
import type { ObservedConnection, ObservedPeer, ObservedTraffic } from "./observed.ts";
import { peerKey } from "./observed.ts";
import { clusterOfConnections, type ObservedCluster } from "./observed_cluster.ts";

// deno-lint-ignore no-explicit-any
export type PolicyDocument = Record<string, any>;

type EndpointPeer = ObservedPeer & { kind: "endpoint" };

export interface SuggestResult {
  policies: PolicyDocument[];
  /** The allowed connections the policies are written from, and the cluster they name. */
  connections: ObservedConnection[];
  cluster: ObservedCluster;
  /** Outside addresses written as toFQDNs (their connections are tested through DNS). */
  fqdnIps: Set<string>;
}

interface PortUse {
  protocol: string;
  port: number;
  http: { method: string; path: string }[];
  dns: string[];
}

const isDns = (c: ObservedConnection) =>
  c.dns !== undefined || (c.port === 53 && (c.protocol === "UDP" || c.protocol === "TCP"));

/** An endpoint peer's selector, seen from a policy in `ns`. */
function selectorOf(p: EndpointPeer, ns: string): PolicyDocument {
  const matchLabels: Record<string, string> = { ...p.labels };
  if (p.namespace !== ns) matchLabels[`k8s:${NS_LABEL}`] = p.namespace;
  if (p.serviceAccount && p.serviceAccount !== "default" && Object.keys(p.labels).length === 0) {
    matchLabels["k8s:io.cilium.k8s.policy.serviceaccount"] = p.serviceAccount;
  }
  return Object.keys(matchLabels).length > 0 ? { matchLabels } : {};
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** toPorts (and icmps) of one peer's port uses. */
function portRules(uses: PortUse[], o: { l7: boolean; dns: boolean }): PolicyDocument {
  const l7 = o.l7;
  const icmp = uses.filter((u) => u.protocol.startsWith("ICMP"));
  const plain = uses.filter((u) => !u.protocol.startsWith("ICMP") && !(l7 && u.http.length));
  const http = uses.filter((u) => !u.protocol.startsWith("ICMP") && l7 && u.http.length);
  const portOf = (u: PortUse) => ({ port: String(u.port), protocol: u.protocol });
  const toPorts: PolicyDocument[] = [];
  const dnsNames = o.dns ? [...new Set(plain.flatMap((u) => u.dns))].sort() : [];
  const dnsPorts = plain.filter((u) => u.port === 53 && dnsNames.length > 0);
  const rest = plain.filter((u) => !dnsPorts.includes(u));
  if (rest.length) toPorts.push({ ports: rest.map(portOf) });
  if (dnsPorts.length) {
    toPorts.push({
      ports: dnsPorts.map(portOf),
      rules: { dns: dnsNames.map((n) => ({ matchName: n })) },
    });
  }
  for (const u of http) {
    const seen = new Set<string>();
    const rules = u.http.filter((r) =>
      !seen.has(`${r.method} ${r.path}`) && seen.add(`${r.method} ${r.path}`)
    )
      .map((r) => ({ method: r.method, path: `^${escapeRegex(r.path)}$` }));
    toPorts.push({ ports: [portOf(u)], rules: { http: rules } });
  }
  const out: PolicyDocument = {};
  if (toPorts.length) out.toPorts = toPorts;
  if (icmp.length) {
    out.icmps = [{
      fields: icmp.map((u) => ({
        family: u.protocol === "ICMPV6" ? "IPv6" : "IPv4",
        type: u.port,
      })),
    }];
  }
  return out;
}

class Section {
  readonly peers = new Map<string, { peer: ObservedPeer; uses: Map<string, PortUse> }>();
  readonly fqdns = new Map<string, Set<string>>();

  add(peer: ObservedPeer, c: ObservedConnection): void {
    const k = peerKey(peer);
    const e = this.peers.get(k) ?? { peer, uses: new Map() };
    this.peers.set(k, e);
    const protos = isDns(c) ? ["UDP", "TCP"] : [c.protocol];
    for (const protocol of protos) {
      const uk = `${protocol}/${c.port}`;
      const u = e.uses.get(uk) ?? { protocol, port: c.port, http: [], dns: [] };
      e.uses.set(uk, u);
      if (c.http) u.http.push(c.http);
      if (c.dns !== undefined) u.dns.push(c.dns);
    }
  }
}

/** The policies that allow exactly the allowed connections of `traffic`. */
export function suggestPolicies(traffic: ObservedTraffic): SuggestResult {
  const connections = traffic.connections.filter((c) => c.observed === "allowed");
  // Every peer of the traffic has its name, also those only dropped connections name.
  const cluster = clusterOfConnections(traffic.connections);
  const workloads = new Map<string, { peer: EndpointPeer; ingress: Section; egress: Section }>();
  const of = (p: EndpointPeer) => {
    const k = peerKey(p);
    const w = workloads.get(k) ?? { peer: p, ingress: new Section(), egress: new Section() };
    workloads.set(k, w);
    return w;
  };
  const fqdnIps = new Set<string>();
  // A workload that resolved names may reach their addresses by name.
  const resolves = new Set(connections.filter(isDns).map((c) => peerKey(c.from)));
  for (const c of connections) {
    if (c.to.kind === "endpoint") of(c.to).ingress.add(c.from, c);
    if (c.from.kind === "endpoint") {
      const out = of(c.from).egress;
      if (c.to.kind === "world" && c.to.names.length > 0 && resolves.has(peerKey(c.from))) {
        fqdnIps.add(c.to.ip);
        for (const n of c.to.names) {
          const set = out.fqdns.get(`${c.protocol}/${c.port}`) ?? new Set();
          out.fqdns.set(`${c.protocol}/${c.port}`, set.add(n));
        }
      } else if (c.http && c.to.kind === "endpoint") {
        const { http: _l7, ...l4 } = c; // L7 on the destination's ingress only
        out.add(c.to, l4);
      } else out.add(c.to, c);
    }
  }
  const policies = [...workloads.values()].map((w) => policyOf(w, cluster));
  return { policies, connections, cluster, fqdnIps };
}

function peerField(dir: "ingress" | "egress", p: ObservedPeer, ns: string): PolicyDocument {
  const f = dir === "ingress" ? "from" : "to";
  if (p.kind === "endpoint") return { [`${f}Endpoints`]: [selectorOf(p, ns)] };
  if (p.kind === "entity") return { [`${f}Entities`]: [p.entity] };
  return { [`${f}CIDR`]: [`${p.ip}/${p.ip.includes(":") ? 128 : 32}`] };
}

function rulesOf(dir: "ingress" | "egress", s: Section, ns: string): PolicyDocument[] {
  const items = [...s.peers.values()].map(({ peer, uses }) => ({
    ...peerField(dir, peer, ns),
    ...portRules([...uses.values()], {
      l7: dir === "ingress" || peer.kind !== "endpoint",
      dns: dir === "egress",
    }),
  }));
  for (const [pp, names] of s.fqdns) {
    const [protocol, port] = pp.split("/");
    items.push({
      toFQDNs: [...names].sort().map((matchName) => ({ matchName })),
      toPorts: [{ ports: [{ port, protocol }] }],
    });
  }
  // The DNS rule must let the FQDN names through, else they are never learned.
  const fqdnNames = [...s.fqdns.values()].flatMap((n) => [...n]);
  for (const item of items) {
    for (const tp of item.toPorts ?? []) {
      if (tp.rules?.dns) {
        const names = new Set([
          ...tp.rules.dns.map((d: { matchName: string }) => d.matchName),
          ...fqdnNames,
        ]);
        tp.rules.dns = [...names].sort().map((matchName) => ({ matchName }));
      }
    }
  }
  return items;
}

function policyOf(
  w: { peer: EndpointPeer; ingress: Section; egress: Section },
  cluster: ObservedCluster,
): PolicyDocument {
  const ns = w.peer.namespace;
  const name = cluster.workload(w.peer).split("/")[1]!;
  const ignore: string[] = [];
  const hasEgress = w.egress.peers.size > 0 || w.egress.fqdns.size > 0;
  // As the dns-blocked lint sees it: 53/UDP to an outside address or to kube-system.
  const dns = [...w.egress.peers.values()].some((e) =>
    (e.peer.kind === "world" || e.peer.kind === "endpoint" && e.peer.namespace === "kube-system") &&
    e.uses.has("UDP/53")
  );
  if (hasEgress && !dns) ignore.push("dns-blocked");
  const selector = selectorOf(w.peer, ns);
  if (Object.keys(selector).length === 0) ignore.push("empty-selector");
  const spec: PolicyDocument = { endpointSelector: selector };
  if (w.ingress.peers.size > 0) spec.ingress = rulesOf("ingress", w.ingress, ns);
  if (hasEgress) spec.egress = rulesOf("egress", w.egress, ns);
  return {
    apiVersion: "cilium.io/v2",
    kind: "CiliumNetworkPolicy",
    metadata: {
      name: `${name}-from-traffic`,
      namespace: ns,
      annotations: {
        "cilia.io/generated-by": "cilia policy suggest",
        ...(ignore.length ? { [LINT_IGNORE_ANNOTATION]: ignore.join(",") } : {}),
      },
    },
    spec,
  };
}

/** The policies as one YAML stream (`---` between documents), applicable as is. */
export function policiesYaml(policies: readonly PolicyDocument[]): string {
  return policies.map((p) => stringify(p, { lineWidth: 0 }).trimEnd()).join("\n---\n") + "\n";
}
