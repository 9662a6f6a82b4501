/**
 * The other nodes and their endpoints as node discovery's two watches last reported them: live
 * node records by key (and a node's name → its key), lost nodes in their grace period
 * (lost_nodes.ts), remote endpoint records by key and by node, and which nodes and endpoint
 * records changed since discovery.ts last drained them; and how the API lists the other nodes
 * (their endpoint counts, alive or lost). It decodes records (_records.ts) and keeps time for
 * lost nodes; it computes no entries or routes, writes nothing and schedules no sync.
 */

import type { KvEntry, WatchEvent } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import { LostNodes } from "./lost_nodes.ts";
import { endpointOf, nodeOf, type RemoteEndpoint } from "./_records.ts";
import type { RemoteNode } from "./discovery.ts";
import type { NodeRecord } from "./registry.ts";

export interface RemoteViewOptions {
  /** This node's name: never served as a remote node. */
  self: string;
  gracePeriodMs: number;
  log: Logger;
  /** A lost node's grace period ended (it is marked changed): recompute. */
  expired(): void;
}

export class RemoteView {
  #o: RemoteViewOptions;
  #nodes = new Map<string, RemoteNode>();
  /** A live node's name → its record's key. */
  #nodeKeys = new Map<string, string>();
  #endpoints = new Map<string, RemoteEndpoint>();
  /** A node's name → the keys of its endpoint records. */
  #endpointsByNode = new Map<string, Set<string>>();
  #lost: LostNodes<RemoteNode>;
  /** Nodes (by name) and endpoint records (by key) changed since the last sync. */
  readonly dirtyNodes = new Set<string>();
  readonly dirtyEndpoints = new Set<string>();

