// The monitor's view of the node's endpoints: by id, by address (text, and IPv4 as a number for
// the record path), and the `source` / `destination` sides of flows, one shared object per
// (identity, endpoint) that flows never mutate. Rebuilt from the agent's endpoint list at most
// once a second; an endpoint id it does not know yet is asked for alone (`learn`); `generation`
// changes whenever a rebuild or a new policy may change what it says, so callers drop what they
// built on it. It reads no kernel state.

import type { PolicyEngine } from "@cilia/policy-wasm";
import type { EndpointRecord } from "../endpoint/spec.ts";
import type { FlowEndpoint } from "./flow.ts";

export class EndpointIndex {
  readonly #endpoints: () => EndpointRecord[];
  readonly #engine: PolicyEngine;
  readonly #byId = new Map<number, EndpointRecord>();
  readonly #byIp = new Map<string, EndpointRecord>();
  /** IPv4 (as a big-endian u32) → endpoint, for the record path. */
  readonly #byIp4 = new Map<number, EndpointRecord>();
  /** `${identity}/${endpoint id}` → the side of a flow. */
  readonly #sides = new Map<string, FlowEndpoint>();
  #sidesSpec: unknown;
  #indexedAt = -Infinity;
  /** Changes whenever what this index says may have changed. */
  generation = 0;

  /** One endpoint by id, from the agent (no list of them all): see `learn()`. */
  readonly #endpoint: ((id: number) => EndpointRecord | undefined) | undefined;

  constructor(
    endpoints: () => EndpointRecord[],
    engine: PolicyEngine,
    opts: { endpoint?: (id: number) => EndpointRecord | undefined } = {},
  ) {
    this.#endpoints = endpoints;
    this.#engine = engine;
    this.#endpoint = opts.endpoint;
  }

  /** Rebuilds from the endpoint list if the last rebuild is older than 1 s (100 ms if forced). */
  refresh(force = false): void {
    const now = performance.now();
    if (now - this.#indexedAt < (force ? 100 : 1000)) return;
    this.#indexedAt = now;
    this.generation++;
    this.#byId.clear();
    this.#byIp.clear();
    this.#byIp4.clear();
    this.#sides.clear();
    for (const e of this.#endpoints()) this.#add(e);
  }

  /**
   * Endpoint `id`, which the index may not hold yet (made since the last rebuild): asked of the
   * agent by id and added, so a new endpoint's first event costs one lookup, not a rebuild over
   * every endpoint of the node (each CNI ADD's first events made one, up to 10 a second). Without
   * a lookup by id, a rebuild at most every 100 ms, as before.
   */
  learn(id: number): EndpointRecord | undefined {
    if (this.#endpoint === undefined) {
      this.refresh(true);
      return this.#byId.get(id);
    }
    const e = this.#endpoint(id);
    if (e !== undefined) {
      this.#add(e);
      this.generation++; // its addresses now name it
    }
    return e;
  }

  #add(e: EndpointRecord): void {
    this.#byId.set(e.id, e);
    if (e.ipv4) {
      this.#byIp.set(e.ipv4, e);
      const b = e.ipv4.split(".").map(Number);
      this.#byIp4.set(((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0, e);
    }
    if (e.ipv6) this.#byIp.set(e.ipv6, e);
  }

  byId(id: number): EndpointRecord | undefined {
    return this.#byId.get(id);
  }

  byIp(ip: string): EndpointRecord | undefined {
    return this.#byIp.get(ip);
  }

  /** By an IPv4 address as a big-endian u32. */
  byIp4(ip: number): EndpointRecord | undefined {
    return this.#byIp4.get(ip);
  }

  /** A flow's side; one object per (identity, endpoint), shared by flows (never mutated). */
  side(identity: number, ep: EndpointRecord | undefined): FlowEndpoint {
    const spec = this.#engine.spec;
    if (spec !== this.#sidesSpec) {
      this.#sidesSpec = spec;
      this.#sides.clear();
      this.generation++;
    }
    const key = `${identity}/${ep?.id ?? ""}`;
    let side = this.#sides.get(key);
    if (side) return side;
    const labels = this.#engine.identity(identity)?.labels ?? ep?.identityLabels ?? [];
    side = ep
      ? { ID: ep.id, identity, namespace: ep.namespace, labels, pod_name: ep.name }
      : { identity, labels };
    this.#sides.set(key, side);
    return side;
  }
}
