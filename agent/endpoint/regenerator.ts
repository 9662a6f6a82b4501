/**
 * Endpoint regeneration: owns what the policy engine knows (identities, local endpoints, their
 * IPs, the rules) and each endpoint's realized map-state, and turns every change into per-endpoint
 * diffs for the datapath sink. New or removed identities update map-states incrementally (only
 * the entries keyed by those identities); new rules or a changed endpoint recompute in full and
 * diff. Rules that fail to load or to resolve leave the previous ones in force. Callers serialize
 * calls (the agent runs them one at a time); this module does no kvstore I/O.
 */

import type {
  EngineOptions,
  IdentitySpec,
  IpcacheEntry,
  MapState,
  MapStateEntry,
  NamedPort,
  PolicyEngine,
  PolicySpec,
} from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { Counter } from "../metrics.ts";
import type { DatapathEndpoint, DatapathSink, EndpointFlags } from "./datapath_sink.ts";
import {
  applyDiff,
  diffEntries,
  isEmpty,
  type MapStateDiff,
  sortEntries,
} from "./mapstate_diff.ts";

export interface RegenEndpoint extends DatapathEndpoint {
  identityLabels: string[];
  namedPorts: NamedPort[];
}

interface Realized {
  ep: RegenEndpoint;
  flags?: EndpointFlags;
  entries: Map<string, MapStateEntry>;
  revision: number;
  error?: string;
}

export interface ResolvedPolicy {
  endpoint: number;
  identity: number;
  revision: number;
  enforcement: boolean;
  defaultDeny: { ingress: boolean; egress: boolean };
  entries: MapStateEntry[];
  error?: string;
}

const sameIdentity = (a: IdentitySpec | undefined, b: IdentitySpec) =>
  a !== undefined && a.cidr === b.cidr && JSON.stringify(a.labels) === JSON.stringify(b.labels);

export class Regenerator {
  #engine: PolicyEngine;
  #sink: DatapathSink;
  #log: Logger;
  #options: EngineOptions;
  #count: Counter | undefined;
  #eps = new Map<number, Realized>();
  #local = new Map<number, IdentitySpec>();
  #dirty = new Set<number>();
  revision = 0;

  constructor(
    o: {
      engine: PolicyEngine;
      sink: DatapathSink;
      log: Logger;
      options: EngineOptions;
      counter?: Counter;
    },
  ) {
    this.#engine = o.engine;
    this.#sink = o.sink;
    this.#log = o.log;
    this.#options = o.options;
    this.#count = o.counter;
  }

  get engine(): PolicyEngine {
    return this.#engine;
  }

