// The one vocabulary of flow reports: how a query's peers and its name are written, and the report
// of a judged flow (verdict, reason, peers, which endpoint decided each side, the decision chain).
// `cilia policy trace` offline, the agent's live trace, `cilia policy test` (scenarios) and the
// browser all report through renderFlow(), so their words and fields agree. It renders and never
// decides: the verdict comes from evaluateFlow(), the lines from explainFlow(), whatever lines
// those hold. This module is browser compatible.

import type { PolicyEngine } from "./engine.ts";
import type { FlowInput, FlowResult, PeerRef, SideResult } from "./flow.ts";
import type { QueryResult } from "./query_codec.ts";
import { explainFlow, flowAudited, flowReason } from "./explain.ts";
import { PROTOCOL_NUMBERS, protocolName, protoPortText } from "./protocols.ts";

/** How a peer reference is written: `web`, `ns/web`, `10.0.0.1`, `entity:world`, `identity:9`. */
export function peerText(p: PeerRef): string {
  if (typeof p === "string") return p;
  if ("cidr" in p) return p.cidr;
  if ("entity" in p) return `entity:${p.entity}`;
  if ("endpoint" in p) return p.endpoint;
  return `identity:${p.identity}`;
}

/** A query as written: its peers, protocol and port (or ICMP type). */
export interface QueryText extends Pick<FlowInput, "from" | "to" | "protocol" | "port"> {
  icmpType?: number | undefined;
}

/**
 * The name of a query that has none: `web -> api TCP/80`. With the judged flow it names the
 * protocol and port that were judged (ICMP between IPv6 peers is `ICMPV6/type 128`); a query that
 * could not be judged is named as written, ICMP with its echo-request type.
 */
export function queryName(q: QueryText, judged?: Pick<FlowResult, "proto" | "port">): string {
  const proto = judged?.proto ?? PROTOCOL_NUMBERS[q.protocol] ?? 0;
  const echo = proto === PROTOCOL_NUMBERS.ICMPV6 ? 128 : 8;
  const icmp = proto === PROTOCOL_NUMBERS.ICMP || proto === PROTOCOL_NUMBERS.ICMPV6;
  const port = judged?.port ?? (icmp ? q.icmpType ?? echo : q.port);
  return `${peerText(q.from)} -> ${peerText(q.to)} ${protoPortText(proto, port)}`;
}

/** One side of a flow: the endpoint whose policy decided it, and the engine's answer. */
export type SideReport = QueryResult & {
  /** The deciding endpoint as `namespace/name`. */
  endpoint: string;
  /** Its endpoint id (the engine's, which is the agent's on a live node) and identity. */
  endpointId: number;
  identity: number;
};

/** A judged flow as every consumer prints it; plain data (JSON and YAML as is). */
export interface FlowReport {
  /** audited: allowed, but an audit-mode policy would have denied it (on either side). */
  verdict: "allowed" | "denied" | "audited";
  allowed: boolean;
  /** One line: why the flow was allowed or denied. */
  reason: string;
  from: string;
  fromIdentity: number;
  to: string;
  toIdentity: number;
  /** Protocol name as the trace writes it, its number, and the port (the type for ICMP). */
  protocol: string;
  proto: number;
  port: number;
  /** L7 rules apply and no request was given: only L3/L4 was judged. */
  l7Unevaluated: boolean;
  deniedBy?: "egress" | "ingress";
  /** An endpoint talking to itself: no policy applies. */
  loopback?: boolean;
  egress?: SideReport;
  ingress?: SideReport;
  /** The decision chain, line by line: what `cilia policy trace` prints. */
  trace: string[];
}

function sideReport(s: SideResult): SideReport {
  return {
    endpoint: `${s.endpoint.namespace}/${s.endpoint.name}`,
    endpointId: s.endpoint.id,
    identity: s.endpoint.identity,
    ...s.result,
  };
}

/** The report of a judged flow: its verdict, reason, peers, both sides and the decision chain. */
export function renderFlow(engine: PolicyEngine, flow: FlowResult): FlowReport {
  return {
    verdict: flow.allowed ? (flowAudited(flow) ? "audited" : "allowed") : "denied",
    allowed: flow.allowed,
    reason: flowReason(engine, flow),
    from: flow.from.display,
    fromIdentity: flow.from.identity,
    to: flow.to.display,
    toIdentity: flow.to.identity,
    protocol: protocolName(flow.proto),
    proto: flow.proto,
    port: flow.port,
    l7Unevaluated: flow.l7Unevaluated,
    ...(flow.deniedBy ? { deniedBy: flow.deniedBy } : {}),
    ...(flow.loopback ? { loopback: true } : {}),
    ...(flow.egress ? { egress: sideReport(flow.egress) } : {}),
    ...(flow.ingress ? { ingress: sideReport(flow.ingress) } : {}),
    trace: explainFlow(engine, flow),
  };
}
