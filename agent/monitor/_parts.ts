// What the monitor's ingest paths share (the kernel's events, _kernel_flows.ts; the proxies' L7
// and DNS records, _l7_flows.ts): the ring, the followers, the plain counters the metrics read,
// the endpoint and service indexes and the policy attribution, all owned by the Monitor
// (monitor.ts). Here only the two steps every path takes: counting and publishing a flow.

import type { PolicyEngine } from "@cilia/policy-wasm";
import type { Attribution } from "./attribution.ts";
import type { EndpointIndex } from "./endpoint_index.ts";
import type { Flow } from "./flow.ts";
import type { Followers } from "./followers.ts";
import type { RecordRing } from "./record_ring.ts";
import type { ServiceIndex } from "./service_index.ts";

/** Counters the metrics read (plain numbers: the hot path must not format labels). */
export interface MonitorCounters {
  /** `${type}/${verdict}` → flows. */
  processed: Map<string, number>;
  /** `${direction}/${match}/${action}` → policy-verdict events. */
  verdicts: Map<string, number>;
}

/** The Monitor's parts an ingest path works on. */
export interface MonitorParts {
  engine: PolicyEngine;
  nodeName: string;
  ring: RecordRing;
  followers: Followers;
  counters: MonitorCounters;
  endpoints: EndpointIndex;
  /** Service ids of events → the flows' destination_service / source_service. */
  services: ServiceIndex;
  attribution: Attribution;
}

export const bump = (m: Map<string, number>, k: string, by = 1) => m.set(k, (m.get(k) ?? 0) + by);

/** A flow to the ring and the followers that want it, its line sent at once (in order). */
export function publish(p: MonitorParts, flow: Flow): void {
  p.ring.push(flow);
  p.followers.flow(flow);
  p.followers.flush();
}
