// The flow record: one datapath event as Hubble's flow shows it (`time`, `verdict`,
// `drop_reason_desc`, `IP`, `l4`, `source`/`destination` with identity, labels, namespace and pod,
// `traffic_direction`, `is_reply`, `Summary`, `node_name`, `event_type`, `destination_service` /
// `source_service`), plus cilia's `policy`: the policy, rule and YAML path that decided it, and
// the service's frontend and id next to Hubble's name and namespace. `buildFlow()` assembles a
// record from an event and what the caller looked up; it decides nothing and reads nothing. This
// module is browser compatible.

import { DROP_REASONS, kafkaApiKeyName } from "@cilia/policy-wasm";
import { TRACE_SOCK_XLATE } from "@cilia/policy-wasm/constants";
import type { PacketEvent } from "../datapath/events.ts";
import { type FlowIP, type FlowL4, type ParsedPacket, parsePacket, summaryOf } from "./_packet.ts";

export type { FlowIP, FlowL4 };

export type FlowVerdict = "FORWARDED" | "DROPPED" | "AUDIT";
export const FLOW_VERDICTS: readonly FlowVerdict[] = ["FORWARDED", "DROPPED", "AUDIT"];
export type FlowType = "drop" | "trace" | "policy-verdict" | "l7";
export const FLOW_TYPES: readonly FlowType[] = ["drop", "trace", "policy-verdict", "l7"];

/** Hubble's event type numbers (monitor API): drop 1, trace 4, policy verdict 5, L7 129. */
const HUBBLE_TYPE: Record<FlowType, number> = { drop: 1, trace: 4, "policy-verdict": 5, l7: 129 };

/** Hubble's `l7` record of a proxied request (one flow per request, with its response). */
export interface FlowL7 {
  type: "REQUEST" | "RESPONSE";
  latency_ns: number;
  http?: {
    code: number;
    method: string;
    url: string;
    protocol: string;
    host?: string;
  };
  /** Hubble's DNS record: the query, the answer's addresses, CNAMEs and rcode. */
  dns?: {
    query: string;
    ips: string[];
    cnames: string[];
    rcode: number;
    qtypes: string[];
    observation_source: "proxy";
  };
  /** Hubble's Kafka record: the request's type, version and topics, and the error it got. */
  kafka?: {
    error_code: number;
    api_version: number;
    api_key: string;
    correlation_id: number;
    topic: string;
  };
  /** Why the proxy answered itself (a denial, a parse error), if it did. */
  error?: string;
}

export interface FlowEndpoint {
  /** The endpoint id, when the side is an endpoint of this node. */
  ID?: number;
  identity: number;
  namespace?: string;
  labels: string[];
  pod_name?: string;
}

/**
 * Hubble's `destination_service` / `source_service` (name, namespace), plus cilia's `frontend`
 * ("10.96.0.10:80/TCP", "[fd00::10]:80/TCP"; "unknown" for a service deleted since) and `id`
 * (the datapath's service id, the event's svcId), and `type` for a NodePort or LoadBalancer
 * frontend an outside client used ("NodePort", frontend "192.0.2.1:30080/TCP").
 */
export interface FlowService {
  name?: string;
  namespace?: string;
  frontend: string;
  id: number;
  /** The frontend an outside client used on the underlay (bpf/lib/np_event.h); none: ClusterIP. */
  type?: "NodePort" | "LoadBalancer";
}

/** Which policy decided, from the rule cookie in the event (or the engine, for a default). */
export interface FlowPolicy {
  kind: string;
  namespace?: string;
  name: string;
  /** The entry's path in its document, e.g. `spec.ingress[0].toPorts[0]` (absent: a default). */
  rule?: string;
  cookie?: number;
  /** How it decided: allow-rule, deny-rule, default-deny, audit (would have dropped), … */
  decision: string;
  /** One sentence, e.g. "endpoint default/db is selected by … for ingress and no rule allows it". */
  text: string;
}

export interface Flow {
  time: string;
  verdict: FlowVerdict;
  drop_reason?: number;
  drop_reason_desc?: string;
  IP?: FlowIP;
  l4?: FlowL4;
  source: FlowEndpoint;
  destination: FlowEndpoint;
  /** SOCK: a socket LB translation (no packet), as Hubble's "trace sock" flows. */
  Type: "L3_L4" | "L7" | "SOCK";
  l7?: FlowL7;
  node_name: string;
  event_type: { type: number; sub_type: number };
  /** The service a reply came back from (its address was restored as the source). */
  source_service?: FlowService;
  /** The service the client connected to (the packet went to its chosen backend). */
  destination_service?: FlowService;
  traffic_direction: "INGRESS" | "EGRESS" | "TRAFFIC_DIRECTION_UNKNOWN";
  is_reply: boolean;
  Summary: string;
  policy?: FlowPolicy;
  /** cilia's event type name (what `--type` filters on). */
  cilia_type: FlowType;
  /** Socket LB translations (bpf/lib/sock_trace.h): Hubble's translation point. */
  sock_xlate_point?: "SOCK_XLATE_POINT_POST_DIRECTION_FWD";
  /** The translated socket's cookie (its low 32 bits, carried in the event's ifindex). */
  socket_cookie?: number;
}

