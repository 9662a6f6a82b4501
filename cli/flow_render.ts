// How `cilia observe` prints flows: `compact` (one line: time, both sides with their labels, the
// service a side was reached through, the verdict with its reason, the summary and the deciding
// policy), `table`, and `json`/`jsonpb`
// (`{"flow": {...}}` per line, as `hubble observe -o json`). Renders and never filters. This
// module is browser compatible.

import type { Flow, FlowEndpoint, FlowService } from "@cilia/agent/monitor";
import { flowL4 } from "@cilia/agent/monitor";
import { type Column, table } from "./output.ts";

export const OBSERVE_FORMATS = ["compact", "table", "json", "jsonpb"] as const;
export type ObserveFormat = (typeof OBSERVE_FORMATS)[number];

/** "app=frontend" from identity labels (source prefixes and namespace labels dropped). */
export function shortLabels(labels: string[]): string {
  const cidr = labels.filter((l) => l.startsWith("cidr:"));
  if (cidr.length > 0) return cidr.join(",");
  const own = labels.filter((l) =>
    !/^k8s:io\.(kubernetes|cilium)\./.test(l) && !l.startsWith("reserved:")
  );
  if (own.length > 0) return own.map((l) => l.replace(/^[a-z0-9-]+:/, "")).join(",");
  return labels.map((l) => l.replace(/^reserved:/, "")).join(",") || "unknown";
}

function sideText(e: FlowEndpoint, ip: string | undefined, port: number | undefined): string {
  const where = e.pod_name ? `${e.namespace}/${e.pod_name}` : ip ?? "?";
  const p = port !== undefined ? `:${port}` : "";
  return `${where}${p} (${shortLabels(e.labels)}, ID:${e.identity})`;
}

/**
 * "default/web 10.96.0.10:80/TCP", "10.96.0.10:80/TCP" (no name), "7 (unknown)" (deleted),
 * "default/web NodePort 192.0.2.1:30080/TCP" (an outside client's NodePort or LoadBalancer).
 */
export function serviceText(s: FlowService): string {
  if (s.frontend === "unknown") return `${s.id} (unknown)`;
  const name = s.name === undefined ? "" : `${s.namespace ? `${s.namespace}/` : ""}${s.name} `;
  return `${name}${s.type ? `${s.type} ` : ""}${s.frontend}`;
}

const via = (s: FlowService | undefined) => s ? ` via service ${serviceText(s)}` : "";

function timeText(iso: string): string {
  return iso.slice(11, 23);
}

function verdictText(f: Flow): string {
  return f.drop_reason !== undefined
    ? `${f.verdict} ${f.drop_reason_desc} (${f.drop_reason})`
    : f.verdict;
}

export function compactLine(f: Flow): string {
  const l4 = flowL4(f);
  const from = sideText(f.source, f.IP?.source, l4.sport) + via(f.source_service);
  const to = sideText(f.destination, f.IP?.destination, l4.dport) + via(f.destination_service);
  const by = f.policy ? ` — ${f.policy.text}` : "";
  const dir = f.traffic_direction === "TRAFFIC_DIRECTION_UNKNOWN" ? "" : ` ${f.traffic_direction}`;
  const sock = f.sock_xlate_point ? " socket-LB" : ""; // the socket LB's translation, no packet
  return `${timeText(f.time)} [${f.node_name}] ${from} -> ${to} ${f.cilia_type}${sock}${dir} ` +
    `${verdictText(f)} (${f.Summary})${f.is_reply ? " reply" : ""}${by}`;
}

const COLUMNS: Column<Flow>[] = [
  { header: "TIME", value: (f) => timeText(f.time) },
  {
    header: "SOURCE",
    value: (f) => sideText(f.source, f.IP?.source, flowL4(f).sport),
  },
  {
    header: "DESTINATION",
    value: (f) => sideText(f.destination, f.IP?.destination, flowL4(f).dport),
  },
  {
    header: "SERVICE",
    value: (f) => {
      const s = f.destination_service ?? f.source_service;
      return s ? serviceText(s) : "";
    },
  },
  { header: "TYPE", value: (f) => f.cilia_type },
  { header: "VERDICT", value: verdictText },
  { header: "SUMMARY", value: (f) => f.Summary },
  { header: "POLICY", value: (f) => f.policy?.text ?? "" },
];

export function flowTable(flows: readonly Flow[]): string {
  return table(flows, COLUMNS);
}

/** One flow in a streaming format (table is rendered at the end, or per flow when following). */
export function flowLine(f: Flow, format: ObserveFormat): string {
  if (format === "json" || format === "jsonpb") return JSON.stringify({ flow: f });
  if (format === "table") return table([f], COLUMNS).split("\n")[1]!;
  return compactLine(f);
}