  endpoints(): RegenEndpoint[] {
    return [...this.#eps.values()].map((r) => r.ep);
  }

  /** Identities that became known: adds the entries keyed by them to every endpoint. */
  async addIdentities(list: readonly IdentitySpec[]): Promise<void> {
    const fresh = list.filter((i) => !sameIdentity(this.#engine.identity(i.id), i));
    if (fresh.length === 0) return;
    this.#engine.upsertIdentities(fresh);
    const ids = new Set(fresh.map((i) => i.id));
    for (const r of this.#eps.values()) {
      if (this.#dirty.has(r.ep.id)) continue;
      const diff: MapStateDiff = { adds: [], deletes: [] };
      try {
        for (const id of ids) {
          const ms = this.#engine.mapStateForIdentity(r.ep.id, id);
          this.#count?.inc({ kind: "incremental" });
          const d = diffEntries(
            r.entries,
            ms.entries.filter((e) => e.identity === id),
            (e) => e.identity === id,
          );
          diff.adds.push(...d.adds);
          diff.deletes.push(...d.deletes);
        }
      } catch (err) {
        this.#fail(r, err);
        continue;
      }
      await this.#apply(r, diff, false);
    }
    await this.#retryDirty();
  }

  /** Identities that went away: deletes the entries keyed by them. */
  async removeIdentities(ids: readonly number[]): Promise<void> {
    const known = ids.filter((id) => this.#engine.identity(id) !== undefined);
    if (known.length === 0) return;
    this.#engine.removeIdentities(known);
    const gone = new Set(known);
    for (const r of this.#eps.values()) {
      const deletes = [...r.entries.values()].filter((e) => gone.has(e.identity));
      await this.#apply(r, { adds: [], deletes }, false);
    }
    await this.#retryDirty();
  }

  /** Adds or changes a local endpoint and recomputes its map-state; throws on engine errors. */
  async upsertEndpoint(ep: RegenEndpoint): Promise<void> {
    if (this.#engine.identity(ep.identity) === undefined) {
      this.#engine.upsertIdentities([{ id: ep.identity, labels: ep.identityLabels }]);
    }
    const prev = this.#eps.get(ep.id);
    const others = [...this.#eps.values()].filter((r) => r.ep.id !== ep.id).map((r) => r.ep);
    this.#engine.setEndpoints([...others, ep].map(engineEndpoint));
    let ms: MapState;
    try {
      ms = this.#compute(ep.id);
    } catch (err) {
      this.#engine.setEndpoints([...others, ...(prev ? [prev.ep] : [])].map(engineEndpoint));
      throw err;
    }
    const r: Realized = prev ?? { ep, entries: new Map(), revision: 0 };
    const oldIps = prev ? ipcacheOf(prev.ep) : [];
    r.ep = ep;
    this.#eps.set(ep.id, r);
    await this.#ipcache(ipcacheOf(ep), oldIps);
    await this.#applyFull(r, ms, true);
  }

  async removeEndpoint(id: number): Promise<void> {
    const r = this.#eps.get(id);
    if (r === undefined) return;
    this.#eps.delete(id);
    this.#dirty.delete(id);
    this.#engine.setEndpoints([...this.#eps.values()].map((x) => engineEndpoint(x.ep)));
    await this.#ipcache([], ipcacheOf(r.ep));
    try {
      await this.#sink.removeEndpoint(r.ep);
    } catch (err) {
      this.#log.error("datapath could not remove endpoint", { endpoint: id, error: err });
    }
  }

  /**
   * Loads new rules with the local CIDR identities they need and recomputes every endpoint.
   * Throws (and changes nothing) when the engine refuses the rules or cannot resolve them.
   */
  async loadPolicy(spec: PolicySpec, local: readonly IdentitySpec[], revision: number) {
    const e = this.#engine;
    const prevSpec = e.spec;
    const prevLocal = this.#local;
    const next = new Map(local.map((i) => [i.id, i]));
    const added = local.filter((i) => !sameIdentity(prevLocal.get(i.id), i));
    const removed = [...prevLocal.values()].filter((i) => !next.has(i.id));
    const computed: [Realized, MapState][] = [];
    e.upsertIdentities(added);
    try {
      e.setPolicy(spec, this.#options);
      e.removeIdentities(removed.map((i) => i.id));
      for (const r of this.#eps.values()) computed.push([r, this.#compute(r.ep.id)]);
    } catch (err) {
      e.upsertIdentities(removed);
      e.removeIdentities(added.filter((i) => !prevLocal.has(i.id)).map((i) => i.id));
      e.upsertIdentities(added.map((i) => prevLocal.get(i.id)!).filter((i) => i !== undefined));
      e.setPolicy(prevSpec, this.#options);
      throw err;
    }
    this.#local = next;
    this.revision = revision;
    await this.#ipcache(
      added.map((i) => ({ prefix: i.cidr!, identity: i.id })),
      removed.map((i) => ({ prefix: i.cidr!, identity: i.id })),
    );
    for (const [r, ms] of computed) await this.#applyFull(r, ms, false);
    this.#dirty.clear();
  }

  /** Ipcache entries that are not endpoints' or CIDR identities' (the node's own addresses). */
  updateIpcache(upserts: IpcacheEntry[], deletes: IpcacheEntry[] = []): Promise<void> {
    return this.#ipcache(upserts, deletes);
  }

  resolved(id: number): ResolvedPolicy | undefined {
    const r = this.#eps.get(id);
    if (r === undefined) return undefined;
    const out: ResolvedPolicy = {
      endpoint: id,
      identity: r.ep.identity,
      revision: r.revision,
      enforcement: r.flags?.enforcement ?? true,
      defaultDeny: r.flags?.defaultDeny ?? { ingress: false, egress: false },
      entries: sortEntries(r.entries.values()),
    };
    if (r.error !== undefined) out.error = r.error;
    return out;
  }

  #compute(id: number): MapState {
    this.#count?.inc({ kind: "full" });
    return this.#engine.computeMapState(id);
  }

  async #applyFull(r: Realized, ms: MapState, endpointChanged: boolean): Promise<void> {
    const flags: EndpointFlags = { defaultDeny: ms.defaultDeny, enforcement: ms.enforcement };
    if (endpointChanged || JSON.stringify(flags) !== JSON.stringify(r.flags)) {
      try {
        await this.#sink.upsertEndpoint(r.ep, flags);
        r.flags = flags;
      } catch (err) {
        return this.#fail(r, err);
      }
    }
    await this.#apply(r, diffEntries(r.entries, ms.entries), true);
  }

  async #apply(r: Realized, diff: MapStateDiff, full: boolean): Promise<void> {
    try {
      if (!isEmpty(diff) || full) {
        await this.#sink.applyPolicy(r.ep.id, { ...diff, revision: this.revision, full });
      }
    } catch (err) {
      return this.#fail(r, err);
    }
    applyDiff(r.entries, diff);
    r.revision = this.revision;
    delete r.error;
    this.#dirty.delete(r.ep.id);
  }

  #fail(r: Realized, err: unknown): void {
    r.error = err instanceof Error ? err.message : String(err);
    this.#dirty.add(r.ep.id);
    this.#log.error("cannot regenerate endpoint: will retry", { endpoint: r.ep.id, error: err });
  }

  /** Endpoints whose last change failed get a full recomputation. */
  async #retryDirty(): Promise<void> {
    for (const id of [...this.#dirty]) {
      const r = this.#eps.get(id);
      if (r === undefined) continue;
      try {
        await this.#applyFull(r, this.#compute(id), true);
      } catch (err) {
        this.#fail(r, err);
      }
    }
  }

  async #ipcache(upserts: IpcacheEntry[], deletes: IpcacheEntry[]): Promise<void> {
    const keep = new Set(upserts.map((u) => `${u.prefix}/${u.identity}`));
    deletes = deletes.filter((d) => !keep.has(`${d.prefix}/${d.identity}`));
    if (upserts.length === 0 && deletes.length === 0) return;
    this.#engine.updateIpcache(upserts, deletes);
    try {
      await this.#sink.updateIpcache(upserts, deletes);
    } catch (err) {
      this.#log.error("datapath could not update the ipcache", { error: err });
    }
  }
}

function engineEndpoint(ep: RegenEndpoint) {
  return { id: ep.id, identity: ep.identity, namedPorts: ep.namedPorts };
}

function ipcacheOf(ep: RegenEndpoint): IpcacheEntry[] {
  return ep.ips.map((ip) => ({ prefix: ip, identity: ep.identity }));
}
