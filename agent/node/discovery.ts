/**
 * Node discovery: follows every node's record (`cilia/nodes/`, leased) and every endpoint
 * record (`cilia/endpoints/<node>/<id>`) and keeps this node's view of the others in force:
 * ipcache entries for remote pods (their identity, and in tunnel mode their node IP as tunnel
 * endpoint), for remote nodes' addresses (reserved:remote-node) and, in tunnel mode, for their
 * pod CIDRs (reserved:world, so even a pod not yet known is encapsulated), plus routes to their
 * pod CIDRs (routes.ts). A node whose lease expired keeps its entries for the grace period
 * (lost_nodes.ts), then takes its endpoints' entries with it, even though their records stay; a
 * node that returns in time loses nothing. A change costs what it touches: a remote endpoint's
 * change makes only its own entries again, a node's change its own entries, routes and (when its
 * lease or tunnel endpoint changed) its endpoints' entries, and the difference (_claims.ts) goes
 * through the agent's one ipcache write path. It writes no records itself.
 */

import type { IpcacheEntry } from "@cilia/policy-wasm";
import { IDENTITY_REMOTE_NODE } from "@cilia/policy-wasm/constants";
import type { KvEntry, KvStore, WatchEvent } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import type { Serial } from "../_serial.ts";
import { type PrefixWatch, watchPrefix } from "../_watch.ts";
import type { IpcacheUpsert } from "../datapath/datapath.ts";
import { parsePrefix } from "../datapath/_addr.ts";
import { type NodeRecord, NODES_PREFIX } from "./registry.ts";
import { LostNodes } from "./lost_nodes.ts";
import { IpcacheClaims } from "./_claims.ts";
import { endpointOf, nextHop, nodeOf, type RemoteEndpoint, tryParse, within } from "./_records.ts";
import type { RouteSpec } from "./routes.ts";

export const ENDPOINTS_PREFIX = "cilia/endpoints/";
/** reserved:world, as RESERVED_IDENTITIES numbers it. */
const IDENTITY_WORLD = 2;

export type RoutingMode = "tunnel" | "native";

export interface NodeDiscoveryOptions {
  store: KvStore;
  /** This node: its name, addresses and pod CIDRs are never taken as remote. */
  self: NodeRecord;
  mode: RoutingMode;
  /** The agent's one ipcache write path (Regenerator.updateIpcache). */
  ipcache(upserts: IpcacheUpsert[], deletes: IpcacheEntry[]): Promise<void>;
  /** Routes to other nodes' pod CIDRs; absent without a kernel datapath. */
  routes?: { apply(desired: RouteSpec[]): Promise<void> };
  /** The tunnel device (tunnel mode with a kernel datapath). */
  tunnel?: { ifname: string; mtu: number };
  /** This node's pod gateways: the source of node → remote pod traffic. */
  gateways: { v4?: string; v6?: string };
  serial: Serial;
  log: Logger;
  /** How long a node whose record went away keeps its entries (0: none; default 0). */
  gracePeriodMs?: number;
}

/** Another node as this agent sees it. */
export interface RemoteNode extends NodeRecord {
  /** Its endpoints this node has in its ipcache. */
  endpoints: number;
  /** When its record was last written (registration or lease renewal). */
  seenAt: string;
  /** Present while its lease is gone and its entries are kept for the grace period. */
  lost?: { since: string; remainingSeconds: number };
}

export class NodeDiscovery {
  #o: NodeDiscoveryOptions;
  #nodes = new Map<string, RemoteNode>();
  /** A live node's name → its record's key. */
  #nodeKeys = new Map<string, string>();
  #endpoints = new Map<string, RemoteEndpoint>();
  /** A node's name → the keys of its endpoint records. */
  #endpointsByNode = new Map<string, Set<string>>();
  /** Nodes (by name) and endpoint records (by key) changed since the last sync. */
  #dirtyNodes = new Set<string>();
  #dirtyEndpoints = new Set<string>();
  /** What a node's endpoints' entries were made with (live or lost, tunnel endpoint), by name. */
  #endpointContext = new Map<string, string>();
  #claims = new IpcacheClaims();
  #routesByNode = new Map<string, { live: boolean; routes: RouteSpec[] }>();
  /** The routes to other nodes' pod CIDRs; made again only when a node changed. */
  #routes: RouteSpec[] | undefined = [];
  #pending: Promise<void> | undefined;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #lost: LostNodes<RemoteNode>;
  #local: { family: number; addr: Uint8Array; prefixLen: number }[];
  /** Pod CIDRs already warned about for want of a next hop (native routing). */
  #noNextHop = new Set<string>();

