/**
 * Node discovery: follows every node's record (`cilia/nodes/`, leased) and every endpoint
 * record (`cilia/endpoints/<node>/<id>`) and keeps this node's view of the others in force:
 * ipcache entries for remote pods (their identity, and in tunnel mode their node IP as tunnel
 * endpoint), for remote nodes' addresses (reserved:remote-node) and, in tunnel mode, for their
 * pod CIDRs (reserved:world, so even a pod not yet known is encapsulated), plus routes to their
 * pod CIDRs (routes.ts). A node whose lease expired keeps its entries for the grace period
 * (lost_nodes.ts), then takes its endpoints' entries with it, even though their records stay; a
 * node that returns in time loses nothing. Every change recomputes the desired state and writes
 * only the difference through the agent's one ipcache write path. It writes no records itself.
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

interface RemoteEndpoint {
  node: string;
  identity: number;
  ips: string[];
}

const dec = new TextDecoder();

export class NodeDiscovery {
  #o: NodeDiscoveryOptions;
  #nodes = new Map<string, RemoteNode>();
  #endpoints = new Map<string, RemoteEndpoint>();
  #installed = new Map<string, IpcacheUpsert>();
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
    return [...this.#installed.values()];
  }

  /** Watches nodes and endpoints; `ready` once both were listed and applied. */
  follow(opts: { signal: AbortSignal }): PrefixWatch {
    const w = { signal: opts.signal, log: this.#o.log };
    const nodes = watchPrefix(this.#o.store, NODES_PREFIX, {
      snapshot: (all) => this.#nodesGone(() => this.#snapshot(this.#nodes, all, nodeOf)),
      event: (e) => this.#nodesGone(() => this.#event(this.#nodes, NODES_PREFIX, e, nodeOf)),
    }, w);
    // This node's own endpoints are left out: they give no remote entry, and each local CNI ADD
    // writes one, which would recompute every remote entry (a walk of all endpoints per ADD).
    const own = `${ENDPOINTS_PREFIX}${this.#o.self.name}/`;
    const isOwn = (e: WatchEvent) => (e.type === "put" ? e.entry.key : e.key).startsWith(own);
    const eps = watchPrefix(this.#o.store, ENDPOINTS_PREFIX, {
      snapshot: (all) =>
        this.#snapshot(this.#endpoints, all.filter((e) => !e.key.startsWith(own)), endpointOf),
      event: (e) =>
        isOwn(e) ? undefined : this.#event(this.#endpoints, ENDPOINTS_PREFIX, e, endpointOf),
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

  /**
   * Applies a change of the node records: a node whose record went away starts its grace
   * period (its entries stay), one whose record came back ends it.
   */
  #nodesGone(apply: () => Promise<void>): Promise<void> {
    const before = new Map(this.#nodes);
    const done = apply();
    for (const [key, n] of before) {
      if (this.#nodes.has(key) || n.name === this.#o.self.name) continue;
      if (this.#lost.lose(key, n)) {
        this.#o.log.warn("node lease gone: keeping its entries for the grace period", {
          node: n.name,
          graceSeconds: this.#lost.graceMs / 1000,
        });
      }
    }
    for (const key of this.#nodes.keys()) {
      const l = this.#lost.back(key);
      if (l) {
        this.#o.log.info("node back within the grace period: nothing removed", {
          node: l.node.name,
          awaySeconds: Math.round((Date.now() - l.since) / 100) / 10,
        });
      }
    }
    return done;
  }

  #snapshot<T>(map: Map<string, T>, all: KvEntry[], parse: (e: KvEntry) => T | undefined) {
    map.clear();
    for (const e of all) {
      const v = parse(e);
      if (v !== undefined) map.set(e.key, v);
    }
    return this.#schedule();
  }

  #event<T>(
    map: Map<string, T>,
    _prefix: string,
    e: WatchEvent,
    parse: (e: KvEntry) => T | undefined,
  ) {
    if (e.type === "delete") map.delete(e.key);
    else {
      const v = parse(e.entry);
      if (v === undefined) map.delete(e.entry.key);
      else map.set(e.entry.key, v);
    }
    return this.#schedule();
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
    let n = 0;
    for (const e of this.#endpoints.values()) if (e.node === node) n++;
    return n;
  }

  #isLocal(ip: string): boolean {
    if (this.#o.self.addresses.includes(ip)) return true;
    const p = parsePrefix(ip);
    if (p.family === 4 && p.addr[0] === 169 && p.addr[1] === 254) return true; // link-local
    return this.#local.some((l) => l.family === p.family && within(p.addr, l.addr, l.prefixLen));
  }

  async #sync(): Promise<void> {
    const { self, mode } = this.#o;
    const want = new Map<string, IpcacheUpsert>();
    const routes: RouteSpec[] = [];
    // Lost nodes first: a live node that claims the same addresses or pod CIDR wins.
    const remote = new Map<string, RemoteNode>();
    for (const l of this.#lost.values()) {
      if (l.node.name !== self.name) remote.set(l.node.name, l.node);
    }
    for (const n of this.#nodes.values()) if (n.name !== self.name) remote.set(n.name, n);
    const put = (prefix: string, identity: number, tunnel: string | undefined) => {
      // A malformed address in another node's record is skipped, never written or thrown.
      if (typeof prefix !== "string" || tryParse(prefix).length === 0) return;
      if (!this.#isLocal(prefix.replace(/\/\d+$/, ""))) {
        want.set(prefix, { prefix, identity, ...(tunnel ? { tunnelEndpoint: tunnel } : {}) });
      }
    };
    for (const n of remote.values()) {
      const tunnel = mode === "tunnel" && n.ip?.includes(".") ? n.ip : undefined;
      for (const a of n.addresses) put(a, IDENTITY_REMOTE_NODE, tunnel);
      for (const cidr of [n.podCidr, n.podCidrV6]) {
        if (typeof cidr !== "string" || tryParse(cidr).length === 0) continue;
        if (tunnel) put(cidr, IDENTITY_WORLD, tunnel);
        routes.push(...this.#routeTo(n, cidr));
      }
    }
    const live = (e: RemoteEndpoint) => this.#nodes.has(NODES_PREFIX + e.node);
    const eps = [...this.#endpoints.values()];
    for (const e of [...eps.filter((e) => !live(e)), ...eps.filter(live)]) {
      const n = remote.get(e.node);
      if (n === undefined) continue;
      const tunnel = mode === "tunnel" && n.ip?.includes(".") ? n.ip : undefined;
      for (const ip of e.ips) put(ip, e.identity, tunnel);
    }
    const upserts = [...want.values()].filter((w) => {
      const had = this.#installed.get(w.prefix);
      return had === undefined || had.identity !== w.identity ||
        had.tunnelEndpoint !== w.tunnelEndpoint;
    });
    const deletes = [...this.#installed.values()].filter((i) => !want.has(i.prefix));
    if (upserts.length > 0 || deletes.length > 0) {
      await this.#o.ipcache(upserts, deletes);
      this.#o.log.debug("remote ipcache entries updated", {
        upserts: upserts.length,
        deletes: deletes.length,
      });
    }
    this.#installed = want;
    await this.#o.routes?.apply(routes);
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

function json(e: KvEntry): unknown {
  try {
    return JSON.parse(dec.decode(e.value));
  } catch {
    return undefined;
  }
}

function nodeOf(e: KvEntry): RemoteNode | undefined {
  const r = json(e) as Partial<NodeRecord> | undefined;
  if (!r || typeof r.name !== "string" || !Array.isArray(r.addresses)) return undefined;
  return { ...(r as NodeRecord), endpoints: 0, seenAt: new Date().toISOString() };
}

function endpointOf(e: KvEntry): RemoteEndpoint | undefined {
  const r = json(e) as
    | { node?: unknown; identity?: unknown; ipv4?: unknown; ipv6?: unknown }
    | undefined;
  if (!r || typeof r.node !== "string" || typeof r.identity !== "number") return undefined;
  const ips = [r.ipv4, r.ipv6].filter((x): x is string => typeof x === "string");
  return { node: r.node, identity: r.identity, ips };
}

/**
 * The next hop to a node's pod CIDR of `family` in native routing: its node IP (IPv4), else its
 * first address of that family outside its own pod CIDRs (the pod gateways on its cilia_host
 * are among its addresses and are no next hop). The kernel has no IPv6 route via an IPv4
 * gateway, so IPv6 pod CIDRs need an IPv6 underlay address on the node.
 */
function nextHop(n: NodeRecord, family: 4 | 6): string | undefined {
  if (family === 4 && n.ip?.includes(".")) return n.ip;
  const pods = [n.podCidr, n.podCidrV6].flatMap((c) => c ? tryParse(c) : []);
  return n.addresses.find((a) => {
    const [p] = tryParse(a);
    if (p === undefined || p.family !== family || p.prefixLen !== (family === 4 ? 32 : 128)) {
      return false;
    }
    if (family === 6 && p.addr[0] === 0xfe && (p.addr[1]! & 0xc0) === 0x80) return false;
    return !pods.some((c) => c.family === p.family && within(p.addr, c.addr, c.prefixLen));
  });
}

/** A record's address or prefix, or none when malformed (a record never breaks the sync). */
function tryParse(text: string): ReturnType<typeof parsePrefix>[] {
  try {
    return [parsePrefix(text)];
  } catch {
    return [];
  }
}

function within(addr: Uint8Array, net: Uint8Array, len: number): boolean {
  for (let bit = 0; bit < len; bit++) {
    const m = 0x80 >> (bit & 7);
    if ((addr[bit >> 3]! & m) !== (net[bit >> 3]! & m)) return false;
  }
  return true;
}
