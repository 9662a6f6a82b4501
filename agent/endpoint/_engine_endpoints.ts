/**
 * The policy engine's list of local endpoints, kept in place for the Regenerator: what the engine
 * holds of each endpoint (its identity and named ports, as a signature) and the restored
 * endpoints it was given ahead of their upsertEndpoint() (a restore loads them in one update,
 * not one per endpoint). Only changes are sent, so an update costs the change, not the endpoints
 * already there. It writes nothing to the datapath; separate from the Regenerator because this
 * bookkeeping is about the engine's copy, not about what the kernel holds.
 */

import type { PolicyEngine } from "@cilia/policy-wasm";
import type { RegenEndpoint } from "./_realised_state.ts";

export class EngineEndpoints {
  #engine: PolicyEngine;
  /** Restored endpoints the engine knows before their upsertEndpoint() (preloadEndpoints). */
  #preloaded = new Map<number, RegenEndpoint>();
  /** The engine's endpoint list as loaded: id → engineSignature(). */
  #loaded = new Map<number, string>();

  constructor(engine: PolicyEngine) {
    this.#engine = engine;
  }

  /**
   * Endpoints about to be upserted one by one (a restore): the engine gets them all now, in one
   * update of its endpoint list, except those `known` already holds.
   */
  preload(list: readonly RegenEndpoint[], known: (id: number) => boolean): void {
    const unknown = new Map(
      list.filter((ep) => this.#engine.identity(ep.identity) === undefined)
        .map((ep) => [ep.identity, { id: ep.identity, labels: ep.identityLabels }]),
    );
    this.#engine.upsertIdentities([...unknown.values()]);
    const fresh = list.filter((ep) => !known(ep.id));
    for (const ep of fresh) this.#preloaded.set(ep.id, ep);
    try {
      this.sync(fresh, []);
    } catch (err) {
      this.#preloaded.clear(); // each upsertEndpoint() updates the engine itself then
      throw err;
    }
  }

  /** The endpoint came (its upsertEndpoint()): no longer waited for. */
  arrived(id: number): void {
    this.#preloaded.delete(id);
  }

  /** The restore is over: preloaded endpoints that never came (not `known`) leave the engine. */
  endPreload(known: (id: number) => boolean): void {
    const gone = [...this.#preloaded.keys()].filter((id) => !known(id));
    this.#preloaded.clear();
    this.sync([], gone);
  }

  /**
   * Adds, replaces and removes endpoints in the engine's endpoint list, in place (the cost of
   * the change, not of the endpoints already there); what it holds already is not sent again.
   */
  sync(upserts: readonly RegenEndpoint[], removes: readonly number[]): void {
    const changed = upserts.filter((ep) => this.#loaded.get(ep.id) !== engineSignature(ep));
    const gone = removes.filter((id) => this.#loaded.has(id));
    if (changed.length === 0 && gone.length === 0) return;
    this.#engine.updateEndpoints(changed.map(engineEndpoint), gone);
    for (const id of gone) this.#loaded.delete(id);
    for (const ep of changed) this.#loaded.set(ep.id, engineSignature(ep));
  }
}

const signatures = new WeakMap<RegenEndpoint, string>();

/** What the engine knows of an endpoint (engineEndpoint), as a string to compare. */
function engineSignature(ep: RegenEndpoint): string {
  let sig = signatures.get(ep);
  if (sig === undefined) {
    sig = `${ep.identity}|${JSON.stringify(ep.namedPorts)}`;
    signatures.set(ep, sig);
  }
  return sig;
}

function engineEndpoint(ep: RegenEndpoint) {
  return { id: ep.id, identity: ep.identity, namedPorts: ep.namedPorts };
}