  constructor(opts: RemoteViewOptions) {
    this.#o = opts;
    this.#lost = new LostNodes(opts.gracePeriodMs, (n) => {
      opts.log.warn("node lost for the whole grace period: removing its entries", {
        node: n.name,
        graceSeconds: opts.gracePeriodMs / 1000,
      });
      this.dirtyNodes.add(n.name);
      opts.expired();
    });
  }

  /** Ends the lost nodes' timers. */
  close(): void {
    this.#lost.close();
  }

  /** Other nodes with a live record, and lost ones in their grace period, by name. */
  list(): RemoteNode[] {
    return [...this.#nodes.values(), ...this.#lostNodes()]
      .filter((n) => n.name !== this.#o.self)
      .map((n) => ({ ...n, endpoints: this.#endpointsOf(n.name) }))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Node records as the API shows them, with endpoints and health (NodeDiscovery.describe). */
  describe<T extends NodeRecord>(
    records: T[],
  ): ((T | RemoteNode) & { endpoints: number; health: string })[] {
    const names = new Set(records.map((r) => r.name));
    const lost = this.#lostNodes().filter((n) => !names.has(n.name));
    return [
      ...records.map((r) => ({
        ...r,
        endpoints: r.name === this.#o.self ? 0 : this.#endpointsOf(r.name),
        health: r.name === this.#o.self ? "self" : "alive",
      })),
      ...lost.map((n) => ({ ...n, endpoints: this.#endpointsOf(n.name), health: "lost" })),
    ];
  }

  /** Lost nodes in their grace period, with when they went and how long they stay. */
  #lostNodes(): RemoteNode[] {
    return this.#lost.values().map((l) => ({
      ...l.node,
      lost: {
        since: new Date(l.since).toISOString(),
        remainingSeconds: Math.ceil(this.#lost.remainingMs(l) / 1000),
      },
    }));
  }

  /** Another node as this node serves it: a live record, else a lost one in its grace period. */
  remote(name: string): { node: RemoteNode; live: boolean } | undefined {
    if (name === this.#o.self) return undefined;
    const key = this.#nodeKeys.get(name);
    const live = key === undefined ? undefined : this.#nodes.get(key);
    if (live !== undefined) return { node: live, live: true };
    const lost = this.#lost.values().find((l) => l.node.name === name);
    return lost && { node: lost.node, live: false };
  }

  endpoint(key: string): RemoteEndpoint | undefined {
    return this.#endpoints.get(key);
  }

  /** The keys of a node's endpoint records. */
  endpointKeysOf(node: string): Iterable<string> {
    return this.#endpointsByNode.get(node) ?? [];
  }

  #endpointsOf(node: string): number {
    return this.#endpointsByNode.get(node)?.size ?? 0;
  }

  /** A full listing of node records: every node in it is set, every known one not in it goes. */
  relistNodes(all: KvEntry[]): void {
    this.#relist(this.#nodes, all, nodeOf, (k, n) => this.#setNode(k, n));
  }

  /** A full listing of (other nodes') endpoint records, as `relistNodes`. */
  relistEndpoints(all: KvEntry[]): void {
    this.#relist(this.#endpoints, all, endpointOf, (k, e) => this.#setEndpoint(k, e));
  }

  nodeChanged(e: WatchEvent): void {
    this.#change(e, nodeOf, (k, n) => this.#setNode(k, n));
  }

  endpointChanged(e: WatchEvent): void {
    this.#change(e, endpointOf, (k, ep) => this.#setEndpoint(k, ep));
  }

  #relist<T>(
    known: Map<string, T>,
    all: KvEntry[],
    parse: (e: KvEntry) => T | undefined,
    set: (key: string, v: T | undefined) => void,
  ): void {
    const listed = new Set<string>();
    for (const e of all) {
      const v = parse(e);
      if (v === undefined) continue;
      listed.add(e.key);
      set(e.key, v);
    }
    for (const key of [...known.keys()]) if (!listed.has(key)) set(key, undefined);
  }

  #change<T>(
    e: WatchEvent,
    parse: (e: KvEntry) => T | undefined,
    set: (key: string, v: T | undefined) => void,
  ): void {
    if (e.type === "delete") set(e.key, undefined);
    else set(e.entry.key, parse(e.entry));
  }

  /**
   * A node record changed: a node whose record went away starts its grace period (its entries
   * stay), one whose record came back ends it. Only that node is recomputed.
   */
  #setNode(key: string, n: RemoteNode | undefined): void {
    const old = this.#nodes.get(key);
    if (old !== undefined) {
      this.dirtyNodes.add(old.name);
      if (this.#nodeKeys.get(old.name) === key) this.#nodeKeys.delete(old.name);
    }
    if (n === undefined) {
      if (old === undefined) return;
      this.#nodes.delete(key);
      if (old.name !== this.#o.self && this.#lost.lose(key, old)) {
        this.#o.log.warn("node lease gone: keeping its entries for the grace period", {
          node: old.name,
          graceSeconds: this.#lost.graceMs / 1000,
        });
      }
      return;
    }
    this.#nodes.set(key, n);
    this.#nodeKeys.set(n.name, key);
    this.dirtyNodes.add(n.name);
    const l = this.#lost.back(key);
    if (l) {
      this.#o.log.info("node back within the grace period: nothing removed", {
        node: l.node.name,
        awaySeconds: Math.round((Date.now() - l.since) / 100) / 10,
      });
    }
  }

  #setEndpoint(key: string, e: RemoteEndpoint | undefined): void {
    const old = this.#endpoints.get(key);
    if (old !== undefined) this.#endpointsByNode.get(old.node)?.delete(key);
    if (e === undefined) this.#endpoints.delete(key);
    else {
      this.#endpoints.set(key, e);
      let keys = this.#endpointsByNode.get(e.node);
      if (keys === undefined) this.#endpointsByNode.set(e.node, keys = new Set());
      keys.add(key);
    }
    if (old !== undefined && this.#endpointsByNode.get(old.node)?.size === 0) {
      this.#endpointsByNode.delete(old.node);
    }
    this.dirtyEndpoints.add(key);
  }
}
