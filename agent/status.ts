/**
 * The agent's status as `/v1/status` reports it: node, kvstore reachability, identity usage (with
 * a warning above 90 % of the range), endpoints, policy revision, IPAM pools, uptime, and the
 * list of problems that makes it unhealthy. Reads the agent; changes nothing.
 */

import type { Agent } from "./agent.ts";
import type { KvStore } from "./kvstore/kvstore.ts";
import type { MonitorStats } from "./monitor/monitor.ts";
import type { ResolvedPolicy } from "./endpoint/regenerator.ts";

/**
 * How policy acts on one direction of an endpoint: `enforcing` (default-deny, or deny rules),
 * `auditing` (an audit-mode policy reports flows it would drop, which pass), both, or `none`.
 */
export type PolicyMode = "enforcing" | "auditing" | "enforcing+auditing" | "none";

/** The policy mode of each direction of an endpoint, from the map-state the agent resolved. */
export function policyModes(r: ResolvedPolicy): { ingress: PolicyMode; egress: PolicyMode } {
  const mode = (dir: "ingress" | "egress"): PolicyMode => {
    const mine = r.entries.filter((e) => e.direction === dir);
    const enforcing = r.enforcement &&
      (r.defaultDeny[dir] || mine.some((e) => e.verdict === "deny"));
    const auditing = mine.some((e) => e.verdict === "audit");
    return enforcing && auditing
      ? "enforcing+auditing"
      : enforcing
      ? "enforcing"
      : auditing
      ? "auditing"
      : "none";
  };
  return { ingress: mode("ingress"), egress: mode("egress") };
}

export interface KvstoreHealth {
  backend: "denokv" | "etcd";
  name: string;
  reachable: boolean;
  error?: string;
}

export interface DatapathStatus {
  mode: "kernel" | "none";
  bpffsRoot?: string;
  /** The pinned programs' directory (one per compiled object). */
  programs?: string;
  /** False when this agent loaded the programs, true when it found them pinned. */
  reused?: boolean;
  /** Fill of the sized kernel maps (counted at most every few seconds). */
  maps?: { name: string; entries: number; max: number; pressure: number }[];
}

/** The sized maps' fill, with a warning for each map at 90 % or more; none if unreadable. */
function mapStatus(agent: Agent, warnings: string[]): DatapathStatus["maps"] {
  let fill;
  try {
    fill = agent.datapath?.datapath.mapFill();
  } catch {
    return undefined;
  }
  return fill?.map((f) => {
    if (f.pressure >= 0.9) {
      warnings.push(
        `map "${f.map}" is ${Math.round(f.pressure * 100)} % full (${f.entries}/${f.max})`,
      );
    }
    return { name: f.map, entries: f.entries, max: f.max, pressure: f.pressure };
  });
}

export interface AgentStatus {
  /** The agent works (its kvstore answers). */
  healthy: boolean;
  /** Every endpoint holds the policy the agent wants in force (see `warnings` otherwise). */
  realised: boolean;
  node: {
    name: string;
    podCidr?: string;
    podCidrV6?: string;
    addresses: string[];
    ip?: string;
    routingMode: "tunnel" | "native";
  };
  /** Other nodes with a live lease, and their endpoints in this node's ipcache. */
  cluster: {
    nodes: number;
    remoteEndpoints: number;
    remote: { name: string; ip?: string; health: string; endpoints: number }[];
  };
  kvstore: KvstoreHealth;
  identities: {
    global: number;
    local: number;
    range: string;
    capacity: number;
    usedPercent: number;
    warning?: string;
  };
  endpoints: {
    count: number;
    notReady: number;
    /** Endpoints whose policy is not written, with the last error (the kernel drops them). */
    problems: { id: number; name: string; error: string; since?: string; failures?: number }[];
    /** Endpoints per direction whose traffic is audited (an audit-mode policy reports drops). */
    auditing: { ingress: number; egress: number };
  };
  policy: {
    /** The revision the agent wants in force. */
    revision: number;
    /** The oldest revision some endpoint still holds (equal to `revision` when all are done). */
    realisedRevision: number;
    count: number;
    /** Ipcache changes the datapath refused, waiting for a retry. */
    ipcachePending: number;
  };
  ipam: { family: 4 | 6; cidr: string; gateway: string; allocated: number; capacity: string }[];
  datapath: DatapathStatus;
  /** Flows: whether kernel events are read, the flow buffer's fill, and lost events. */
  monitor?: MonitorStats;
  /** The agent process's memory in bytes: resident set, V8 heap, V8 external (array
   * buffers), the policy engine's WASM memory. */
  memory: { rss: number; heapUsed: number; external: number; wasm: number };
  uptimeSeconds: number;
  warnings: string[];
}

