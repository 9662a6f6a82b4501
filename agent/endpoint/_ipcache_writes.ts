/**
 * The ipcache as the Regenerator changes it (endpoints' IPs, node-local identities' prefixes, the
 * node's own addresses): each change goes to the engine and to the datapath, and a change the
 * datapath refused is queued and replayed in order by `retry()` (rule 3 of regenerator.ts), later
 * changes waiting behind it so that none overtakes an earlier one. It decides no prefix owner
 * (_local_identities.ts does) and writes no map-state; separate because this queue is the one
 * ipcache state the agent keeps, apart from the endpoints' realised map-states.
 */

import type { IpcacheEntry, PolicyEngine } from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { DatapathSink } from "./datapath_sink.ts";
import type { RegenEndpoint } from "./_realised_state.ts";

export class IpcacheWrites {
  #engine: PolicyEngine;
  #sink: DatapathSink;
  #log: Logger;
  #onDirty: (() => void) | undefined;
  /** Ipcache changes the datapath refused, replayed by retry() (rule 3). */
  #ipcachePending: { upserts: IpcacheEntry[]; deletes: IpcacheEntry[] }[] = [];

  constructor(
    o: {
      engine: PolicyEngine;
      sink: DatapathSink;
      log: Logger;
      onDirty: (() => void) | undefined;
    },
  ) {
    this.#engine = o.engine;
    this.#sink = o.sink;
    this.#log = o.log;
    this.#onDirty = o.onDirty;
  }

  /** Ipcache changes waiting for a retry (the datapath refused them). */
  get pending(): number {
    return this.#ipcachePending.length;
  }

  /**
   * Updates the engine's and the datapath's ipcache; a datapath failure is queued for
   * retry() (in order, after earlier failures) and returned as a message.
   */
  async update(upserts: IpcacheEntry[], deletes: IpcacheEntry[]): Promise<string | undefined> {
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
        return `cannot update the ipcache: ${err instanceof Error ? err.message : String(err)}`;
      }
    }
    this.#ipcachePending.push({ upserts, deletes });
    this.#onDirty?.();
    return "earlier ipcache updates are not written yet";
  }

  /** Writes the queued changes in order, up to the first the datapath refuses again. */
  async retry(): Promise<void> {
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
  }
}

export function ipcacheOf(ep: RegenEndpoint): IpcacheEntry[] {
  return ep.ips.map((ip) => ({ prefix: ip, identity: ep.identity }));
}
