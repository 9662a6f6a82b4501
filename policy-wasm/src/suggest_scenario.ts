// The tests that come with suggested policies: a scenario (the format `cilia policy test` runs)
// with the policies, the observed workloads as endpoints, every allowed connection as a query that
// must stay `allowed`, and near misses that must be `denied` — the same peers on a port nobody
// used, a probe endpoint that was never seen on a port that was, another HTTP request on an L7
// port, another DNS name — plus the connections the cluster dropped. Connections to addresses
// written as toFQDNs are tested through their DNS queries (an FQDN selector learns IPs only from
// the live DNS proxy). This module is browser compatible.

import { stringify } from "yaml";
import type { PeerRef } from "./flow.ts";
import type { ObservedConnection, ObservedTraffic } from "./observed.ts";
import { flowInputOf } from "./replay.ts";
import { connectionText } from "./replay.ts";
import { policiesYaml, type SuggestResult } from "./suggest_flows.ts";

const PROBE_LABELS = { app: "cilia-suggest-probe" };
const PROBE_IP = "192.0.2.254";

// deno-lint-ignore no-explicit-any
type Query = Record<string, any>;

function queryOf(c: ObservedConnection, s: SuggestResult, expect: "allowed" | "denied"): Query {
  const f = flowInputOf(c, s.cluster);
  const icmp = c.protocol === "ICMP" || c.protocol === "ICMPV6";
  return {
    name: `${expect === "allowed" ? "observed" : "observed dropped"}: ${connectionText(f)}`,
    from: f.from,
    to: f.to,
    protocol: c.protocol,
    ...(icmp ? { icmpType: c.port } : { port: c.port }),
    ...(c.http ? { http: c.http } : {}),
    ...(c.dns !== undefined ? { dns: { name: c.dns } } : {}),
    expect,
  };
}

function refText(r: PeerRef): string {
  return typeof r === "string" ? r : "cidr" in r ? r.cidr : "entity" in r ? r.entity : "?";
}

/** Near misses of one allowed connection: each must be denied. */
function nearMisses(c: ObservedConnection, s: SuggestResult, used: Set<string>): Query[] {
  if (c.from.kind === "entity" || c.protocol === "ICMP" || c.protocol === "ICMPV6") return [];
  const base = queryOf(c, s, "denied");
  const out: Query[] = [];
  let port = c.port + 1;
  while (used.has(`${refText(base.from)}>${refText(base.to)}/${c.protocol}/${port}`)) port++;
  if (port <= 65535 && !(c.port === 53 || port === 53)) {
    const { http: _h, dns: _d, ...l4 } = base;
    out.push({
      ...l4,
      port,
      name: `other port: ${refText(base.from)} -> ${refText(base.to)} ${c.protocol}/${port}`,
    });
  }
  if (c.to.kind === "endpoint") {
    const probe = `${c.to.namespace}/cilia-suggest-probe`;
    out.push({
      ...base,
      from: probe,
      name: `other peer: ${probe} -> ${refText(base.to)} ${c.protocol}/${c.port}`,
    });
  } else if (c.to.kind === "world" && c.from.kind === "endpoint") {
    out.push({
      ...base,
      to: { cidr: PROBE_IP },
      name: `other peer: ${refText(base.from)} -> ${PROBE_IP} ${c.protocol}/${c.port}`,
    });
  }
  if (c.http) {
    out.push({
      ...base,
      http: { method: "DELETE", path: "/cilia-suggest-probe" },
      name: `other request: ${refText(base.from)} -> ${
        refText(base.to)
      } DELETE /cilia-suggest-probe`,
    });
  }
  if (c.dns !== undefined) {
    out.push({
      ...base,
      dns: { name: "cilia-suggest-probe.invalid" },
      name: `other name: ${refText(base.from)} -> ${
        refText(base.to)
      } DNS cilia-suggest-probe.invalid`,
    });
  }
  return out;
}

/** The scenario of suggested policies (a plain object; YAML with scenarioYaml()). */
export function suggestScenario(
  s: SuggestResult,
  traffic: ObservedTraffic,
): Record<string, unknown> {
  const tested = s.connections.filter((c) => !(c.to.kind === "world" && s.fqdnIps.has(c.to.ip)));
  const allowed = tested.map((c) => queryOf(c, s, "allowed"));
  const used = new Set(
    allowed.map((q) => `${refText(q.from)}>${refText(q.to)}/${q.protocol}/${q.port}`),
  );
  const allowedKeys = new Set(s.connections.map((c) => c.key));
  const dropped = traffic.connections.filter((c) =>
    c.observed === "denied" && !allowedKeys.has(c.key) && c.from.kind !== "entity"
  );
  const probes = new Set(tested.flatMap((c) => c.to.kind === "endpoint" ? [c.to.namespace] : []));
  // Dropped connections name peers the allowed ones may not: their cluster is the allowed one's.
  const known = new Set(s.cluster.endpoints.map((e) => `${e.namespace}/${e.name}`));
  const queries: Query[] = [...allowed];
  const names = new Set(allowed.map((q) => q.name));
  const push = (q: Query) => {
    if (names.has(q.name)) return;
    names.add(q.name);
    queries.push(q);
  };
  for (const c of tested) for (const q of nearMisses(c, s, used)) push(q);
  for (const c of dropped) {
    const q = queryOf(c, s, "denied");
    const refs = [q.from, q.to].filter((r): r is string => typeof r === "string");
    if (refs.every((r) => known.has(r))) push(q);
  }
  return {
    name: "policies suggested from observed traffic",
    description: `${s.connections.length} allowed connection(s) from ${traffic.flows} flow(s); ` +
      `near misses and dropped connections must stay denied`,
    ...(s.cluster.namespaces.length ? { namespaces: s.cluster.namespaces } : {}),
    policies: [policiesYaml(s.policies)],
    endpoints: [
      ...s.cluster.endpoints,
      ...[...probes].sort().map((namespace) => ({
        name: "cilia-suggest-probe",
        namespace,
        labels: PROBE_LABELS,
      })),
    ],
    queries,
  };
}

export function scenarioYaml(scenario: Record<string, unknown>): string {
  return stringify(scenario, { lineWidth: 0 });
}