/** What the caller knows about the event's context (from the agent's endpoints and identities). */
export interface FlowContext {
  nodeName: string;
  /** When the event was seen (or that time's ISO text, when many events share it). */
  now: Date | string;
  source: FlowEndpoint;
  destination: FlowEndpoint;
  policy?: FlowPolicy | undefined;
  /** The service of the event's svcId (ServiceIndex.of), when it has one. */
  service?: FlowService | undefined;
  /** Verdict override (audit mode), else from the event. */
  verdict?: FlowVerdict;
  /** The event's packet, if the caller parsed it already. */
  packet?: ParsedPacket;
}

const timeOf = (now: Date | string) => typeof now === "string" ? now : now.toISOString();

/** The verdict an event stands for. */
export function eventVerdict(e: PacketEvent): FlowVerdict {
  if (e.type === "drop") return "DROPPED";
  if (e.type === "trace") return "FORWARDED";
  if (e.verdict === "audit") return "AUDIT"; // audit mode: passed, subtype = the would-be drop
  return e.subtype !== 0 ? "DROPPED" : "FORWARDED";
}

/** Hubble's DropReason enum name of a drop code (`POLICY_DENIED` for 133), as in Hubble's flows. */
export function dropReasonName(code: number): string {
  return DROP_REASONS.get(code)?.[2] ?? `REASON_${code}`;
}

const REASON_CODES = new Map<string, number>();
for (const [code, [name, , hubble]] of DROP_REASONS) {
  for (const n of [hubble, name, `DROP_${name}`]) REASON_CODES.set(n, code);
}

/**
 * The code of a drop reason given as a number, Hubble's enum name (`POLICY_DENIED`) or cilia's C
 * name (`POLICY`, `DROP_POLICY`), case-insensitive; undefined when it names none.
 */
export function dropReasonCode(text: string): number | undefined {
  if (/^\d{1,3}$/.test(text)) return Number(text);
  return REASON_CODES.get(text.toUpperCase());
}

/** A reply names the service it came from, any other packet the one it went to. */
const serviceSide = (s: FlowService, reply: boolean) =>
  reply ? { source_service: s } : { destination_service: s };

export function buildFlow(e: PacketEvent, ctx: FlowContext): Flow {
  const pkt = ctx.packet ?? parsePacket(e.data);
  const verdict = ctx.verdict ?? eventVerdict(e);
  const reason = e.type === "trace" ? 0 : e.subtype;
  const flow: Flow = {
    time: timeOf(ctx.now),
    verdict,
    ...(reason !== 0 ? { drop_reason: reason, drop_reason_desc: dropReasonName(reason) } : {}),
    ...(pkt.IP ? { IP: pkt.IP } : {}),
    ...(pkt.l4 ? { l4: pkt.l4 } : {}),
    source: ctx.source,
    destination: ctx.destination,
    Type: "L3_L4",
    node_name: ctx.nodeName,
    event_type: { type: HUBBLE_TYPE[e.type], sub_type: e.subtype },
    ...(ctx.service ? serviceSide(ctx.service, e.ctState === 2) : {}),
    traffic_direction: e.direction === "ingress"
      ? "INGRESS"
      : e.direction === "egress"
      ? "EGRESS"
      : "TRAFFIC_DIRECTION_UNKNOWN",
    is_reply: e.ctState === 2,
    Summary: summaryOf(pkt.l4, e.proto),
    ...(ctx.policy ? { policy: ctx.policy } : {}),
    cilia_type: e.type,
  };
  if (e.type === "trace" && e.subtype === TRACE_SOCK_XLATE) {
    // The socket LB's translation: Hubble's "trace sock" (monitor type 133) from the client.
    flow.Type = "SOCK";
    flow.event_type = { type: 133, sub_type: e.subtype };
    flow.traffic_direction = "EGRESS";
    flow.sock_xlate_point = "SOCK_XLATE_POINT_POST_DIRECTION_FWD";
    flow.socket_cookie = e.ifindex;
  }
  return flow;
}

/** The ports and protocol of a flow, for filters and text. */
export function flowL4(f: Flow): { proto: string; sport?: number; dport?: number } {
  const l4 = f.l4;
  if (!l4) return { proto: "" };
  if ("TCP" in l4) {
    return { proto: "TCP", sport: l4.TCP.source_port, dport: l4.TCP.destination_port };
  }
  if ("UDP" in l4) {
    return { proto: "UDP", sport: l4.UDP.source_port, dport: l4.UDP.destination_port };
  }
  if ("SCTP" in l4) {
    return { proto: "SCTP", sport: l4.SCTP.source_port, dport: l4.SCTP.destination_port };
  }
  if ("ICMPv4" in l4) return { proto: "ICMPv4" };
  return { proto: "ICMPv6" };
}

