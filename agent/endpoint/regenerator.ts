/**
 * Endpoint regeneration: owns what the policy engine knows (identities, local endpoints, their
 * IPs, the rules) and turns every change into per-endpoint diffs for the datapath sink. New or
 * removed identities update map-states incrementally (only the entries keyed by those
 * identities); new rules or a changed endpoint recompute in full and diff. Callers serialize calls
 * (the agent runs them one at a time); no kvstore I/O here. This module decides what changed and
 * what to recompute; its parts own the state: each endpoint's realised map-state, its writes and
 * their retries (_realised_state.ts), the ipcache and its retry queue (_ipcache_writes.ts), the
 * engine's endpoint list (_engine_endpoints.ts), the node-local identities and the prefixes they
 * hold (_local_identities.ts); the incremental path for identities is _identity_changes.ts.
 *
 * Failure rules (fail closed, never fail open):
 * 1. Rules that fail to load or to resolve change nothing: the engine keeps the previous ones.
 * 2. A realized map-state is recorded only after the sink wrote it; a sink that throws has put
 *    the endpoint in a state that drops its traffic (see KernelSink), never a wider one.
 * 3. An endpoint whose write failed is "not ready" and stays on the dirty list until a full
 *    write succeeds; `onDirty` asks for a retry (the agent's RetryLoop backs off exponentially).
 * 4. A new endpoint that cannot be written is not kept: `upsertEndpoint` undoes it and throws,
 *    so CNI ADD fails and leaves nothing behind.
 */

import type {
  EngineOptions,
  IdentitySpec,
  IpcacheEntry,
  MapState,
  PolicyEngine,
  PolicySpec,
} from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { Counter } from "../metrics.ts";
import type { DatapathSink } from "./datapath_sink.ts";
import { EngineEndpoints } from "./_engine_endpoints.ts";
import { addIdentities, type IdentityChanges, removeIdentities } from "./_identity_changes.ts";
import { ipcacheOf, IpcacheWrites } from "./_ipcache_writes.ts";
import { LocalIdentities } from "./_local_identities.ts";
import {
  RealisedState,
  type Realized,
  type RegenEndpoint,
  type ResolvedPolicy,
  type Unrealised,
} from "./_realised_state.ts";

export type { RegenEndpoint, ResolvedPolicy, Unrealised } from "./_realised_state.ts";

/** New rules, resolved for every endpoint but not written yet (see `preparePolicy`). */
export interface PreparedPolicy {
  /** Writes the new map-states; endpoints whose write failed are listed (and retried). */
  commit(): Promise<Unrealised[]>;
  /** Puts the previous rules back into the engine; nothing was written. */
  abort(): void;
}

/** A new or changed endpoint could not be written to the datapath; nothing was kept. */
export class EndpointNotRealisedError extends Error {
  override name = "EndpointNotRealisedError";
}

/** preparePolicy() yields to the event loop after computing map-states for this long. */
const YIELD_AFTER_MS = 20;

export class Regenerator {
  #engine: PolicyEngine;
  #options: EngineOptions;
  #count: Counter | undefined;
  #onDirty: (() => void) | undefined;
  #eps: RealisedState;
  #loaded: EngineEndpoints;
  #local: LocalIdentities;
  #changes: IdentityChanges;
  #ipcache: IpcacheWrites;

  constructor(
    o: {
      engine: PolicyEngine;
      sink: DatapathSink;
      log: Logger;
      options: EngineOptions;
      counter?: Counter;
      /** Called when an endpoint became dirty (its write failed): schedule `retryDirty()`. */
      onDirty?: () => void;
    },
  ) {
    this.#engine = o.engine;
    this.#options = o.options;
    this.#count = o.counter;
    this.#onDirty = o.onDirty;
    const { sink, log, onDirty } = o;
    this.#eps = new RealisedState({ sink, log, onDirty, compute: (id) => this.#compute(id) });
    this.#loaded = new EngineEndpoints(o.engine);
    this.#local = new LocalIdentities(o.engine);
    this.#ipcache = new IpcacheWrites({ engine: o.engine, sink, log, onDirty });
    this.#changes = { engine: o.engine, eps: this.#eps, count: o.counter };
  }

