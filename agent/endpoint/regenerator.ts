/**
 * Endpoint regeneration: owns what the policy engine knows (identities, local endpoints, their
 * IPs, the rules) and each endpoint's realized map-state, and turns every change into per-endpoint
 * diffs for the datapath sink. New or removed identities update map-states incrementally (only
 * the entries keyed by those identities); new rules or a changed endpoint recompute in full and
 * diff. Callers serialize calls (the agent runs them one at a time); no kvstore I/O here.
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
  /** When the endpoint became not ready, and how many writes failed since. */
  since?: string;
  failures: number;
  /** The interface it is attached on ("" without one); undefined until `attach()` succeeded. */
  attached?: string;
}

export interface ResolvedPolicy {
  endpoint: number;
  identity: number;
  /** The policy revision the kernel holds for this endpoint. */
  revision: number;
  /** The policy revision the agent wants in force. */
  desiredRevision: number;
  enforcement: boolean;
  defaultDeny: { ingress: boolean; egress: boolean };
  entries: MapStateEntry[];
  error?: string;
  notReadySince?: string;
  failures?: number;
}

/** An endpoint whose desired policy is not (yet) in the datapath. */
export interface Unrealised {
  endpoint: number;
  error: string;
}

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

const sameIdentity = (a: IdentitySpec | undefined, b: IdentitySpec) =>
  a !== undefined && a.cidr === b.cidr && JSON.stringify(a.labels) === JSON.stringify(b.labels);

/** preparePolicy() yields to the event loop after computing map-states for this long. */
const YIELD_AFTER_MS = 20;

const message = (err: unknown) => err instanceof Error ? err.message : String(err);