/** One request the L7 proxy judged (agent/proxy), as the monitor takes it. */
export interface L7Input {
  method: string;
  url: string;
  host: string;
  protocol: string;
  code: number;
  allowed: boolean;
  latencyMs: number;
  error?: string;
  client: { ip: string; port: number };
  server: { ip: string; port: number };
  direction: "ingress" | "egress";
  /** A Kafka request (the HTTP fields are then not used). */
  kafka?: {
    apiKey: number;
    apiVersion: number;
    correlationId: number;
    topics: string[];
    errorCode: number;
  };
}

/** The flow of one proxied HTTP request (Hubble's L7 flow, `Type: "L7"`). */
export function buildL7Flow(r: L7Input, ctx: FlowContext): Flow {
  const v6 = r.client.ip.includes(":");
  const k = r.kafka;
  const l7: FlowL7 = {
    type: "RESPONSE",
    latency_ns: Math.round(r.latencyMs * 1e6),
    ...(k
      ? {
        kafka: {
          error_code: k.errorCode,
          api_version: k.apiVersion,
          api_key: k.apiKey < 0 ? "unknown" : kafkaApiKeyName(k.apiKey),
          correlation_id: k.correlationId,
          topic: k.topics.join(","),
        },
      }
      : {
        http: {
          code: r.code,
          method: r.method,
          url: r.url,
          protocol: r.protocol,
          ...(r.host ? { host: r.host } : {}),
        },
      }),
    ...(r.error !== undefined ? { error: r.error } : {}),
  };
  const summary = k
    ? `Kafka ${l7.kafka!.api_key} v${k.apiVersion} correlation ${k.correlationId}${
      k.topics.length ? ` topic "${k.topics.join(",")}"` : ""
    } error ${k.errorCode}`
    : `HTTP/${r.protocol.replace("HTTP/", "")} ${r.method} ${r.url} ${r.code}`;
  return {
    time: timeOf(ctx.now),
    verdict: ctx.verdict ?? (r.allowed ? "FORWARDED" : "DROPPED"),
    IP: { source: r.client.ip, destination: r.server.ip, ipVersion: v6 ? "IPv6" : "IPv4" },
    l4: { TCP: { source_port: r.client.port, destination_port: r.server.port } },
    source: ctx.source,
    destination: ctx.destination,
    Type: "L7",
    l7,
    node_name: ctx.nodeName,
    event_type: { type: HUBBLE_TYPE.l7, sub_type: 0 },
    traffic_direction: r.direction === "ingress" ? "INGRESS" : "EGRESS",
    is_reply: false,
    Summary: summary,
    ...(ctx.policy ? { policy: ctx.policy } : {}),
    cilia_type: "l7",
  };
}

/** One DNS query the DNS proxy judged (agent/proxy/dns_proxy.ts), as the monitor takes it. */
export interface DnsInput {
  query: string;
  qtype: string;
  allowed: boolean;
  rcode: number;
  /** The CNAME chain after the question name. */
  cnames: string[];
  ips: string[];
  latencyMs: number;
  error?: string;
  client: { ip: string; port: number };
  server: { ip: string; port: number };
  /** Over TCP (else UDP). */
  tcp?: boolean;
}

const RCODE_TEXT = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"];

/** The flow of one DNS query through the DNS proxy (Hubble's L7 DNS flow, egress). */
export function buildDnsFlow(r: DnsInput, ctx: FlowContext): Flow {
  const rcode = RCODE_TEXT[r.rcode] ?? `RCODE${r.rcode}`;
  const l7: FlowL7 = {
    type: "RESPONSE",
    latency_ns: Math.round(r.latencyMs * 1e6),
    dns: {
      query: r.query,
      ips: r.ips,
      cnames: r.cnames,
      rcode: r.rcode,
      qtypes: r.qtype ? [r.qtype] : [],
      observation_source: "proxy",
    },
    ...(r.error !== undefined ? { error: r.error } : {}),
  };
  const answer = r.ips.length > 0 ? ` ${r.ips.join(",")}` : "";
  return {
    time: timeOf(ctx.now),
    verdict: ctx.verdict ?? (r.allowed ? "FORWARDED" : "DROPPED"),
    IP: {
      source: r.client.ip,
      destination: r.server.ip,
      ipVersion: r.server.ip.includes(":") ? "IPv6" : "IPv4",
    },
    l4: r.tcp
      ? { TCP: { source_port: r.client.port, destination_port: r.server.port } }
      : { UDP: { source_port: r.client.port, destination_port: r.server.port } },
    source: ctx.source,
    destination: ctx.destination,
    Type: "L7",
    l7,
    node_name: ctx.nodeName,
    event_type: { type: HUBBLE_TYPE.l7, sub_type: 0 },
    traffic_direction: "EGRESS",
    is_reply: false,
    Summary: `DNS Answer "${r.query}" ${r.qtype} ${rcode}${answer}`,
    ...(ctx.policy ? { policy: ctx.policy } : {}),
    cilia_type: "l7",
  };
}