  constructor(opts: NodeDiscoveryOptions) {
    this.#o = opts;
    this.#lost = new LostNodes(opts.gracePeriodMs ?? 0, (n) => {
      opts.log.warn("node lost for the whole grace period: removing its entries", {
        node: n.name,
        graceSeconds: (opts.gracePeriodMs ?? 0) / 1000,
      });
      this.#dirtyNodes.add(n.name);
      this.#schedule();
    });
    this.#local = [opts.self.podCidr, opts.self.podCidrV6].filter((c): c is string => !!c)
      .map((c) => parsePrefix(c));
  }

  /** Other nodes with a live record, and lost ones in their grace period, by name. */
  list(): RemoteNode[] {
    return [...this.#nodes.values(), ...this.#lostNodes()]
      .filter((n) => n.name !== this.#o.self.name)
      .map((n) => ({ ...n, endpoints: this.#endpointsOf(n.name) }))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * Node records as the API shows them: each with its endpoints in this node's ipcache and its
   * health ("self"; "alive": its lease is kept alive, so its agent runs; "lost": its lease is
   * gone and its entries stay for `lost.remainingSeconds` more), lost nodes after the others.
   */
  describe<T extends NodeRecord>(
    records: T[],
  ): ((T | RemoteNode) & { endpoints: number; health: string })[] {
    const names = new Set(records.map((r) => r.name));
    const lost = this.#lostNodes().filter((n) => !names.has(n.name));
    return [
      ...records.map((r) => ({
        ...r,
        endpoints: r.name === this.#o.self.name ? 0 : this.#endpointsOf(r.name),
        health: r.name === this.#o.self.name ? "self" : "alive",
      })),
      ...lost.map((n) => ({ ...n, endpoints: this.#endpointsOf(n.name), health: "lost" })),
    ];
  }

  #lostNodes(): RemoteNode[] {
    return this.#lost.values().map((l) => ({
      ...l.node,
      lost: {
        since: new Date(l.since).toISOString(),
        remainingSeconds: Math.ceil(this.#lost.remainingMs(l) / 1000),
      },
    }));
  }

  /** Ipcache entries this node holds for other nodes and their pods. */
  entries(): IpcacheUpsert[] {
    return [...this.#claims.installed()];
  }

  /** Watches nodes and endpoints; `ready` once both were listed and applied. */
  follow(opts: { signal: AbortSignal }): PrefixWatch {
    const w = { signal: opts.signal, log: this.#o.log };
    const nodes = watchPrefix(this.#o.store, NODES_PREFIX, {
      snapshot: (all) => this.#relist(this.#nodes, all, nodeOf, (k, n) => this.#setNode(k, n)),
      event: (e) => this.#change(e, nodeOf, (k, n) => this.#setNode(k, n)),
    }, w);
    // This node's own endpoints are left out: they give no remote entry, and each local CNI ADD
    // writes one, which would wake a recomputation per ADD for nothing.
    const own = `${ENDPOINTS_PREFIX}${this.#o.self.name}/`;
    const isOwn = (e: WatchEvent) => (e.type === "put" ? e.entry.key : e.key).startsWith(own);
    const setEndpoint = (k: string, e: RemoteEndpoint | undefined) => this.#setEndpoint(k, e);
    const eps = watchPrefix(this.#o.store, ENDPOINTS_PREFIX, {
      snapshot: (all) =>
        this.#relist(
          this.#endpoints,
          all.filter((e) => !e.key.startsWith(own)),
          endpointOf,
          setEndpoint,
        ),
      event: (e) => isOwn(e) ? undefined : this.#change(e, endpointOf, setEndpoint),
    }, w);
    opts.signal.addEventListener("abort", () => {
      this.#closed = true;
      clearTimeout(this.#retry);
      this.#lost.close();
    });
    return {
      ready: Promise.all([nodes.ready, eps.ready]).then(() => this.#pending),
      done: Promise.all([nodes.done, eps.done]).then(() => {}),
    };
  }

  /** A full listing: every key in it is set, every known key not in it goes. */
  #relist<T>(
    known: Map<string, T>,
    all: KvEntry[],
    parse: (e: KvEntry) => T | undefined,
    set: (key: string, v: T | undefined) => void,
  ): Promise<void> {
    const listed = new Set<string>();
    for (const e of all) {
      const v = parse(e);
      if (v === undefined) continue;
      listed.add(e.key);
      set(e.key, v);
    }
    for (const key of [...known.keys()]) if (!listed.has(key)) set(key, undefined);
    return this.#schedule();
  }

  #change<T>(
    e: WatchEvent,
    parse: (e: KvEntry) => T | undefined,
    set: (key: string, v: T | undefined) => void,
  ): Promise<void> {
    if (e.type === "delete") set(e.key, undefined);
    else set(e.entry.key, parse(e.entry));
    return this.#schedule();
  }

  /**
   * A node record changed: a node whose record went away starts its grace period (its entries
   * stay), one whose record came back ends it. Only that node is recomputed.
   */
  #setNode(key: string, n: RemoteNode | undefined): void {
    const old = this.#nodes.get(key);
    if (old !== undefined) {
      this.#dirtyNodes.add(old.name);
      if (this.#nodeKeys.get(old.name) === key) this.#nodeKeys.delete(old.name);
    }
    if (n === undefined) {
      if (old === undefined) return;
      this.#nodes.delete(key);
      if (old.name !== this.#o.self.name && this.#lost.lose(key, old)) {
        this.#o.log.warn("node lease gone: keeping its entries for the grace period", {
          node: old.name,
          graceSeconds: this.#lost.graceMs / 1000,
        });
      }
      return;
    }
    this.#nodes.set(key, n);
    this.#nodeKeys.set(n.name, key);
    this.#dirtyNodes.add(n.name);
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
    this.#dirtyEndpoints.add(key);
  }

  /** Coalesces changes: one recomputation runs for every burst of events. */
  #schedule(): Promise<void> {
    return this.#pending ??= this.#o.serial.run(async () => {
      this.#pending = undefined;
      if (this.#closed) return;
      try {
        await this.#sync();
      } catch (err) {
        this.#o.log.error("cannot apply the other nodes' state: will retry", { error: err });
        clearTimeout(this.#retry);
        this.#retry = setTimeout(() => this.#schedule(), 1000);
      }
    });
  }

  #endpointsOf(node: string): number {
    return this.#endpointsByNode.get(node)?.size ?? 0;
  }

  #isLocal(ip: string): boolean {
    if (this.#o.self.addresses.includes(ip)) return true;
    const p = parsePrefix(ip);
    if (p.family === 4 && p.addr[0] === 169 && p.addr[1] === 254) return true; // link-local
    return this.#local.some((l) => l.family === p.family && within(p.addr, l.addr, l.prefixLen));
  }

  /**
   * Writes what changed since the last sync: the changed nodes' entries and routes, and the
   * entries of the changed endpoints and of the changed nodes' endpoints, never the others'.
   */
  async #sync(): Promise<void> {
    for (const name of this.#dirtyNodes) this.#claimNode(name);
    this.#dirtyNodes.clear();
    for (const key of this.#dirtyEndpoints) this.#claimEndpoint(key);
    this.#dirtyEndpoints.clear();
    const plan = this.#claims.plan();
    if (plan.upserts.length > 0 || plan.deletes.length > 0) {
      try {
        await this.#o.ipcache(plan.upserts, plan.deletes);
      } catch (err) {
        this.#claims.retry(plan);
        throw err;
      }
      this.#o.log.debug("remote ipcache entries updated", {
        upserts: plan.upserts.length,
        deletes: plan.deletes.length,
      });
    }
    this.#claims.commit(plan);
    await this.#o.routes?.apply(this.#routes ??= this.#allRoutes());
  }

  /** Another node as this node serves it: a live record, else a lost one in its grace period. */
  #remote(name: string): { node: RemoteNode; live: boolean } | undefined {
    if (name === this.#o.self.name) return undefined;
    const key = this.#nodeKeys.get(name);
    const live = key === undefined ? undefined : this.#nodes.get(key);
    if (live !== undefined) return { node: live, live: true };
    const lost = this.#lost.values().find((l) => l.node.name === name);
    return lost && { node: lost.node, live: false };
  }

  #tunnelOf(n: NodeRecord): string | undefined {
    return this.#o.mode === "tunnel" && n.ip?.includes(".") ? n.ip : undefined;
  }

  /**
   * A node's own entries (its addresses as remote-node; in tunnel mode its pod CIDRs as world)
   * and routes. A live node's win over a lost one's; its endpoints are made again only when
   * what their entries depend on changed (whether and how it is served, its tunnel endpoint).
   */
  #claimNode(name: string): void {
    const r = this.#remote(name);
    const entries: IpcacheUpsert[] = [];
    const tunnel = r && this.#tunnelOf(r.node);
    if (r !== undefined) {
      const routes: RouteSpec[] = [];
      for (const a of r.node.addresses) this.#want(entries, a, IDENTITY_REMOTE_NODE, tunnel);
      for (const cidr of [r.node.podCidr, r.node.podCidrV6]) {
        if (typeof cidr !== "string" || tryParse(cidr).length === 0) continue;
        if (tunnel) this.#want(entries, cidr, IDENTITY_WORLD, tunnel);
        routes.push(...this.#routeTo(r.node, cidr));
      }
      this.#routesByNode.set(name, { live: r.live, routes });
    } else this.#routesByNode.delete(name);
    this.#routes = undefined;
    this.#claims.set(`${NODES_PREFIX}${name}`, r?.live ? 1 : 0, entries);
    const context = r && `${r.live} ${tunnel ?? ""}`;
    if (this.#endpointContext.get(name) === context) return;
    if (context === undefined) this.#endpointContext.delete(name);
    else this.#endpointContext.set(name, context);
    for (const key of this.#endpointsByNode.get(name) ?? []) this.#dirtyEndpoints.add(key);
  }

  /** An endpoint's entries: its IPs as its identity, while its node is served. */
  #claimEndpoint(key: string): void {
    const e = this.#endpoints.get(key);
    const r = e && this.#remote(e.node);
    const entries: IpcacheUpsert[] = [];
    if (r !== undefined) {
      const tunnel = this.#tunnelOf(r.node);
      for (const ip of e!.ips) this.#want(entries, ip, e!.identity, tunnel);
    }
    this.#claims.set(key, r?.live ? 3 : 2, entries);
  }

  #want(
    into: IpcacheUpsert[],
    prefix: unknown,
    identity: number,
    tunnel: string | undefined,
  ): void {
    // A malformed address in another node's record is skipped, never written or thrown.
    if (typeof prefix !== "string" || tryParse(prefix).length === 0) return;
    if (this.#isLocal(prefix.replace(/\/\d+$/, ""))) return;
    const entry = { prefix, identity, ...(tunnel ? { tunnelEndpoint: tunnel } : {}) };
    const i = into.findIndex((e) => e.prefix === prefix);
    if (i < 0) into.push(entry);
    else into[i] = entry; // the later of one record's two claims on an address wins
  }

  /** Lost nodes' routes first: a live node's route to the same CIDR wins. */
  #allRoutes(): RouteSpec[] {
    const all = [...this.#routesByNode.values()];
    return [...all.filter((n) => !n.live), ...all.filter((n) => n.live)].flatMap((n) => n.routes);
  }

  #routeTo(n: NodeRecord, cidr: string): RouteSpec[] {
    const family = cidr.includes(":") ? 6 : 4;
    const src = family === 4 ? this.#o.gateways.v4 : this.#o.gateways.v6;
    if (this.#o.mode === "tunnel") {
      const t = this.#o.tunnel;
      if (t === undefined) return [];
      return [{ family, cidr, dev: t.ifname, mtu: t.mtu, ...(src ? { src } : {}) }];
    }
    const via = nextHop(n, family);
    if (via === undefined) {
      if (!this.#noNextHop.has(cidr)) {
        this.#noNextHop.add(cidr);
        this.#o.log.warn("no route to a node's pod CIDR: the node has no underlay address", {
          node: n.name,
          cidr,
          family: `IPv${family}`,
        });
      }
      return [];
    }
    this.#noNextHop.delete(cidr);
    return [{ family, cidr, via }];
  }
}
