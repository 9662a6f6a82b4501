// A flow between two peers (of a simulated cluster or the agent's live endpoints, found through a
// PeerLookup), judged as the datapath judges it: the source endpoint's egress policy and the
// destination endpoint's ingress policy must both allow it, and where either side redirects to
// the proxy, the L7 request must pass that side's rules. World, CIDR and reserved peers have no
// policy of their own. This module is browser compatible.

import type { PolicyEngine } from "./engine.ts";
import type { SimEndpoint } from "./cluster.ts";
import type { HttpRequest, KafkaRequest, QueryResult } from "./query_codec.ts";
import { parseAddress } from "./cidr.ts";
import { RESERVED_BY_NAME } from "./labels.ts";
import { PROTOCOL_NUMBERS } from "./protocols.ts";
import { FlowInputError } from "./errors.ts";

/**
 * Where a flow's endpoints are found: the simulated cluster (SimCluster) or the agent's live
 * endpoints. Resolution only asks this; it never builds a cluster.
 */
export interface PeerLookup {
  /** The endpoint a flow names by reference (name, namespace/name, or what the lookup accepts). */
  endpoint(ref: string): SimEndpoint | undefined;
  /** Every endpoint, to find the one an IP belongs to. */
  readonly endpoints: readonly SimEndpoint[];
}

export type PeerRef = string | { endpoint: string } | { cidr: string } | { entity: string } | {
  identity: number;
};

export interface Peer {
  /** How to print the peer. */
  display: string;
  identity: number;
  endpoint?: SimEndpoint;
  family?: 4 | 6;
}

export interface FlowInput {
  from: PeerRef;
  to: PeerRef;
  port: number;
  protocol: "TCP" | "UDP" | "SCTP" | "ICMP" | "ICMPV6";
  icmpType?: number;
  http?: HttpRequest;
  kafka?: KafkaRequest;
  dns?: string;
}

export interface SideResult {
  direction: "egress" | "ingress";
  endpoint: SimEndpoint;
  peer: Peer;
  result: QueryResult;
}

export interface FlowResult {
  allowed: boolean;
  from: Peer;
  to: Peer;
  proto: number;
  port: number;
  egress?: SideResult;
  ingress?: SideResult;
  /** The side that denied it, if any. */
  deniedBy?: "egress" | "ingress";
  /** True when a redirect applied and no L7 request was given (L7 not evaluated). */
  l7Unevaluated: boolean;
  /** An endpoint talking to itself: loopback inside the pod, no policy applies. */
  loopback?: boolean;
  /** The L7 request the flow carried, if any. */
  request?: { http?: HttpRequest; kafka?: KafkaRequest; dns?: string };
}

export function resolvePeer(peers: PeerLookup, engine: PolicyEngine, ref: PeerRef): Peer {
  if (typeof ref === "string") ref = { endpoint: ref };
  if ("endpoint" in ref) {
    const ep = peers.endpoint(ref.endpoint);
    if (!ep) throw new FlowInputError(`Unknown endpoint "${ref.endpoint}"`);
    const fam = ep.ips[0] ? parseAddress(ep.ips[0])?.family : undefined;
    return {
      display: `${ep.namespace}/${ep.name}`,
      identity: ep.identity,
      endpoint: ep,
      ...(fam ? { family: fam } : {}),
    };
  }
  if ("cidr" in ref) {
    const a = parseAddress(ref.cidr.replace(/\/\d+$/, ""));
    if (!a) {
      throw new FlowInputError(`Invalid IP "${ref.cidr}": expected an address such as 203.0.113.7`);
    }
    const ip = ref.cidr.replace(/\/\d+$/, "");
    const identity = engine.lookupIp(ip);
    const ep = peers.endpoints.find((e) => e.identity === identity && e.ips.includes(ip));
    return { display: ip, identity, family: a.family, ...(ep ? { endpoint: ep } : {}) };
  }
  if ("entity" in ref) {
    const id = RESERVED_BY_NAME[ref.entity];
    if (id === undefined) {
      throw new FlowInputError(
        `Unknown entity "${ref.entity}": expected one of ${
          Object.keys(RESERVED_BY_NAME).join(", ")
        }`,
      );
    }
    return { display: `reserved:${ref.entity}`, identity: id };
  }
  return { display: `identity ${ref.identity}`, identity: ref.identity };
}

function protoNumber(f: FlowInput, from: Peer, to: Peer): number {
  if (f.protocol === "ICMP" && (from.family === 6 || to.family === 6)) {
    return PROTOCOL_NUMBERS.ICMPV6!;
  }
  return PROTOCOL_NUMBERS[f.protocol]!;
}

function side(
  engine: PolicyEngine,
  f: FlowInput,
  o: {
    direction: "egress" | "ingress";
    endpoint: SimEndpoint;
    peer: Peer;
    proto: number;
    port: number;
  },
): SideResult {
  const result = engine.query({
    endpoint: o.endpoint.id,
    direction: o.direction,
    peer: o.peer.identity,
    proto: o.proto,
    port: o.port,
    ...(f.http ? { http: f.http } : {}),
    ...(f.kafka ? { kafka: f.kafka } : {}),
    ...(f.dns !== undefined ? { dns: f.dns } : {}),
  });
  return { direction: o.direction, endpoint: o.endpoint, peer: o.peer, result };
}

function sideAllows(s: SideResult | undefined): { ok: boolean; unevaluated: boolean } {
  if (!s) return { ok: true, unevaluated: false };
  const r = s.result;
  if (r.verdict === "deny") return { ok: false, unevaluated: false };
  if (r.verdict === "redirect") {
    if (r.l7.status === "denied") return { ok: false, unevaluated: false };
    return { ok: true, unevaluated: r.l7.status === "not-evaluated" };
  }
  return { ok: true, unevaluated: false };
}

export function evaluateFlow(peers: PeerLookup, engine: PolicyEngine, f: FlowInput): FlowResult {
  const from = resolvePeer(peers, engine, f.from);
  const to = resolvePeer(peers, engine, f.to);
  const proto = protoNumber(f, from, to);
  const port = proto === 1 || proto === 58 ? (f.icmpType ?? (proto === 58 ? 128 : 8)) : f.port;
  // A pod talking to itself (its own IP) goes over its loopback device: it never reaches the
  // datapath and no policy applies (Kubernetes' network-policy tests allow loopback).
  if (from.endpoint && from.endpoint === to.endpoint) {
    return { allowed: true, from, to, proto, port, l7Unevaluated: false, loopback: true };
  }
  const egress = from.endpoint
    ? side(engine, f, { direction: "egress", endpoint: from.endpoint, peer: to, proto, port })
    : undefined;
  const ingress = to.endpoint
    ? side(engine, f, { direction: "ingress", endpoint: to.endpoint, peer: from, proto, port })
    : undefined;
  const e = sideAllows(egress);
  const i = sideAllows(ingress);
  const deniedBy = !e.ok ? "egress" : !i.ok ? "ingress" : undefined;
  return {
    allowed: e.ok && i.ok,
    from,
    to,
    proto,
    port,
    ...(egress ? { egress } : {}),
    ...(ingress ? { ingress } : {}),
    ...(deniedBy ? { deniedBy } : {}),
    l7Unevaluated: e.unevaluated || i.unevaluated,
    ...(f.http || f.kafka || f.dns !== undefined
      ? {
        request: {
          ...(f.http ? { http: f.http } : {}),
          ...(f.kafka ? { kafka: f.kafka } : {}),
          ...(f.dns !== undefined ? { dns: f.dns } : {}),
        },
      }
      : {}),
  };
}
