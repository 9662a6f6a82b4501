// Observed traffic: flow records as cilia's `observe -o json` and Hubble's `hubble observe -o json`
// write them (NDJSON, `{"flow": {…}}` per line, or bare flow objects) read into distinct
// connections — source and destination peer (a workload by its identity labels and namespace, an
// outside address, or a reserved entity), protocol, port and the L7 request when there is one —
// with the verdict the cluster gave each most recently. It reads text and decides nothing: replay
// and suggest judge the connections with the engine. This module is browser compatible.

import { LabelFilter } from "./labels.ts";
import { CLUSTER_LABEL, NS_LABEL, NS_LABELS_PREFIX, SA_LABEL } from "./selectors.ts";
import { RESERVED_BY_NAME } from "./labels.ts";

/** One side of a connection. Endpoints are keyed by identity labels, not by pod. */
export type ObservedPeer =
  | {
    kind: "endpoint";
    namespace: string;
    /** Identity-relevant pod labels, `key: value` (k8s source implied; others keep `src:`). */
    labels: Record<string, string>;
    namespaceLabels: Record<string, string>;
    serviceAccount?: string;
    cluster?: string;
    /** One pod seen with these labels (for names), and its address. */
    pod?: string;
    ip?: string;
  }
  | { kind: "world"; ip: string; names: string[] }
  | { kind: "entity"; entity: string };

export type ObservedProtocol = "TCP" | "UDP" | "SCTP" | "ICMP" | "ICMPV6";

export interface ObservedConnection {
  key: string;
  from: ObservedPeer;
  to: ObservedPeer;
  protocol: ObservedProtocol;
  /** Destination port; the ICMP type for ICMP. */
  port: number;
  http?: { method: string; path: string };
  /** A DNS query name (Hubble's `l7.dns.query`, without the trailing dot). */
  dns?: string;
  /** What the cluster did the last time: FORWARDED/AUDIT → allowed; a policy drop → denied. */
  observed: "allowed" | "denied";
  flows: number;
  lastSeen?: string;
}

export interface ObservedTraffic {
  connections: ObservedConnection[];
  /** Flow lines read, and those left out (replies, non-policy drops, no L4, unreadable). */
  flows: number;
  skipped: { replies: number; notPolicy: number; incomplete: number };
  /** IP → DNS names learned from DNS answers and `destination_names`. */
  names: Map<string, string[]>;
}

// deno-lint-ignore no-explicit-any
type Json = any;

const POLICY_DROPS = new Set([133, 181]);
const POLICY_DROP_NAMES = new Set(["POLICY_DENIED", "POLICY_DENY"]);
const IDENTITY_FILTER = new LabelFilter();
const ENTITY_ORDER = ["kube-apiserver", "host", "remote-node", "health", "ingress", "init"];

/** The flow objects of an NDJSON text (or one JSON array); other lines (stats, lost) skipped. */
export function readFlowLines(text: string): Json[] {
  const t = text.trim();
  if (t.startsWith("[")) return (JSON.parse(t) as Json[]).map((v) => v?.flow ?? v);
  const out: Json[] = [];
  t.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    let v: Json;
    try {
      v = JSON.parse(line);
    } catch {
      throw new SyntaxError(`Cannot read flows line ${i + 1}: not JSON`);
    }
    if (v?.flow) out.push(v.flow);
    else if (v && typeof v === "object" && "verdict" in v && ("source" in v || "IP" in v)) {
      out.push(v);
    }
  });
  return out;
}

function splitLabel(l: string): [source: string, key: string, value: string] {
  const colon = l.indexOf(":");
  const eq = l.indexOf("=", colon + 1);
  const source = colon > 0 && (eq < 0 || colon < eq) ? l.slice(0, colon) : "k8s";
  const rest = colon > 0 && (eq < 0 || colon < eq) ? l.slice(colon + 1) : l;
  const e = rest.indexOf("=");
  return e < 0 ? [source, rest, ""] : [source, rest.slice(0, e), rest.slice(e + 1)];
}

/** A flow side → peer; `ip` is the side's address from `IP`. */
export function peerOfSide(side: Json, ip: string | undefined): ObservedPeer | undefined {
  const labels: string[] = Array.isArray(side?.labels) ? side.labels : [];
  const identity = Number(side?.identity ?? 0);
  const reserved = labels.filter((l) => l.startsWith("reserved:")).map((l) => l.slice(9));
  const isWorld = reserved.includes("world") || labels.some((l) => l.startsWith("cidr:")) ||
    identity === 2 || identity >= 1 << 24;
  if (isWorld) return ip ? { kind: "world", ip, names: [] } : undefined;
  const entity = ENTITY_ORDER.find((e) => reserved.includes(e)) ??
    Object.entries(RESERVED_BY_NAME).find(([, id]) => id === identity && !labels.length)?.[0];
  if (entity && entity !== "world") return { kind: "entity", entity };
  const k8s = labels.filter((l) => !l.startsWith("reserved:"));
  const ns: string | undefined = side?.namespace ||
    k8s.map(splitLabel).find(([, k]) => k === NS_LABEL)?.[2];
  if (!ns) return ip ? { kind: "world", ip, names: [] } : undefined;
  const peer: ObservedPeer = { kind: "endpoint", namespace: ns, labels: {}, namespaceLabels: {} };
  for (const [source, key, value] of k8s.map(splitLabel)) {
    if (key === NS_LABEL) continue;
    if (key.startsWith(NS_LABELS_PREFIX)) {
      peer.namespaceLabels[key.slice(NS_LABELS_PREFIX.length)] = value;
    } else if (key === SA_LABEL) peer.serviceAccount = value;
    else if (key === CLUSTER_LABEL) peer.cluster = value;
    else if (source !== "k8s") peer.labels[`${source}:${key}`] = value;
    else if (IDENTITY_FILTER.keeps(key)) peer.labels[key] = value;
  }
  delete peer.namespaceLabels["kubernetes.io/metadata.name"];
  if (side?.pod_name) peer.pod = side.pod_name;
  if (ip) peer.ip = ip;
  return peer;
}

