/**
 * The one interface between the agent's policy side and the datapath: endpoints with their
 * default-deny flags, per-endpoint map-state diffs, and ipcache updates. The kernel datapath
 * implements it in the next step; here are a sink that does nothing and one that records every
 * call and keeps the resulting state in memory (tests assert on both). A sink that throws leaves
 * nothing recorded and the endpoint not ready (the kernel sink drops its traffic); the agent
 * retries with a full diff until a write succeeds.
 */

import type { IpcacheEntry, MapStateEntry } from "@cilia/policy-wasm";
import { applyDiff, type MapStateDiff } from "./mapstate_diff.ts";

export interface EndpointFlags {
  defaultDeny: { ingress: boolean; egress: boolean };
  /** False when enforcement is off (mode never): everything is allowed. */
  enforcement: boolean;
}

export interface DatapathEndpoint {
  id: number;
  identity: number;
  name: string;
  namespace: string;
  ips: string[];
  /** The host-side interface the datapath attaches to (lxc…). */
  ifname?: string;
  netns?: string;
  /** The MAC address of the endpoint's own interface. */
  mac?: string;
}

export interface PolicyChange extends MapStateDiff {
  /** The policy revision this change brings the endpoint to. */
  revision: number;
  /** True when it comes from a full computation (rules or the endpoint changed). */
  full: boolean;
}

export interface DatapathSink {
  upsertEndpoint(ep: DatapathEndpoint, flags: EndpointFlags): void | Promise<void>;
  removeEndpoint(ep: DatapathEndpoint): void | Promise<void>;
  applyPolicy(endpointId: number, change: PolicyChange): void | Promise<void>;
  updateIpcache(upserts: IpcacheEntry[], deletes: IpcacheEntry[]): void | Promise<void>;
}

export class NullSink implements DatapathSink {
  upsertEndpoint(): void {}
  removeEndpoint(): void {}
  applyPolicy(): void {}
  updateIpcache(): void {}
}

export type SinkCall =
  | { op: "upsertEndpoint"; ep: DatapathEndpoint; flags: EndpointFlags }
  | { op: "removeEndpoint"; ep: DatapathEndpoint }
  | { op: "applyPolicy"; endpoint: number; change: PolicyChange }
  | { op: "updateIpcache"; upserts: IpcacheEntry[]; deletes: IpcacheEntry[] };

/** Records calls and applies them to in-memory maps, as a datapath would. */
export class RecordingSink implements DatapathSink {
  readonly calls: SinkCall[] = [];
  readonly endpoints = new Map<number, { ep: DatapathEndpoint; flags: EndpointFlags }>();
  readonly policy = new Map<number, Map<string, MapStateEntry>>();
  readonly ipcache = new Map<string, number>();
  /** Set to make the next calls throw (tests of failure handling)… */
  failWith: Error | undefined;
  /** …only these operations, when set (e.g. `new Set(["applyPolicy"])`). */
  failOps: Set<SinkCall["op"]> | undefined;

  upsertEndpoint(ep: DatapathEndpoint, flags: EndpointFlags): void {
    this.#check("upsertEndpoint");
    this.calls.push({ op: "upsertEndpoint", ep, flags });
    this.endpoints.set(ep.id, { ep, flags });
  }

  removeEndpoint(ep: DatapathEndpoint): void {
    this.#check("removeEndpoint");
    this.calls.push({ op: "removeEndpoint", ep });
    this.endpoints.delete(ep.id);
    this.policy.delete(ep.id);
  }

  applyPolicy(endpoint: number, change: PolicyChange): void {
    this.#check("applyPolicy");
    this.calls.push({ op: "applyPolicy", endpoint, change });
    let map = this.policy.get(endpoint);
    if (map === undefined) this.policy.set(endpoint, map = new Map());
    applyDiff(map, change);
  }

  updateIpcache(upserts: IpcacheEntry[], deletes: IpcacheEntry[]): void {
    this.#check("updateIpcache");
    this.calls.push({ op: "updateIpcache", upserts, deletes });
    for (const d of deletes) {
      if (this.ipcache.get(d.prefix) === d.identity) this.ipcache.delete(d.prefix);
    }
    for (const u of upserts) this.ipcache.set(u.prefix, u.identity);
  }

  #check(op: SinkCall["op"]): void {
    if (this.failWith !== undefined && (this.failOps?.has(op) ?? true)) throw this.failWith;
  }
}