/** Reads the store's cursor within `timeoutMs`. */
export async function probeKvstore(store: KvStore, timeoutMs = 2000): Promise<KvstoreHealth> {
  const backend = store.name.startsWith("etcd") ? "etcd" : "denokv";
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      store.cursor(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    return { backend, name: store.name, reachable: true };
  } catch (err) {
    return {
      backend,
      name: store.name,
      reachable: false,
      error: err instanceof Error ? err.message : String(err),
    };
  } finally {
    clearTimeout(timer);
  }
}

export function agentStatus(agent: Agent, kvstore: KvstoreHealth): AgentStatus {
  const c = agent.config;
  const { min, max } = c.identityRange;
  const capacity = max - min + 1;
  const global = agent.identities.size;
  const usedPercent = Math.round((global / capacity) * 1000) / 10;
  const warnings: string[] = [];
  if (!kvstore.reachable) warnings.push(`kvstore ${kvstore.name} is unreachable: ${kvstore.error}`);
  const identities: AgentStatus["identities"] = {
    global,
    local: agent.localIdentities.size,
    range: `${min}-${max}`,
    capacity,
    usedPercent,
  };
  if (global > capacity * 0.9) {
    identities.warning = `${global} of ${capacity} identities (${usedPercent}%) are in use: ` +
      `the range ${min}-${max} is running out`;
    warnings.push(identities.warning);
  }
  const problems: AgentStatus["endpoints"]["problems"] = [];
  let realisedRevision = agent.policies.revision;
  const auditing = { ingress: 0, egress: 0 };
  for (const e of agent.endpoints.list()) {
    const r = agent.regen.resolved(e.id);
    if (r === undefined) continue;
    const modes = policyModes(r);
    if (modes.ingress.endsWith("auditing")) auditing.ingress++;
    if (modes.egress.endsWith("auditing")) auditing.egress++;
    if (r.error === undefined) {
      realisedRevision = Math.min(realisedRevision, r.revision);
      continue;
    }
    realisedRevision = Math.min(realisedRevision, r.revision);
    problems.push({
      id: e.id,
      name: `${e.namespace}/${e.name}`,
      error: r.error,
      ...(r.notReadySince ? { since: r.notReadySince } : {}),
      ...(r.failures ? { failures: r.failures } : {}),
    });
  }
  const notReady = problems.length;
  const mon = agent.monitor?.stats();
  if (mon?.error) warnings.push(`flows are not recorded: ${mon.error}`);
  if (mon && mon.lost.total > 0) {
    warnings.push(
      `${mon.lost.total} datapath event(s) lost (perf buffer ${mon.lost.perf}, slow readers ` +
        `${mon.lost.slowReaders})`,
    );
  }
  for (const p of problems) {
    warnings.push(
      `endpoint ${p.id} (${p.name}) is not ready: its policy is not written, the kernel drops ` +
        `its traffic until a retry succeeds: ${p.error}`,
    );
  }
  const ipcachePending = agent.regen.ipcachePending;
  if (ipcachePending > 0) {
    warnings.push(`${ipcachePending} ipcache update(s) are not written yet: retrying`);
  }
  const maps = mapStatus(agent, warnings);
  const { rss, heapUsed, external } = Deno.memoryUsage();
  return {
    healthy: kvstore.reachable,
    realised: notReady === 0 && ipcachePending === 0,
    node: {
      name: c.nodeName,
      ...(c.podCidr ? { podCidr: c.podCidr } : {}),
      ...(c.podCidrV6 ? { podCidrV6: c.podCidrV6 } : {}),
      addresses: agent.nodes.self.addresses,
      ...(agent.nodes.self.ip ? { ip: agent.nodes.self.ip } : {}),
      routingMode: c.routingMode,
    },
    cluster: clusterStatus(agent),
    kvstore,
    identities,
    endpoints: { count: agent.endpoints.size, notReady, problems, auditing },
    policy: {
      revision: agent.policies.revision,
      realisedRevision,
      count: agent.policies.size,
      ipcachePending,
    },
    ipam: agent.ipam.pools(),
    datapath: agent.datapath
      ? {
        mode: "kernel",
        bpffsRoot: agent.datapath.datapath.pins.root,
        programs: agent.datapath.datapath.pins.progDir,
        reused: !agent.datapath.datapath.loaded,
        ...(maps ? { maps } : {}),
      }
      : { mode: "none" },
    memory: { rss, heapUsed, external, wasm: agent.engine.memoryBytes },
    ...(agent.monitor ? { monitor: agent.monitor.stats() } : {}),
    uptimeSeconds: Math.round((Date.now() - agent.startedAt.getTime()) / 1000),
    warnings,
  };
}

function clusterStatus(agent: Agent): AgentStatus["cluster"] {
  const remote = agent.discovery.list().map((n) => ({
    name: n.name,
    ...(n.ip ? { ip: n.ip } : {}),
    health: n.lost ? "lost" : "alive",
    endpoints: n.endpoints,
  }));
  return {
    nodes: remote.length,
    remoteEndpoints: remote.reduce((sum, n) => sum + n.endpoints, 0),
    remote,
  };
}
