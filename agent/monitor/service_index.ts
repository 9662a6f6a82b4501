// The monitor's view of the agent's services: datapath service id → the `destination_service` /
// `source_service` of flows (flow.ts FlowService), one shared object per id that flows never
// mutate. Rebuilt from the service records whenever they change (the agent hands them over from
// ServiceManager's onChange, before the datapath sees a new service), so a lookup per event is
// one Map get; `generation` changes with every rebuild, so callers drop what they built on it.
// An id it does not know (a service deleted since the event) is `{ id, frontend: "unknown" }`.
// Events of the underlay's NodePort/LoadBalancer path (bpf/lib/np_event.h) carry the frontend's
// port as well: their service is the NodePort or LoadBalancer frontend the client used
// (`externalOf`), not the ClusterIP one, though both share the id. It reads no kernel state and
// decides nothing.

import type { ServiceSpec } from "../service/spec.ts";
import type { FlowService } from "./flow.ts";

/** The fields of a service record the monitor shows. */
export type ServiceRecord =
  & Pick<ServiceSpec, "id" | "name" | "frontend">
  & Partial<Pick<ServiceSpec, "type" | "nodePort" | "loadBalancerIPs">>;

/** External frontends kept before the cache starts again (they are few: one per port used). */
const EXTERNAL_LIMIT = 4096;

/** "10.96.0.10:80", "[fd00::10]:80". */
const hostPort = (ip: string, port: number) => `${ip.includes(":") ? `[${ip}]` : ip}:${port}`;

/** "10.96.0.10:80/TCP", "[fd00::10]:80/TCP" (as agent/service/spec.ts frontendText). */
function frontendOf(s: ServiceRecord): string {
  const { ip, port, protocol } = s.frontend;
  return `${hostPort(ip, port)}/${protocol}`;
}

/** A record's flow side: `name` "ns/name" split into Hubble's namespace and name. */
export function flowServiceOf(s: ServiceRecord): FlowService {
  const slash = s.name?.indexOf("/") ?? -1;
  return {
    ...(s.name !== undefined && slash > 0
      ? { name: s.name.slice(slash + 1), namespace: s.name.slice(0, slash) }
      : s.name !== undefined
      ? { name: s.name }
      : {}),
    frontend: frontendOf(s),
    id: s.id,
  };
}

export class ServiceIndex {
  readonly #byId = new Map<number, FlowService>();
  readonly #records = new Map<number, ServiceRecord>();
  readonly #unknown = new Map<number, FlowService>();
  readonly #external = new Map<string, FlowService>();
  readonly #nodeAddresses: readonly string[];
  /** Changes whenever what this index says may have changed. */
  generation = 0;

  /** nodeAddresses: the node's NodePort addresses (one per family), for NodePort frontends. */
  constructor(
    services: readonly ServiceRecord[] = [],
    opts: { nodeAddresses?: readonly string[] } = {},
  ) {
    this.#nodeAddresses = opts.nodeAddresses ?? [];
    this.update(services);
  }

  /** Replaces what the index holds with these records. */
  update(services: readonly ServiceRecord[]): void {
    this.#byId.clear();
    this.#records.clear();
    this.#external.clear();
    for (const s of services) {
      this.#byId.set(s.id, flowServiceOf(s));
      this.#records.set(s.id, s);
    }
    this.generation++;
  }

  /**
   * The flow side of service `id` reached from outside on the underlay at frontend `port` (an
   * np_event.h event's cookie): its NodePort (`port` is the record's nodePort) or LoadBalancer
   * frontend, with `type` set. The address is `address` when the caller knows it (the packet
   * still goes to the frontend), else the node's address of the service's family (NodePort) or
   * its one LoadBalancer address of that family; the unspecified address ("0.0.0.0", "::") when
   * neither says which. A port that is neither, or an unknown id: as of().
   */
  externalOf(id: number, port: number, address?: string): FlowService | undefined {
    const r = this.#records.get(id);
    if (!r || port === 0 || r.type === undefined || r.type === "ClusterIP") return this.of(id);
    const type = port === r.nodePort ? "NodePort" : "LoadBalancer";
    if (type === "LoadBalancer" && (r.type !== "LoadBalancer" || port !== r.frontend.port)) {
      return this.of(id);
    }
    const key = `${id}/${port}/${address ?? ""}`;
    const hit = this.#external.get(key);
    if (hit) return hit;
    const v6 = r.frontend.ip.includes(":");
    const family = (ip: string) => ip.includes(":") === v6;
    const candidates = type === "NodePort"
      ? this.#nodeAddresses.filter(family)
      : (r.loadBalancerIPs ?? []).filter(family);
    const ip = address ?? (candidates.length === 1 ? candidates[0]! : v6 ? "::" : "0.0.0.0");
    const s: FlowService = {
      ...flowServiceOf(r),
      frontend: `${hostPort(ip, port)}/${r.frontend.protocol}`,
      type,
    };
    if (this.#external.size >= EXTERNAL_LIMIT) this.#external.clear();
    this.#external.set(key, s);
    return s;
  }

  /** The flow side of service `id`; undefined for 0 (no service). */
  of(id: number): FlowService | undefined {
    if (id === 0) return undefined;
    const known = this.#byId.get(id);
    if (known) return known;
    let s = this.#unknown.get(id);
    if (!s) {
      s = { frontend: "unknown", id };
      this.#unknown.set(id, s); // bounded: ids are 16 bits
    }
    return s;
  }
}
