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
  /** The MAC address of the host side (ifname). */
  hostMac?: string;
}

/**
 * A map-state entry as the datapath takes it. `proxyPort` is where a redirect goes (the L7
 * proxy's port); a redirect without one is dropped by the kernel (fail closed).
 */
export type SinkEntry = MapStateEntry & { proxyPort?: number };

export interface PolicyChange extends MapStateDiff {
  adds: SinkEntry[];
  /** The policy revision this change brings the endpoint to. */
  revision: number;
  /** True when it comes from a full computation (rules or the endpoint changed). */
  full: boolean;
}

/**
 * Where the agent's policy goes. Order (fail closed): `attach()` writes a new endpoint's whole
 * policy and only then its entry and programs; `applyPolicy()` changes an attached endpoint's
 * policy; `updateEndpoint()` its flags or addresses. Whatever throws is not in force.
 */
export interface DatapathSink {
  /** A new endpoint (or one on a new interface): its whole policy (`change.adds`), then it. */
  attach(ep: DatapathEndpoint, flags: EndpointFlags, change: PolicyChange): void | Promise<void>;
  /** The flags or addresses of an attached endpoint changed. */
  updateEndpoint(ep: DatapathEndpoint, flags: EndpointFlags): void | Promise<void>;
  removeEndpoint(ep: DatapathEndpoint): void | Promise<void>;
  /** A diff of an attached endpoint's policy. */
  applyPolicy(endpointId: number, change: PolicyChange): void | Promise<void>;
  updateIpcache(upserts: IpcacheEntry[], deletes: IpcacheEntry[]): void | Promise<void>;
  /** What is wrong with an attached endpoint in the datapath (CNI CHECK), or undefined. */
  check?(ep: DatapathEndpoint): Promise<string | undefined>;
}

export class NullSink implements DatapathSink {
  attach(): void {}
  updateEndpoint(): void {}
  removeEndpoint(): void {}
  applyPolicy(): void {}
  updateIpcache(): void {}
}

export type SinkCall =
  | { op: "attach"; ep: DatapathEndpoint; flags: EndpointFlags; change: PolicyChange }
  | { op: "updateEndpoint"; ep: DatapathEndpoint; flags: EndpointFlags }
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

  attach(ep: DatapathEndpoint, flags: EndpointFlags, change: PolicyChange): void {
    this.#check("attach");
    this.calls.push({ op: "attach", ep, flags, change });
    this.endpoints.set(ep.id, { ep, flags });
    const map = new Map<string, MapStateEntry>();
    applyDiff(map, { adds: change.adds, deletes: [] });
    this.policy.set(ep.id, map);
  }

  updateEndpoint(ep: DatapathEndpoint, flags: EndpointFlags): void {
    this.#check("updateEndpoint");
    if (!this.endpoints.has(ep.id)) throw new Error(`Endpoint ${ep.id} is not attached`);
    this.calls.push({ op: "updateEndpoint", ep, flags });
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
    const map = this.policy.get(endpoint);
    if (map === undefined) throw new Error(`Endpoint ${endpoint} is not attached`);
    this.calls.push({ op: "applyPolicy", endpoint, change });
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
