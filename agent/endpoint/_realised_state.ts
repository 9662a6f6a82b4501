/**
 * What the datapath holds for each local endpoint (its realised map-state, flags, revision and
 * interface) and the endpoints not written yet (the dirty list), with the writes that bring them
 * there: rules 2 and 3 of regenerator.ts. A state is recorded only after the sink wrote it; a
 * write that throws makes its endpoint dirty and asks for a retry, and `retryDirty()` repeats
 * full writes until desired and realised agree. It decides no policy (the engine computes, the
 * Regenerator decides what changed) and is separate from the Regenerator so that this one
 * write/record/retry discipline has one owner, whatever the change that led to a write.
 */

import type { MapState, MapStateEntry, NamedPort } from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
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

export interface Realized {
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

const message = (err: unknown) => err instanceof Error ? err.message : String(err);

export class RealisedState {
  #sink: DatapathSink;
  #log: Logger;
  #compute: (id: number) => MapState;
  #onDirty: (() => void) | undefined;
  #eps = new Map<number, Realized>();
  #dirty = new Set<number>();
  /** The policy revision the agent wants in force (what a successful write records). */
  revision = 0;

  constructor(
    o: {
      sink: DatapathSink;
      log: Logger;
      /** The endpoint's full map-state (a retry recomputes it). */
      compute: (id: number) => MapState;
      onDirty: (() => void) | undefined;
    },
  ) {
    this.#sink = o.sink;
    this.#log = o.log;
    this.#compute = o.compute;
    this.#onDirty = o.onDirty;
  }

  get(id: number): Realized | undefined {
    return this.#eps.get(id);
  }

  set(r: Realized): void {
    this.#eps.set(r.ep.id, r);
  }

  /** Forgets an endpoint (removed): its record and its place on the dirty list. */
  delete(id: number): void {
    this.#eps.delete(id);
    this.#dirty.delete(id);
  }

  /** Takes a removed endpoint out of the datapath; a failure is logged (nothing to retry). */
  async removeFromDatapath(ep: RegenEndpoint): Promise<void> {
    try {
      await this.#sink.removeEndpoint(ep);
    } catch (err) {
      this.#log.error("datapath could not remove endpoint", { endpoint: ep.id, error: err });
    }
  }

  values(): IterableIterator<Realized> {
    return this.#eps.values();
  }

  isDirty(id: number): boolean {
    return this.#dirty.has(id);
  }

  get dirtyCount(): number {
    return this.#dirty.size;
  }

  /** Endpoints whose desired policy is not in the datapath, with their last error. */
  unrealised(): Unrealised[] {
    return [...this.#dirty].flatMap((id) => {
      const r = this.#eps.get(id);
      return r ? [{ endpoint: id, error: r.error ?? "not written yet" }] : [];
    });
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
        this.fail(r, err);
        continue;
      }
      await this.applyFull(r, ms, true);
      if (!this.#dirty.has(id)) {
        this.#log.info("endpoint regenerated after earlier failures", {
          endpoint: id,
          revision: r.revision,
        });
      }
    }
    return this.#dirty.size > 0;
  }

  async applyFull(r: Realized, ms: MapState, endpointChanged: boolean): Promise<void> {
    const flags: EndpointFlags = { defaultDeny: ms.defaultDeny, enforcement: ms.enforcement };
    if (r.attached !== (r.ep.ifname ?? "")) return await this.#attach(r, ms, flags);
    if (endpointChanged || JSON.stringify(flags) !== JSON.stringify(r.flags)) {
      try {
        await this.#sink.updateEndpoint(r.ep, flags);
        r.flags = flags;
      } catch (err) {
        return this.fail(r, err);
      }
    }
    await this.apply(r, diffEntries(r.entries, ms.entries), true);
  }

  /** A new endpoint, or one on a new interface: its whole policy, then the endpoint. */
  async #attach(r: Realized, ms: MapState, flags: EndpointFlags): Promise<void> {
    const change = { adds: ms.entries, deletes: [], revision: this.revision, full: true };
    try {
      await this.#sink.attach(r.ep, flags, change);
    } catch (err) {
      return this.fail(r, err);
    }
    r.entries = new Map();
    applyDiff(r.entries, change);
    r.flags = flags;
    r.attached = r.ep.ifname ?? "";
    this.#realised(r);
  }

  async apply(r: Realized, diff: MapStateDiff, full: boolean): Promise<void> {
    try {
      if (!isEmpty(diff) || full) {
        await this.#sink.applyPolicy(r.ep.id, { ...diff, revision: this.revision, full });
      }
    } catch (err) {
      return this.fail(r, err);
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

  fail(r: Realized, err: unknown): void {
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
}
