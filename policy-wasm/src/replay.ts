// Replay: observed connections judged again with a draft policy — "which of the connections my
// cluster actually makes would this policy break, and which would it open?" It builds the
// simulated cluster of the traffic (observed_cluster.ts), loads the draft into the engine, judges
// every distinct connection as the datapath would (evaluateFlow) and lists those whose verdict
// changes, newly denied first, each with the draft's explanation (renderFlow). The CLI
// (`cilia policy replay`) and the browser call this one function. This module is browser
// compatible.

import type { PolicyEngine } from "./engine.ts";
import { SimCluster } from "./cluster.ts";
import { evaluateFlow, type FlowInput } from "./flow.ts";
import { type FlowReport, peerText, renderFlow } from "./flow_text.ts";
import { compilePolicies, type PolicySource } from "./policies.ts";
import { DEFAULT_OPTIONS } from "./ir.ts";
import type { ObservedConnection, ObservedTraffic } from "./observed.ts";
import { clusterOfConnections, type ObservedCluster } from "./observed_cluster.ts";

export type ReplayChange = "newly-denied" | "newly-allowed";

export interface ReplayEntry {
  change: ReplayChange;
  /** `default/frontend -> default/backend TCP/8080 GET /api`. */
  connection: string;
  from: string;
  to: string;
  protocol: string;
  port: number;
  http?: { method: string; path: string };
  dns?: string;
  observed: "allowed" | "denied";
  draft: "allowed" | "denied" | "audited";
  /** How many flows showed this connection, and the last time. */
  flows: number;
  lastSeen?: string;
  /** The draft's one-line reason and decision chain. */
  reason: string;
  trace: string[];
}

export interface ReplaySummary {
  flows: number;
  connections: number;
  unchanged: number;
  newlyDenied: number;
  newlyAllowed: number;
  skipped: ObservedTraffic["skipped"];
}

export interface ReplayReport {
  summary: ReplaySummary;
  /** Newly denied first, then newly allowed; in order of first sight within each. */
  changes: ReplayEntry[];
}

/** The engine's flow input for an observed connection. */
export function flowInputOf(c: ObservedConnection, cluster: ObservedCluster): FlowInput {
  return {
    from: cluster.ref(c.from),
    to: cluster.ref(c.to),
    port: c.port,
    protocol: c.protocol,
    ...(c.protocol === "ICMP" || c.protocol === "ICMPV6" ? { icmpType: c.port } : {}),
    ...(c.http ? { http: { method: c.http.method, path: c.http.path } } : {}),
    ...(c.dns !== undefined ? { dns: c.dns } : {}),
  };
}

/** `a -> b TCP/80 GET /x`: the connection as one line. */
export function connectionText(f: FlowInput): string {
  const l4 = f.protocol === "ICMP" || f.protocol === "ICMPV6"
    ? `${f.protocol}/type ${f.icmpType ?? f.port}`
    : `${f.protocol}/${f.port}`;
  const l7 = f.http
    ? ` ${f.http.method} ${f.http.path}`
    : f.dns !== undefined
    ? ` DNS ${f.dns}`
    : "";
  return `${peerText(f.from)} -> ${peerText(f.to)} ${l4}${l7}`;
}

/** Judges every observed connection with `policies` loaded into `engine` (its state is replaced). */
export function replayTraffic(
  engine: PolicyEngine,
  traffic: ObservedTraffic,
  policies: PolicySource[],
): ReplayReport {
  const cluster = clusterOfConnections(traffic.connections);
  const options = {
    ...DEFAULT_OPTIONS,
    ...(cluster.clusterName ? { clusterName: cluster.clusterName } : {}),
  };
  const compiled = compilePolicies(policies, {
    ...(cluster.clusterName ? { clusterName: cluster.clusterName } : {}),
    regexCheck: (p) => engine.checkRegex(p),
  });
  const sim = new SimCluster({
    namespaces: cluster.namespaces,
    endpoints: cluster.endpoints,
    ...(cluster.clusterName ? { clusterName: cluster.clusterName } : {}),
  });
  sim.load(engine, compiled.spec, options);
  const denied: ReplayEntry[] = [];
  const allowed: ReplayEntry[] = [];
  for (const c of traffic.connections) {
    const input = flowInputOf(c, cluster);
    const report: FlowReport = renderFlow(engine, evaluateFlow(sim, engine, input));
    const now = report.allowed ? "allowed" : "denied";
    if (now === c.observed) continue;
    const entry: ReplayEntry = {
      change: now === "denied" ? "newly-denied" : "newly-allowed",
      connection: connectionText(input),
      from: peerText(input.from),
      to: peerText(input.to),
      protocol: input.protocol,
      port: c.port,
      ...(c.http ? { http: c.http } : {}),
      ...(c.dns !== undefined ? { dns: c.dns } : {}),
      observed: c.observed,
      draft: report.verdict,
      flows: c.flows,
      ...(c.lastSeen ? { lastSeen: c.lastSeen } : {}),
      reason: report.reason,
      trace: report.trace,
    };
    (now === "denied" ? denied : allowed).push(entry);
  }
  return {
    summary: {
      flows: traffic.flows,
      connections: traffic.connections.length,
      unchanged: traffic.connections.length - denied.length - allowed.length,
      newlyDenied: denied.length,
      newlyAllowed: allowed.length,
      skipped: traffic.skipped,
    },
    changes: [...denied, ...allowed],
  };
}

/** One line: `3 connections would change: 2 newly denied, 1 newly allowed (40 unchanged)`. */
export function replaySummaryText(s: ReplaySummary): string {
  const changed = s.newlyDenied + s.newlyAllowed;
  return `${changed} of ${s.connections} connection(s) would change: ${s.newlyDenied} newly denied, ${s.newlyAllowed} newly allowed (${s.unchanged} unchanged, from ${s.flows} flow(s))`;
}