export class Regenerator {
  #engine: PolicyEngine;
  #sink: DatapathSink;
  #log: Logger;
  #options: EngineOptions;
  #count: Counter | undefined;
  #onDirty: (() => void) | undefined;
  #eps = new Map<number, Realized>();
  #local = new Map<number, IdentitySpec>();
  #dirty = new Set<number>();
  /** Restored endpoints the engine knows before their upsertEndpoint() (preloadEndpoints). */
  #preloaded = new Map<number, RegenEndpoint>();
  /** The engine's endpoint list as loaded: id → engineSignature(). */
  #loaded = new Map<number, string>();
  /** Ipcache changes the datapath refused, replayed by retryDirty() (rule 3). */
  #ipcachePending: { upserts: IpcacheEntry[]; deletes: IpcacheEntry[] }[] = [];
  revision = 0;

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
    this.#sink = o.sink;
    this.#log = o.log;
    this.#options = o.options;
    this.#count = o.counter;
    this.#onDirty = o.onDirty;
  }

  get engine(): PolicyEngine {
    return this.#engine;
  }

  endpoints(): RegenEndpoint[] {
    return [...this.#eps.values()].map((r) => r.ep);
  }

  /** Endpoints whose desired policy is not in the datapath, with their last error. */
  unrealised(): Unrealised[] {
    return [...this.#dirty].flatMap((id) => {
      const r = this.#eps.get(id);
      return r ? [{ endpoint: id, error: r.error ?? "not written yet" }] : [];
    });
  }

  /** Identities that became known: adds the entries keyed by them to every endpoint. */
  async addIdentities(list: readonly IdentitySpec[]): Promise<void> {
    const fresh = list.filter((i) => !sameIdentity(this.#engine.identity(i.id), i));
    if (fresh.length === 0) return;
    const replaced = fresh.some((i) => this.#engine.identity(i.id) !== undefined);
    this.#engine.upsertIdentities(fresh);
    const ids = new Set(fresh.map((i) => i.id));
    for (const r of this.#affectedBy(ids, replaced)) {
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
    await this.retryDirty();
  }

  /**
   * The endpoints whose map-state new identities `ids` change: for identities new to the engine,
   * only those the engine finds from the selectors that select them (an endpoint holds no entries
   * for an identity it did not know); a replaced identity may take entries away: all of them.
   */
  #affectedBy(ids: ReadonlySet<number>, replaced: boolean): Iterable<Realized> {
    if (replaced) return this.#eps.values();
    const out = new Map<number, Realized>();
    for (const id of ids) {
      for (const ep of this.#engine.endpointsAffected(id)) {
        const r = this.#eps.get(ep);
        if (r !== undefined) out.set(ep, r);
      }
    }
    return out.values();
  }

  /** Identities that went away: deletes the entries keyed by them. */
  async removeIdentities(ids: readonly number[]): Promise<void> {
    const known = ids.filter((id) => this.#engine.identity(id) !== undefined);
    if (known.length === 0) return;
    this.#engine.removeIdentities(known);
    const gone = new Set(known);
    for (const r of this.#eps.values()) {
      if (this.#dirty.has(r.ep.id)) continue; // its next full write leaves them out
      const deletes = [...r.entries.values()].filter((e) => gone.has(e.identity));
      await this.#apply(r, { adds: [], deletes }, false);
    }
    await this.retryDirty();
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
    this.#preloaded.delete(ep.id);
    this.#syncEngine([ep], []);
    let ms: MapState;
    try {
      ms = this.#compute(ep.id);
    } catch (err) {
      this.#syncEngine(prevEp ? [prevEp] : [], prevEp ? [] : [ep.id]);
      throw err;
    }
    const r: Realized = prev ?? { ep, entries: new Map(), revision: 0, failures: 0 };
    const oldIps = prevEp ? ipcacheOf(prevEp) : [];
    r.ep = ep;
    this.#eps.set(ep.id, r);
    const ipcacheError = await this.#ipcache(ipcacheOf(ep), oldIps);
    await this.#applyFull(r, ms, true);
    if (opts.retry || (!this.#dirty.has(ep.id) && ipcacheError === undefined)) return;
    const error = r.error ?? ipcacheError ?? "unknown error";
    if (prevEp === undefined) {
      await this.removeEndpoint(ep.id);
    } else {
      // Back to the spec the store still holds; the kernel keeps dropping until it is written.
      r.ep = prevEp;
      this.#syncEngine([prevEp], []);
      await this.#ipcache(ipcacheOf(prevEp), ipcacheOf(ep));
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
    const unknown = new Map(
      list.filter((ep) => this.#engine.identity(ep.identity) === undefined)
        .map((ep) => [ep.identity, { id: ep.identity, labels: ep.identityLabels }]),
    );
    this.#engine.upsertIdentities([...unknown.values()]);
    const fresh = list.filter((ep) => !this.#eps.has(ep.id));
    for (const ep of fresh) this.#preloaded.set(ep.id, ep);
    try {
      this.#syncEngine(fresh, []);
    } catch (err) {
      this.#preloaded.clear(); // each upsertEndpoint() updates the engine itself then
      throw err;
    }
  }

  endPreload(): void {
    const gone = [...this.#preloaded.keys()].filter((id) => !this.#eps.has(id));
    this.#preloaded.clear();
    this.#syncEngine([], gone);
  }

  /**
   * Adds, replaces and removes endpoints in the engine's endpoint list, in place (the cost of
   * the change, not of the endpoints already there); what it holds already is not sent again.
   */
  #syncEngine(upserts: readonly RegenEndpoint[], removes: readonly number[]): void {
    const changed = upserts.filter((ep) => this.#loaded.get(ep.id) !== engineSignature(ep));
    const gone = removes.filter((id) => this.#loaded.has(id));
    if (changed.length === 0 && gone.length === 0) return;
    this.#engine.updateEndpoints(changed.map(engineEndpoint), gone);
    for (const id of gone) this.#loaded.delete(id);
    for (const ep of changed) this.#loaded.set(ep.id, engineSignature(ep));
  }

  async removeEndpoint(id: number): Promise<void> {
    const r = this.#eps.get(id);
    if (r === undefined) return;
    this.#eps.delete(id);
    this.#dirty.delete(id);
    this.#syncEngine([], [id]);
    await this.#ipcache([], ipcacheOf(r.ep));
    try {
      await this.#sink.removeEndpoint(r.ep);
    } catch (err) {
      this.#log.error("datapath could not remove endpoint", { endpoint: id, error: err });
    }
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
    const e = this.#engine;
    const prevSpec = e.spec;
    const prevLocal = this.#local;
    const next = new Map(local.map((i) => [i.id, i]));
    const added = local.filter((i) => !sameIdentity(prevLocal.get(i.id), i));
    const removed = [...prevLocal.values()].filter((i) => !next.has(i.id));
    const computed: [Realized, MapState][] = [];
    const undo = () => {
      e.upsertIdentities(removed);
      e.removeIdentities(added.filter((i) => !prevLocal.has(i.id)).map((i) => i.id));
      e.upsertIdentities(added.map((i) => prevLocal.get(i.id)!).filter((i) => i !== undefined));
      e.setPolicy(prevSpec, this.#options);
    };
    e.upsertIdentities(added);
    try {
      e.setPolicy(spec, this.#options);
      e.removeIdentities(removed.map((i) => i.id));
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
      undo();
      throw err;
    }
    let settled = false;
    const prepared: PreparedPolicy = {
      abort: () => {
        if (settled) return;
        settled = true;
        undo();
      },
      commit: async () => {
        if (settled) throw new Error("A prepared policy is committed or aborted only once");
        settled = true;
        this.#local = next;
        this.revision = revision;
        // An id reused for another prefix (toCIDR or toServices backends changed) must also let
        // go of its old prefix, or the old address keeps the id's allow entries.
        const moved = added.flatMap((i) => {
          const before = prevLocal.get(i.id);
          return before?.cidr !== undefined && before.cidr !== i.cidr ? [before] : [];
        });
        const ipc = localIpcache(prevLocal, next, [...added, ...removed, ...moved]);
        await this.#ipcache(ipc.upserts, ipc.deletes);
        for (const [r, ms] of computed) {
          if (this.#eps.get(r.ep.id) === r) await this.#applyFull(r, ms, this.#dirty.has(r.ep.id));
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
    const prev = new Map(this.#local);
    for (const i of removes) this.#local.delete(i.id);
    for (const i of upserts) this.#local.set(i.id, i);
    const stale = upserts.flatMap((i) => {
      const before = this.#engine.identity(i.id);
      return before?.cidr !== undefined && before.cidr !== i.cidr ? [before] : [];
    });
    await this.addIdentities(upserts);
    const ipc = localIpcache(prev, this.#local, [...upserts, ...removes, ...stale]);
    const error = await this.#ipcache(ipc.upserts, ipc.deletes);
    await this.removeIdentities(removes.map((i) => i.id));
    return error ?? (this.#dirty.size > 0 ? "some endpoints are not written yet" : undefined);
  }

  /** Ipcache entries that are not endpoints' or CIDR identities' (the node's own addresses). */
  async updateIpcache(upserts: IpcacheEntry[], deletes: IpcacheEntry[] = []): Promise<void> {
    await this.#ipcache(upserts, deletes);
  }

  /** Ipcache changes waiting for a retry (the datapath refused them). */
  get ipcachePending(): number {
    return this.#ipcachePending.length;
  }

  resolved(id: number): ResolvedPolicy | undefined {
    const r = this.#eps.get(id);
    if (r === undefined) return undefined;
    const out: ResolvedPolicy = {
      endpoint: id,
      identity: r.ep.identity,
      revision: r.revision,
      desiredRevision: this.revision,
      enforcement: r.flags?.enforcement ?? true,
      defaultDeny: r.flags?.defaultDeny ?? { ingress: false, egress: false },
      entries: sortEntries(r.entries.values()),
    };
    if (r.error !== undefined) out.error = r.error;
    if (r.since !== undefined) out.notReadySince = r.since;
    if (r.failures > 0) out.failures = r.failures;
    return out;
  }

  /**
   * Endpoints whose last write failed get a full recomputation and a full write (rule 3).
   * Resolves to true when some are still not written.
   */
  async retryDirty(): Promise<boolean> {
    const pending = this.#ipcachePending;
    this.#ipcachePending = [];
    for (const [i, p] of pending.entries()) {
      try {
        await this.#sink.updateIpcache(p.upserts, p.deletes);
      } catch (err) {
        this.#ipcachePending.push(...pending.slice(i));
        this.#log.error("datapath could not update the ipcache: will retry", { error: err });
        break;
      }
    }
    for (const id of [...this.#dirty]) {
      const r = this.#eps.get(id);
      if (r === undefined) {
        this.#dirty.delete(id);
        continue;
      }
      let ms: MapState;
      try {
        ms = this.#compute(id);
      } catch (err) {
        this.#fail(r, err);
        continue;
      }
      await this.#applyFull(r, ms, true);
      if (!this.#dirty.has(id)) {
        this.#log.info("endpoint regenerated after earlier failures", {
          endpoint: id,
          revision: r.revision,
        });
      }
    }
    return this.#dirty.size > 0 || this.#ipcachePending.length > 0;
  }

  #compute(id: number): MapState {
    this.#count?.inc({ kind: "full" });
    return this.#engine.computeMapState(id);
  }

  async #applyFull(r: Realized, ms: MapState, endpointChanged: boolean): Promise<void> {
    const flags: EndpointFlags = { defaultDeny: ms.defaultDeny, enforcement: ms.enforcement };
    if (r.attached !== (r.ep.ifname ?? "")) return await this.#attach(r, ms, flags);
    if (endpointChanged || JSON.stringify(flags) !== JSON.stringify(r.flags)) {
      try {
        await this.#sink.updateEndpoint(r.ep, flags);
        r.flags = flags;
      } catch (err) {
        return this.#fail(r, err);
      }
    }
    await this.#apply(r, diffEntries(r.entries, ms.entries), true);
  }

  /** A new endpoint, or one on a new interface: its whole policy, then the endpoint. */
  async #attach(r: Realized, ms: MapState, flags: EndpointFlags): Promise<void> {
    const change = { adds: ms.entries, deletes: [], revision: this.revision, full: true };
    try {
      await this.#sink.attach(r.ep, flags, change);
    } catch (err) {
      return this.#fail(r, err);
    }
    r.entries = new Map();
    applyDiff(r.entries, change);
    r.flags = flags;
    r.attached = r.ep.ifname ?? "";
    this.#realised(r);
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
    this.#realised(r);
  }

  #realised(r: Realized): void {
    r.revision = this.revision;
    delete r.error;
    delete r.since;
    r.failures = 0;
    this.#dirty.delete(r.ep.id);
  }

  #fail(r: Realized, err: unknown): void {
    r.error = message(err);
    r.since ??= new Date().toISOString();
    r.failures++;
    this.#dirty.add(r.ep.id);
    this.#log.error("cannot regenerate endpoint: its traffic is dropped until a retry succeeds", {
      endpoint: r.ep.id,
      failures: r.failures,
      error: err,
    });
    this.#onDirty?.();
  }

  /**
   * Updates the engine's and the datapath's ipcache; a datapath failure is queued for
   * retryDirty() (in order, after earlier failures) and returned as a message.
   */
  async #ipcache(upserts: IpcacheEntry[], deletes: IpcacheEntry[]): Promise<string | undefined> {
    const keep = new Set(upserts.map((u) => `${u.prefix}/${u.identity}`));
    deletes = deletes.filter((d) => !keep.has(`${d.prefix}/${d.identity}`));
    if (upserts.length === 0 && deletes.length === 0) return undefined;
    this.#engine.updateIpcache(upserts, deletes);
    if (this.#ipcachePending.length === 0) {
      try {
        await this.#sink.updateIpcache(upserts, deletes);
        return undefined;
      } catch (err) {
        this.#log.error("datapath could not update the ipcache: will retry", { error: err });
        this.#ipcachePending.push({ upserts, deletes });
        this.#onDirty?.();
        return `cannot update the ipcache: ${message(err)}`;
      }
    }
    this.#ipcachePending.push({ upserts, deletes });
    this.#onDirty?.();
    return "earlier ipcache updates are not written yet";
  }
}

/**
 * The ipcache changes for the prefixes of `changed` local identities. Several local identities
 * can name one prefix (a learned /32 that a toCIDR rule names too: its FQDN identity and its CIDR
 * identity, both with the prefix's CIDR labels); the highest id holds the prefix (FQDN over
 * CIDR), and when it goes the prefix is handed back to the next one, not deleted.
 */
function localIpcache(
  prev: ReadonlyMap<number, IdentitySpec>,
  next: ReadonlyMap<number, IdentitySpec>,
  changed: readonly IdentitySpec[],
): { upserts: IpcacheEntry[]; deletes: IpcacheEntry[] } {
  const prefixes = new Set(changed.flatMap((i) => i.cidr === undefined ? [] : [i.cidr]));
  const owners = (m: ReadonlyMap<number, IdentitySpec>) => {
    const out = new Map<string, number>();
    for (const i of m.values()) {
      if (i.cidr === undefined || !prefixes.has(i.cidr)) continue;
      if ((out.get(i.cidr) ?? -1) < i.id) out.set(i.cidr, i.id);
    }
    return out;
  };
  const before = owners(prev), after = owners(next);
  const upserts: IpcacheEntry[] = [], deletes: IpcacheEntry[] = [];
  for (const prefix of prefixes) {
    const a = before.get(prefix), b = after.get(prefix);
    if (b !== undefined) upserts.push({ prefix, identity: b });
    else if (a !== undefined) deletes.push({ prefix, identity: a });
  }
  return { upserts, deletes };
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

function ipcacheOf(ep: RegenEndpoint): IpcacheEntry[] {
  return ep.ips.map((ip) => ({ prefix: ip, identity: ep.identity }));
}
