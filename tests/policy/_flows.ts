// Flow records as cilia's agent writes them (agent/monitor/flow.ts buildFlow/buildL7Flow over
// synthetic datapath events), for replay and suggest tests: the three-tier app of
// examples/policies/three-tier.yaml with a proxied HTTP request, an outside client that the db's
// deny drops, a port the backend refuses and a non-policy drop.

import { buildFlow, buildL7Flow, type FlowEndpoint } from "../../agent/monitor/flow.ts";
import { podIdentityLabels } from "@cilia/policy-wasm";
import { event, frame } from "../monitor/_events.ts";

const pod = (name: string, id: number, labels: Record<string, string>): FlowEndpoint => ({
  ID: id,
  identity: 1000 + id,
  namespace: "default",
  // A pod label that is never an identity label: suggest must not select by it.
  labels: [...podIdentityLabels({ labels, namespace: "default" }), "k8s:pod-template-hash=5d9f8"],
  pod_name: `${name}-5d9f8-${"abcde".slice(0, 5)}`,
});

export const FRONTEND = pod("frontend", 1, { app: "frontend" });
export const BACKEND = pod("backend", 2, { app: "backend" });
export const DB = pod("db", 3, { app: "db" });
export const WORLD: FlowEndpoint = {
  identity: 16777217,
  labels: ["cidr:203.0.113.0/24", "reserved:world"],
};
export const IP = {
  frontend: "10.200.0.11",
  backend: "10.200.0.12",
  db: "10.200.0.13",
  ext: "203.0.113.10",
};

let clock = Date.parse("2025-01-01T10:00:00Z");

function tcp(
  a: [FlowEndpoint, string],
  b: [FlowEndpoint, string],
  o: { dport: number; drop?: number; direction?: "ingress" | "egress"; reply?: boolean },
): string {
  const e = event({
    type: o.drop ? "drop" : "trace",
    subtype: o.drop ?? 0,
    direction: o.direction ?? "egress",
    ctState: o.reply ? 2 : 0,
    dport: o.dport,
    data: frame(a[1], b[1], { proto: 6, sport: 40000, dport: o.dport, flags: 2 }),
  });
  const flow = buildFlow(e, {
    nodeName: "lab",
    now: new Date(clock += 1000),
    source: a[0],
    destination: b[0],
  });
  return JSON.stringify({ flow });
}

function http(method: string, url: string, allowed: boolean): string {
  const flow = buildL7Flow({
    method,
    url,
    host: "backend",
    protocol: "HTTP/1.1",
    code: allowed ? 200 : 403,
    allowed,
    latencyMs: 1,
    client: { ip: IP.frontend, port: 40100 },
    server: { ip: IP.backend, port: 8080 },
    direction: "ingress",
  }, { nodeName: "lab", now: new Date(clock += 1000), source: FRONTEND, destination: BACKEND });
  return JSON.stringify({ flow });
}

/** NDJSON as `cilia observe -o json` prints it, with the closing stats line. */
export function threeTierFlows(): string {
  const f: [FlowEndpoint, string] = [FRONTEND, IP.frontend];
  const b: [FlowEndpoint, string] = [BACKEND, IP.backend];
  const d: [FlowEndpoint, string] = [DB, IP.db];
  const w: [FlowEndpoint, string] = [WORLD, IP.ext];
  return [
    tcp(f, b, { dport: 8080 }),
    tcp(f, b, { dport: 8080, direction: "ingress" }),
    tcp(b, f, { dport: 40000, reply: true }),
    http("GET", "/api/orders", true),
    tcp(b, d, { dport: 5432 }),
    tcp(b, d, { dport: 5432, direction: "ingress" }),
    tcp(w, d, { dport: 5432, drop: 181, direction: "ingress" }),
    tcp(f, b, { dport: 9090, direction: "egress" }),
    tcp(f, b, { dport: 9090, drop: 133, direction: "ingress" }),
    tcp(f, w, { dport: 80 }),
    tcp(f, d, { dport: 5432, drop: 203 }), // not-ready: no policy decision
    JSON.stringify({ stats: { flows: 11 } }),
  ].join("\n") + "\n";
}