/** The stable key of a peer: endpoints by namespace and identity labels. */
export function peerKey(p: ObservedPeer): string {
  if (p.kind === "world") return `ip:${p.ip}`;
  if (p.kind === "entity") return `entity:${p.entity}`;
  const labels = Object.entries(p.labels).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0);
  return `ep:${p.namespace}:${labels.map(([k, v]) => `${k}=${v}`).join(",")}:${
    p.serviceAccount ?? ""
  }`;
}

function l4Of(f: Json): { protocol: ObservedProtocol; port: number } | undefined {
  const l4 = f?.l4 ?? {};
  for (const p of ["TCP", "UDP", "SCTP"] as const) {
    if (l4[p]) return { protocol: p, port: Number(l4[p].destination_port ?? 0) };
  }
  if (l4.ICMPv4) return { protocol: "ICMP", port: Number(l4.ICMPv4.type ?? 8) };
  if (l4.ICMPv6) return { protocol: "ICMPV6", port: Number(l4.ICMPv6.type ?? 128) };
  return undefined;
}

function pathOf(url: string): string {
  try {
    return new URL(url, "http://x").pathname;
  } catch {
    return url.split("?")[0] ?? url;
  }
}

/** allowed / denied by policy / undefined (not a policy decision: left out). */
function verdictOf(f: Json): "allowed" | "denied" | undefined {
  const v = String(f?.verdict ?? "");
  if (v === "FORWARDED" || v === "AUDIT" || v === "REDIRECTED") return "allowed";
  if (v !== "DROPPED") return undefined;
  if (f.Type === "L7" || f.l7) return "denied";
  const code = Number(f.drop_reason ?? 0);
  if (code !== 0) return POLICY_DROPS.has(code) ? "denied" : undefined;
  return POLICY_DROP_NAMES.has(String(f.drop_reason_desc ?? "")) ? "denied" : undefined;
}

function learnNames(f: Json, names: Map<string, string[]>): void {
  const add = (ip: string, name: string) => {
    const n = name.replace(/\.$/, "");
    const list = names.get(ip) ?? [];
    if (n && !list.includes(n)) names.set(ip, [...list, n].sort());
  };
  const dns = f?.l7?.dns;
  if (dns?.query && Array.isArray(dns.ips)) { for (const ip of dns.ips) add(ip, dns.query); }
  const dst = f?.IP?.destination;
  if (dst && Array.isArray(f?.destination_names)) {
    for (const n of f.destination_names) {
      add(dst, n);
    }
  }
}

/** Reads flows (cilia's or Hubble's JSON) into distinct connections, in order of first sight. */
export function observeFlows(text: string): ObservedTraffic {
  const lines = readFlowLines(text);
  const out: ObservedTraffic = {
    connections: [],
    flows: lines.length,
    skipped: { replies: 0, notPolicy: 0, incomplete: 0 },
    names: new Map(),
  };
  const byKey = new Map<string, ObservedConnection>();
  // The latest verdict per direction: an egress trace after an ingress drop is no allow.
  const sides = new Map<string, Map<string, "allowed" | "denied">>();
  for (const f of lines) learnNames(f, out.names);
  for (const f of lines) {
    if (f?.is_reply === true) {
      out.skipped.replies++;
      continue;
    }
    const verdict = verdictOf(f);
    if (!verdict) {
      out.skipped.notPolicy++;
      continue;
    }
    const l4 = l4Of(f);
    const from = peerOfSide(f?.source, f?.IP?.source);
    const to = peerOfSide(f?.destination, f?.IP?.destination);
    if (!l4 || !from || !to) {
      out.skipped.incomplete++;
      continue;
    }
    if (to.kind === "world") to.names = out.names.get(to.ip) ?? [];
    const http = f?.l7?.http?.method
      ? { method: String(f.l7.http.method), path: pathOf(String(f.l7.http.url ?? "/")) }
      : undefined;
    const dnsName = f?.l7?.dns?.query ? String(f.l7.dns.query).replace(/\.$/, "") : undefined;
    const key = [
      peerKey(from),
      peerKey(to),
      l4.protocol,
      l4.port,
      http?.method ?? "",
      http?.path ?? "",
      dnsName ?? "",
    ].join("|");
    const dirs = sides.get(key) ?? new Map<string, "allowed" | "denied">();
    sides.set(key, dirs);
    dirs.set(String(f.traffic_direction ?? ""), verdict);
    const c = byKey.get(key);
    if (c) {
      c.observed = [...dirs.values()].includes("denied") ? "denied" : "allowed";
      c.flows++;
      if (f.time) c.lastSeen = String(f.time);
      continue;
    }
    const conn: ObservedConnection = {
      key,
      from,
      to,
      ...l4,
      ...(http ? { http } : {}),
      ...(dnsName !== undefined ? { dns: dnsName } : {}),
      observed: verdict,
      flows: 1,
      ...(f.time ? { lastSeen: String(f.time) } : {}),
    };
    byKey.set(key, conn);
    out.connections.push(conn);
  }
  return out;
}
