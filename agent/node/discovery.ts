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
 * through the agent's one ipcache write path. It writes no records itself. What the watches
 * reported (records, lost nodes, what changed) is _remote_view.ts's, the routes _node_routes.ts
 * computes; this module turns them into claims and writes, one coalesced sync at a time.
 */

import type { IpcacheEntry } from "@cilia/policy-wasm";
import { IDENTITY_REMOTE_NODE } from "@cilia/policy-wasm/constants";
import type { KvStore, WatchEvent } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import type { Serial } from "../_serial.ts";
import { type PrefixWatch, watchPrefix } from "../_watch.ts";
import type { IpcacheUpsert } from "../datapath/datapath.ts";
import { parsePrefix } from "../datapath/_addr.ts";
import { type NodeRecord, NODES_PREFIX } from "./registry.ts";
import { IpcacheClaims } from "./_claims.ts";
import { NodeRoutes } from "./_node_routes.ts";
import { isLocal, type LocalAddresses, tryParse } from "./_records.ts";
import { RemoteView } from "./_remote_view.ts";
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
  #view: RemoteView;
  /** What a node's endpoints' entries were made with (live or lost, tunnel endpoint), by name. */
  #endpointContext = new Map<string, string>();
  #claims = new IpcacheClaims();
  #routes: NodeRoutes;
  #pending: Promise<void> | undefined;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  /** This node's addresses and pod CIDRs: never claimed for another node. */
  #local: LocalAddresses;

  constructor(opts: NodeDiscoveryOptions) {
    this.#o = opts;
    this.#view = new RemoteView({
      self: opts.self.name,
      gracePeriodMs: opts.gracePeriodMs ?? 0,
      log: opts.log,
      expired: () => void this.#schedule(),
    });
    this.#routes = new NodeRoutes(opts);
    const pods = [opts.self.podCidr, opts.self.podCidrV6].filter((c): c is string => !!c)
      .map((c) => parsePrefix(c));
    this.#local = { addresses: opts.self.addresses, pods };
  }

  /** Other nodes with a live record, and lost ones in their grace period, by name. */
  list(): RemoteNode[] {
    return this.#view.list();
  }

  /**
   * Node records as the API shows them: each with its endpoints in this node's ipcache and its
   * health ("self"; "alive": its lease is kept alive, so its agent runs; "lost": its lease is
   * gone and its entries stay for `lost.remainingSeconds` more), lost nodes after the others.
   */
  describe<T extends NodeRecord>(
    records: T[],
  ): ((T | RemoteNode) & { endpoints: number; health: string })[] {
    return this.#view.describe(records);
  }

  /** Ipcache entries this node holds for other nodes and their pods. */
  entries(): IpcacheUpsert[] {
    return [...this.#claims.installed()];
  }

  /** Watches nodes and endpoints; `ready` once both were listed and applied. */
  follow(opts: { signal: AbortSignal }): PrefixWatch {
    const w = { signal: opts.signal, log: this.#o.log };
    const v = this.#view;
    const nodes = watchPrefix(this.#o.store, NODES_PREFIX, {
      snapshot: (all) => {
        v.relistNodes(all);
        return this.#schedule();
      },
      event: (e) => {
        v.nodeChanged(e);
        return this.#schedule();
      },
    }, w);
    // This node's own endpoints are left out: they give no remote entry, and each local CNI ADD
    // writes one, which would wake a recomputation per ADD for nothing.
    const own = `${ENDPOINTS_PREFIX}${this.#o.self.name}/`;
    const isOwn = (e: WatchEvent) => (e.type === "put" ? e.entry.key : e.key).startsWith(own);
    const eps = watchPrefix(this.#o.store, ENDPOINTS_PREFIX, {
      snapshot: (all) => {
        v.relistEndpoints(all.filter((e) => !e.key.startsWith(own)));
        return this.#schedule();
      },
      event: (e) => {
        if (isOwn(e)) return undefined;
        v.endpointChanged(e);
        return this.#schedule();
      },
    }, w);
    opts.signal.addEventListener("abort", () => {
      this.#closed = true;
      clearTimeout(this.#retry);
      this.#view.close();
    });
    return {
      ready: Promise.all([nodes.ready, eps.ready]).then(() => this.#pending),
      done: Promise.all([nodes.done, eps.done]).then(() => {}),
    };
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

  /**
   * Writes what changed since the last sync: the changed nodes' entries and routes, and the
   * entries of the changed endpoints and of the changed nodes' endpoints, never the others'.
   */
  async #sync(): Promise<void> {
    const { dirtyNodes, dirtyEndpoints } = this.#view;
    for (const name of dirtyNodes) this.#claimNode(name);
    dirtyNodes.clear();
    for (const key of dirtyEndpoints) this.#claimEndpoint(key);
    dirtyEndpoints.clear();
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
    await this.#o.routes?.apply(this.#routes.all());
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
    const r = this.#view.remote(name);
    const entries: IpcacheUpsert[] = [];
    const tunnel = r && this.#tunnelOf(r.node);
    if (r !== undefined) {
      for (const a of r.node.addresses) this.#want(entries, a, IDENTITY_REMOTE_NODE, tunnel);
      if (tunnel) {
        for (const cidr of [r.node.podCidr, r.node.podCidrV6]) {
          this.#want(entries, cidr, IDENTITY_WORLD, tunnel);
        }
      }
    }
    this.#routes.set(name, r);
    this.#claims.set(`${NODES_PREFIX}${name}`, r?.live ? 1 : 0, entries);
    const context = r && `${r.live} ${tunnel ?? ""}`;
    if (this.#endpointContext.get(name) === context) return;
    if (context === undefined) this.#endpointContext.delete(name);
    else this.#endpointContext.set(name, context);
    for (const key of this.#view.endpointKeysOf(name)) this.#view.dirtyEndpoints.add(key);
  }

  /** An endpoint's entries: its IPs as its identity, while its node is served. */
  #claimEndpoint(key: string): void {
    const e = this.#view.endpoint(key);
    const r = e && this.#view.remote(e.node);
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
    if (isLocal(prefix.replace(/\/\d+$/, ""), this.#local)) return;
    const entry = { prefix, identity, ...(tunnel ? { tunnelEndpoint: tunnel } : {}) };
    const i = into.findIndex((e) => e.prefix === prefix);
    if (i < 0) into.push(entry);
    else into[i] = entry; // the later of one record's two claims on an address wins
  }
}
