// The monitor's Prometheus metrics, read from its plain counters on every scrape (the event path
// never formats labels): flows by type and verdict, lost events by where they were lost, policy
// verdicts by direction, match and action, and the flow buffer's fill. Label values come from
// bounded sets only.

import type { Metrics } from "../metrics.ts";
import type { Monitor } from "./monitor.ts";

/** POLICY_MATCH_* → Cilium's `match` label values. */
const MATCH = ["none", "l3-only", "l3-l4", "all", "l4-only"];

export function registerMonitorMetrics(m: Metrics, monitor: Monitor): void {
  const processed = m.counter(
    "cilia_flows_processed_total",
    "flows the monitor recorded, by event type and verdict",
  );
  const lost = m.counter(
    "cilia_flows_lost_total",
    "datapath events lost, by source (perf: the kernel's event ring was full; slow-reader: a live follower fell behind)",
  );
  const verdicts = m.counter(
    "cilia_policy_verdict_total",
    "policy decisions on new flows, by direction, how the entry matched and action",
  );
  const fill = m.labeledGauge("cilia_flow_buffer", "the flow buffer: flows held and capacity");
  m.onScrape(() => {
    for (const [k, v] of monitor.counters.processed) {
      const [type, verdict] = k.split("/");
      processed.set({ type: type!, verdict: verdict! }, v);
    }
    for (const [k, v] of monitor.counters.verdicts) {
      const [direction, match, action] = k.split("/");
      verdicts.set({
        direction: direction!.toUpperCase(),
        match: MATCH[Number(match)] ?? "none",
        action: action!,
      }, v);
    }
    const s = monitor.stats();
    lost.set({ source: "perf" }, s.lost.perf);
    lost.set({ source: "slow-reader" }, s.lost.slowReaders);
    fill.set({ kind: "held" }, s.buffer.size);
    fill.set({ kind: "capacity" }, s.buffer.capacity);
  });
}

/** cilia_bpf_map_ops_total{map,op,outcome} from the map writer's counts. */
export function registerMapOpMetrics(m: Metrics, ops: ReadonlyMap<string, number>): void {
  const c = m.counter(
    "cilia_bpf_map_ops_total",
    "BPF map entries written by the agent, by map, operation and outcome",
  );
  m.onScrape(() => {
    for (const [k, v] of ops) {
      const [map, op, outcome] = k.split("/");
      c.set({ map: map!, op: op!, outcome: outcome! }, v);
    }
  });
}
