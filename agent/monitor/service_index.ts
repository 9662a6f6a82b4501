// The monitor's view of the agent's services: datapath service id → the `destination_service` /
// `source_service` of flows (flow.ts FlowService), one shared object per id that flows never
// mutate. Rebuilt from the service records whenever they change (the agent hands them over from
// ServiceManager's onChange, before the datapath sees a new service), so a lookup per event is
// one Map get; `generation` changes with every rebuild, so callers drop what they built on it.
// An id it does not know (a service deleted since the event) is `{ id, frontend: "unknown" }`.
// It reads no kernel state and decides nothing.

import type { ServiceSpec } from "../service/spec.ts";
import type { FlowService } from "./flow.ts";

/** The fields of a service record the monitor shows. */
export type ServiceRecord = Pick<ServiceSpec, "id" | "name" | "frontend">;

/** "10.96.0.10:80/TCP", "[fd00::10]:80/TCP" (as agent/service/spec.ts frontendText). */
function frontendOf(s: ServiceRecord): string {
  const { ip, port, protocol } = s.frontend;
  return `${ip.includes(":") ? `[${ip}]` : ip}:${port}/${protocol}`;
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
  readonly #unknown = new Map<number, FlowService>();
  /** Changes whenever what this index says may have changed. */
  generation = 0;

  constructor(services: readonly ServiceRecord[] = []) {
    this.update(services);
  }

  /** Replaces what the index holds with these records. */
  update(services: readonly ServiceRecord[]): void {
    this.#byId.clear();
    for (const s of services) this.#byId.set(s.id, flowServiceOf(s));
    this.generation++;
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
