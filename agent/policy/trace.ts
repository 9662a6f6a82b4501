/**
 * `cilia policy trace` on live endpoints: the engine judges one flow between this node's
 * endpoints (or an IP, an entity, an identity) with the rules, identities and ipcache in force,
 * and reports it with renderFlow(), as the offline trace does. The verdict comes from the engine
 * (`evaluateFlow`); nothing here decides. Pure apart from the engine.
 */

import { z } from "zod";
import {
  evaluateFlow,
  type FlowInput,
  type FlowReport,
  type PeerLookup,
  type PeerRef,
  type PolicyEngine,
  renderFlow,
  type SimEndpoint,
} from "@cilia/policy-wasm";
import { type EndpointRecord, ipsOf } from "../endpoint/spec.ts";
import { EndpointNotFoundError } from "../endpoint/manager.ts";

const Peer = z.union([
  z.string().min(1),
  z.strictObject({ endpoint: z.string().min(1) }),
  z.strictObject({ ip: z.string().min(1) }),
  z.strictObject({ entity: z.string().min(1) }),
  z.strictObject({ identity: z.number().int().nonnegative() }),
]);

export const TraceRequestSchema = z.strictObject({
  from: Peer,
  to: Peer,
  port: z.number().int().min(0).max(65535),
  protocol: z.enum(["TCP", "UDP", "SCTP", "ICMP", "ICMPV6"]).default("TCP"),
  icmpType: z.number().int().min(0).max(255).optional(),
  http: z.strictObject({
    method: z.string().min(1).max(32),
    path: z.string().max(8192),
    host: z.string().max(1024).optional(),
    headers: z.record(z.string(), z.string()).optional(),
  }).optional(),
  kafka: z.strictObject({
    apiKey: z.number().int().min(0),
    apiVersion: z.number().int().optional(),
    clientID: z.string().optional(),
    topics: z.array(z.string()).optional(),
  }).optional(),
  dns: z.string().max(255).optional(),
});

export type TraceRequest = z.infer<typeof TraceRequestSchema>;

/** The agent's endpoints as flows name them: by id, by namespace/name, or by name. */
function livePeers(endpoints: EndpointRecord[]): PeerLookup {
  const all: SimEndpoint[] = endpoints.map((e) => ({
    name: e.name,
    namespace: e.namespace,
    id: e.id,
    identity: e.identity,
    labels: e.identityLabels,
    ips: ipsOf(e),
    ports: (e.namedPorts ?? []).map((p) => ({ ...p, name: p.name.toLowerCase() })),
  }));
  return {
    endpoints: all,
    endpoint(ref) {
      if (/^\d+$/.test(ref)) return all.find((e) => e.id === Number(ref));
      if (ref.includes("/")) return all.find((e) => `${e.namespace}/${e.name}` === ref);
      return all.find((e) => e.name === ref);
    },
  };
}

function peerRef(p: z.infer<typeof Peer>, peers: PeerLookup): PeerRef {
  const ref = typeof p === "string" ? { endpoint: p } : p;
  if ("ip" in ref) return { cidr: ref.ip };
  if ("endpoint" in ref) {
    const ep = peers.endpoint(ref.endpoint);
    if (ep === undefined) {
      throw new EndpointNotFoundError(
        `Endpoint "${ref.endpoint}" does not exist on this node: give an id, namespace/name or name`,
      );
    }
    return String(ep.id);
  }
  return ref;
}

/** Judges one flow between live peers; the report is renderFlow()'s, as the offline trace's. */
export function traceFlow(
  engine: PolicyEngine,
  endpoints: EndpointRecord[],
  req: TraceRequest,
): FlowReport {
  const peers = livePeers(endpoints);
  const flow: FlowInput = {
    from: peerRef(req.from, peers),
    to: peerRef(req.to, peers),
    port: req.port,
    protocol: req.protocol,
    ...(req.icmpType !== undefined ? { icmpType: req.icmpType } : {}),
    ...(req.http ? { http: req.http } : {}),
    ...(req.kafka ? { kafka: req.kafka } : {}),
    ...(req.dns !== undefined ? { dns: req.dns } : {}),
  } as FlowInput;
  return renderFlow(engine, evaluateFlow(peers, engine, flow));
}