  get engine(): PolicyEngine {
    return this.#engine;
  }

  /** The policy revision the agent wants in force. */
  get revision(): number {
    return this.#eps.revision;
  }

  endpoints(): RegenEndpoint[] {
    return [...this.#eps.values()].map((r) => r.ep);
  }

  /** Endpoints whose desired policy is not in the datapath, with their last error. */
  unrealised(): Unrealised[] {
    return this.#eps.unrealised();
  }

  /** Identities that became known: adds the entries keyed by them to every endpoint. */
  async addIdentities(list: readonly IdentitySpec[]): Promise<void> {
    if (await addIdentities(this.#changes, list)) await this.retryDirty();
  }

  /** Identities that went away: deletes the entries keyed by them. */
  async removeIdentities(ids: readonly number[]): Promise<void> {
    if (await removeIdentities(this.#changes, ids)) await this.retryDirty();
  }

  /**
   * Adds or changes a local endpoint and writes its map-state. Throws on engine errors, and
   * (rule 4) when the datapath write fails: a new endpoint is then removed again, a changed one
   * goes back to its previous spec (retried until written). With `retry` (an endpoint restored
   * at start, whose interface already carries programs) a failed write keeps the endpoint, not
   * ready, and retries instead.
   */
  async upsertEndpoint(ep: RegenEndpoint, opts: { retry?: boolean } = {}): Promise<void> {
    if (this.#engine.identity(ep.identity) === undefined) {
      this.#engine.upsertIdentities([{ id: ep.identity, labels: ep.identityLabels }]);
    }
    const prev = this.#eps.get(ep.id);
    const prevEp = prev?.ep;
    this.#loaded.arrived(ep.id);
    this.#loaded.sync([ep], []);
    let ms: MapState;
    try {
      ms = this.#compute(ep.id);
    } catch (err) {
      this.#loaded.sync(prevEp ? [prevEp] : [], prevEp ? [] : [ep.id]);
      throw err;
    }
    const r: Realized = prev ?? { ep, entries: new Map(), revision: 0, failures: 0 };
    const oldIps = prevEp ? ipcacheOf(prevEp) : [];
    r.ep = ep;
    this.#eps.set(r);
    const ipcacheError = await this.#ipcache.update(ipcacheOf(ep), oldIps);
    await this.#eps.applyFull(r, ms, true);
    if (opts.retry || (!this.#eps.isDirty(ep.id) && ipcacheError === undefined)) return;
    const error = r.error ?? ipcacheError ?? "unknown error";
    if (prevEp === undefined) {
      await this.removeEndpoint(ep.id);
    } else {
      // Back to the spec the store still holds; the kernel keeps dropping until it is written.
      r.ep = prevEp;
      this.#loaded.sync([prevEp], []);
      await this.#ipcache.update(ipcacheOf(prevEp), ipcacheOf(ep));
      this.#onDirty?.();
    }
    throw new EndpointNotRealisedError(
      `Cannot write the policy of endpoint ${ep.id} (${ep.namespace}/${ep.name}) to the ` +
        `datapath: ${error}`,
    );
  }

  /**
   * Endpoints about to be upserted one by one (a restore): the engine gets them all now, in one
   * update of its endpoint list. Their policy is written only by their upsertEndpoint();
   * `endPreload()` drops the ones that never came.
   */
  preloadEndpoints(list: readonly RegenEndpoint[]): void {
    this.#loaded.preload(list, (id) => this.#eps.get(id) !== undefined);
  }

  endPreload(): void {
    this.#loaded.endPreload((id) => this.#eps.get(id) !== undefined);
  }

  async removeEndpoint(id: number): Promise<void> {
    const r = this.#eps.get(id);
    if (r === undefined) return;
    this.#eps.delete(id);
    this.#loaded.sync([], [id]);
    await this.#ipcache.update([], ipcacheOf(r.ep));
    await this.#eps.removeFromDatapath(r.ep);
  }

  /**
   * Loads new rules with the local CIDR identities they need and resolves every endpoint,
   * without writing anything (rule 1: throws and changes nothing when the engine refuses the
   * rules or cannot resolve them). The caller stores the rules, then commits or aborts.
   */
  async preparePolicy(
    spec: PolicySpec,
    local: readonly IdentitySpec[],
    revision: number,
  ): Promise<PreparedPolicy> {
    const staged = this.#local.stage(spec, local, this.#options);
    const computed: [Realized, MapState][] = [];
    try {
      // Big policies take tens of ms per endpoint: let the API answer in between (callers hold
      // the agent's serial queue, so nothing else changes the engine meanwhile).
      let slice = performance.now();
      for (const r of this.#eps.values()) {
        computed.push([r, this.#compute(r.ep.id)]);
        if (performance.now() - slice < YIELD_AFTER_MS) continue;
        await new Promise((resolve) => setTimeout(resolve, 0));
        slice = performance.now();
      }
    } catch (err) {
      staged.undo();
      throw err;
    }
    let settled = false;
    const prepared: PreparedPolicy = {
      abort: () => {
        if (settled) return;
        settled = true;
        staged.undo();
      },
      commit: async () => {
        if (settled) throw new Error("A prepared policy is committed or aborted only once");
        settled = true;
        const ipc = staged.adopt();
        this.#eps.revision = revision;
        await this.#ipcache.update(ipc.upserts, ipc.deletes);
        for (const [r, ms] of computed) {
          if (this.#eps.get(r.ep.id) === r) {
            await this.#eps.applyFull(r, ms, this.#eps.isDirty(r.ep.id));
          }
        }
        return this.unrealised();
      },
    };
    return prepared;
  }

  /** preparePolicy() and commit() in one step. */
  async loadPolicy(
    spec: PolicySpec,
    local: readonly IdentitySpec[],
    revision: number,
  ): Promise<Unrealised[]> {
    return await (await this.preparePolicy(spec, local, revision)).commit();
  }

  /**
   * Node-local identities that change between policy loads (the DNS proxy's FQDN identities):
   * policy entries for new or relabelled ones first, then their ipcache entries; removed ones
   * leave the ipcache before their entries go. Kept with the policy's local identities, so the
   * next `preparePolicy()` sees them. Resolves to an error message when some write failed (the
   * failed part is retried like any other).
   */
  async updateLocalIdentities(
    upserts: readonly IdentitySpec[],
    removes: readonly IdentitySpec[],
  ): Promise<string | undefined> {
    const ipcacheChange = this.#local.change(upserts, removes);
    await this.addIdentities(upserts);
    const ipc = ipcacheChange();
    const error = await this.#ipcache.update(ipc.upserts, ipc.deletes);
    await this.removeIdentities(removes.map((i) => i.id));
    return error ?? (this.#eps.dirtyCount > 0 ? "some endpoints are not written yet" : undefined);
  }

  /** Ipcache entries that are not endpoints' or CIDR identities' (the node's own addresses). */
  async updateIpcache(upserts: IpcacheEntry[], deletes: IpcacheEntry[] = []): Promise<void> {
    await this.#ipcache.update(upserts, deletes);
  }

  /** Ipcache changes waiting for a retry (the datapath refused them). */
  get ipcachePending(): number {
    return this.#ipcache.pending;
  }

  resolved(id: number): ResolvedPolicy | undefined {
    return this.#eps.resolved(id);
  }

  /**
   * Endpoints whose last write failed get a full recomputation and a full write (rule 3).
   * Resolves to true when some are still not written.
   */
  async retryDirty(): Promise<boolean> {
    await this.#ipcache.retry();
    const dirty = await this.#eps.retryDirty();
    return dirty || this.#ipcache.pending > 0;
  }

  #compute(id: number): MapState {
    this.#count?.inc({ kind: "full" });
    return this.#engine.computeMapState(id);
  }
}
