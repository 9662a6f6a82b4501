// The node's eBPF datapath as one object: builds (cached) and loads the lxc programs, pins them
// under a bpffs root, attaches them to endpoint veths, and writes endpoints, ipcache and policy
// as map diffs (never a program reload). Runs where the agent runs: inside the node's network
// namespace with the node's bpffs (or, for tests and tools, from outside with `netns` set and a
// bpffs root visible in the caller's mount namespace). It decides no policy (the engine does)
// and plans no policy writes: KernelSink with policy_state.ts is the one writer the agent, the
// tests and the benches share.
import { z } from "zod";
import { BpfTool, bytesFromHex } from "./bpftool.ts";
import { buildObject } from "./build.ts";
import {
  decode,
  DIR_EGRESS,
  encode,
  EP_F_EGRESS_DEFAULT_DENY,
  EP_F_ENFORCEMENT_DISABLED,
  EP_F_INGRESS_DEFAULT_DENY,
  EP_F_NOT_READY,
  LAYOUTS,
  num,
} from "./codecs.ts";
import { formatIP, parseIPv4, parseIPv6, parseMac, parsePrefix } from "./_addr.ts";
import { collectConntrack, type GcResult, startConntrackGc } from "./conntrack_gc.ts";
import { type DatapathEvent, readEvents } from "./events.ts";
import {
  attachedProgramIds,
  attachEndpoint,
  attachEndpoints,
  checkBpffs,
  detachEndpoint,
  loadPinned,
  type MapName,
  pinnedMaxEntries,
  type Pins,
} from "./loader.ts";
import {
  countEntries,
  countFill,
  isMapFullErrno,
  type MapFill,
  mapFullError,
  type MapSizes,
  SIZED_MAPS,
  sizeDefines,
  type SizedMap,
  sizesByMap,
} from "./map_sizes.ts";
import {
  decodePolicyEntry,
  type EncodedEntry,
  mergePolicyEntries,
  type PolicyEntry,
} from "./policy_map.ts";
import { type MapUpdate, MapWriter } from "./map_writer.ts";
import { linkIndex, linkNames } from "../sys/links.ts";
import { ifIndex } from "./ffi.ts";

export type { DatapathEvent, MapFill, MapSizes, PolicyEntry };

export interface DatapathOptions {
  /** Where maps and programs are pinned; default /sys/fs/bpf/cilia. */
  bpffsRoot?: string;
  /** The object cache (see build.ts). */
  buildDir: string;
  /** The bpf/ source directory; default the repository's. */
  sourceDir?: string;
  /** Run tc/ip/bpftool in /run/netns/<netns>; unset when already running inside the node. */
  netns?: string;
  /** Run the conntrack garbage collector every N ms until close(); unset = never. */
  conntrackGcIntervalMs?: number;
  /** max_entries of conntrack, policy and ipcache (compile-time defines); unset: the defaults. */
  mapSizes?: MapSizes;
}

/** An endpoint-map entry: what the kernel keeps per endpoint interface. */
export interface EndpointEntry {
  ifname: string;
  epId: number;
  identity: number;
  ipv4?: string;
  ipv6?: string;
  mac?: string;
  /** The host side's MAC: the pods' IPv6 router answers neighbour solicitations with it (nd.h). */
  hostMac?: string;
  ingressDefaultDeny: boolean;
  egressDefaultDeny: boolean;
  /** false turns policy off for this endpoint; default true. */
  enforcement?: boolean;
  /** true: the endpoint's policy is not written, drop all its traffic (EP_F_NOT_READY). */
  notReady?: boolean;
}

export interface IpcacheUpsert {
  prefix: string;
  identity: number;
  tunnelEndpoint?: string;
}

export interface MetricsRow {
  reason: number;
  dir: "ingress" | "egress";
  packets: bigint;
  bytes: bigint;
}

/** See `Datapath.endpointSnapshot()`. */
export interface EndpointSnapshot {
  ifindex: Map<string, number>;
  values: Map<number, Uint8Array>;
  /** Interfaces whose ingress and egress run the pinned programs. */
  attached: Set<number>;
}

const ProgIdSchema = z.object({ id: z.number() }).passthrough();

/** The endpoint-map value of an endpoint entry (flags, identity, addresses, MAC). */
export function endpointValue(ep: EndpointEntry): Uint8Array {
  const flags = (ep.ingressDefaultDeny ? EP_F_INGRESS_DEFAULT_DENY : 0) |
    (ep.egressDefaultDeny ? EP_F_EGRESS_DEFAULT_DENY : 0) |
    (ep.enforcement === false ? EP_F_ENFORCEMENT_DISABLED : 0) |
    (ep.notReady ? EP_F_NOT_READY : 0);
  const v4 = ep.ipv4 === undefined ? undefined : parseIPv4(ep.ipv4);
  const v6 = ep.ipv6 === undefined ? undefined : parseIPv6(ep.ipv6);
  if ((ep.ipv4 !== undefined && !v4) || (ep.ipv6 !== undefined && !v6)) {
    throw new SyntaxError(`Invalid endpoint address for "${ep.ifname}": "${ep.ipv4 ?? ep.ipv6}"`);
  }
  return encode(LAYOUTS.endpointInfo, {
    ep_id: ep.epId,
    flags,
    identity: ep.identity,
    ...(v4 ? { ipv4: v4 } : {}),
    ...(v6 ? { ipv6: v6 } : {}),
    ...(ep.mac ? { mac: parseMac(ep.mac) } : {}),
    ...(ep.hostMac ? { host_mac: parseMac(ep.hostMac) } : {}),
  });
}

/**
 * The cilia_lxc_ipv4 entry (bpf/lib/endpoint.h) of an endpoint-map value on veth `ifindex`: its
 * IPv4 address to the veth and both MACs; undefined without an address or either MAC (the
 * receive path asks the FIB then, bpf/lib/tunnel.h 5.).
 */
export function lxcIpv4Entry(
  ifindex: number,
  info: Uint8Array,
): { key: Uint8Array; value: Uint8Array } | undefined {
  const v = decode(LAYOUTS.endpointInfo, info);
  const ipv4 = v.ipv4 as Uint8Array, mac = v.mac as Uint8Array, hostMac = v.host_mac as Uint8Array;
  if (ipv4.every((b) => b === 0) || mac.every((b) => b === 0) || hostMac.every((b) => b === 0)) {
    return undefined;
  }
  return {
    key: ipv4.slice(),
    value: encode(LAYOUTS.lxcIpv4Info, { ifindex, mac, host_mac: hostMac }),
  };
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export class Datapath implements AsyncDisposable {
  readonly pins: Pins;
  /** Whether open() loaded new programs (false: the pinned ones were reused). */
  readonly loaded: boolean;
  readonly #bpftool: BpfTool;
  readonly #writer: MapWriter;
  /** The network namespace tc/ip/bpftool run in (undefined: the caller's own). */
  readonly netns: string | undefined;
  #stopGc: (() => void) | undefined;
  /** max_entries of the sized maps as pinned (read once at open). */
  readonly mapMax: Readonly<Record<SizedMap, number>>;
  #fill: { at: number; rows: MapFill[] } | undefined;

  private constructor(
    pins: Pins,
    loaded: boolean,
    bpftool: BpfTool,
    opts: { netns?: string | undefined; mapMax: Record<SizedMap, number> },
  ) {
    this.pins = pins;
    this.loaded = loaded;
    this.mapMax = opts.mapMax;
    const netns = opts.netns;
    this.#bpftool = bpftool;
    // In process unless asked for bpftool (map_writer.ts; a fault test's fake bpftool).
    this.#writer = new MapWriter(bpftool, { ffi: Deno.env.get("CILIA_MAP_WRITER") !== "bpftool" });
    this.netns = netns;
  }

  static async open(opts: DatapathOptions): Promise<Datapath> {
    const root = (opts.bpffsRoot ?? "/sys/fs/bpf/cilia").replace(/\/+$/, "");
    await checkBpffs(root);
    const sizes = opts.mapSizes ?? {};
    const obj = await buildObject({
      buildDir: opts.buildDir,
      defines: sizeDefines(sizes),
      ...(opts.sourceDir ? { sourceDir: opts.sourceDir } : {}),
    });
    const bpftool = new BpfTool({ netns: opts.netns });
    const res = await loadPinned(bpftool, {
      root,
      object: obj.path,
      hash: obj.hash,
      sizes: sizesByMap(sizes),
    });
    const mapMax = {} as Record<SizedMap, number>;
    const max = await Promise.all(
      SIZED_MAPS.map((n) => pinnedMaxEntries(bpftool, res.pins.maps[n])),
    );
    SIZED_MAPS.forEach((n, i) => mapMax[n] = max[i]!);
    const dp = new Datapath(res.pins, res.loaded, bpftool, { netns: opts.netns, mapMax });
    if (res.loaded) await dp.#reattachAll();
    for (const dir of res.stale) await Deno.remove(dir, { recursive: true }).catch(() => {});
    if (opts.conntrackGcIntervalMs) {
      dp.#stopGc = startConntrackGc(res.pins.maps.cilia_ct, {
        intervalMs: opts.conntrackGcIntervalMs,
      });
    }
    return dp;
  }

  /** Points every known endpoint at the current programs (after a new object was loaded). */
  async #reattachAll(): Promise<void> {
    const names = await linkNames(this.netns);
    const ifnames = (await this.#bpftool.mapDump(this.pins.maps.cilia_endpoints)).flatMap((e) => {
      const ifname = names.get(num(decode(LAYOUTS.endpointKey, bytesFromHex(e.key)).ifindex));
      return ifname ? [ifname] : [];
    });
    // Batches of links per tc process (1,000 processes took seconds under load); stops at the
    // first error and throws it.
    await attachEndpoints(this.pins, ifnames, this.netns);
  }

  /** Writes the endpoint entry, then attaches both programs (fail closed: entry first). */
  async upsertEndpoint(ep: EndpointEntry): Promise<void> {
    // In process when the agent runs in the node's namespace itself (no ip process per ADD).
    const ifindex = this.netns === undefined
      ? ifIndex(ep.ifname)
      : await linkIndex(ep.ifname, this.netns);
    if (ifindex === undefined) throw new Error(`Cannot find link "${ep.ifname}"`);
    const key = encode(LAYOUTS.endpointKey, { ifindex });
    const value = endpointValue(ep);
    await this.#writer.apply(this.pins.maps.cilia_endpoints, [{ key, value }], []);
    const lxc = lxcIpv4Entry(ifindex, value);
    if (lxc) await this.#writer.apply(this.pins.maps.cilia_lxc_ipv4, [lxc], []);
    await attachEndpoint(this.pins, ep.ifname, this.netns);
  }

  /**
   * What the kernel holds for endpoint interfaces, read once after a restart (five processes)
   * so that restoring an endpoint whose entry and programs are already in place writes nothing:
   * ifindex by link name, endpoint-map values by ifindex, and the interfaces whose ingress and
   * egress both run this datapath's pinned programs (compared by program id; one `tc -batch`
   * over the links the endpoint map names, not `bpftool net show` over every link).
   */
  async endpointSnapshot(): Promise<EndpointSnapshot> {
    const progId = async (pinned: string) =>
      (await this.#bpftool.json(["prog", "show", "pinned", pinned], ProgIdSchema)).id;
    // Four reads at once (the agent runs its commands in several shells), then the filters.
    const [names, dump, ingress, egress] = await Promise.all([
      linkNames(this.netns),
      this.#bpftool.mapDump(this.pins.maps.cilia_endpoints),
      progId(this.pins.fromContainer),
      progId(this.pins.toContainer),
    ]);
    const values = new Map<number, Uint8Array>();
    for (const e of dump) {
      const k = decode(LAYOUTS.endpointKey, bytesFromHex(e.key));
      if (e.value) values.set(num(k.ifindex), bytesFromHex(e.value));
    }
    await this.#syncLxcIpv4(values);
    const ifnames = [...values.keys()].flatMap((i) => names.get(i) ?? []);
    const progs = await attachedProgramIds(ifnames, this.netns);
    const ifindex = new Map([...names].map(([index, name]) => [name, index]));
    const attached = new Set<number>();
    for (const [name, p] of progs) {
      if (p.ingress.includes(ingress) && p.egress.includes(egress)) {
        attached.add(ifindex.get(name)!);
      }
    }
    return { ifindex, values, attached };
  }

  /**
   * Makes cilia_lxc_ipv4 hold exactly the entries of the endpoint-map `values` (by ifindex): a
   * restart keeps restored endpoints' entries, an upgrade from a build without the map fills
   * it, entries of gone endpoints go.
   */
  async #syncLxcIpv4(values: Map<number, Uint8Array>): Promise<void> {
    const want = new Map<string, { key: Uint8Array; value: Uint8Array }>();
    for (const [ifindex, v] of values) {
      const e = lxcIpv4Entry(ifindex, v);
      if (e) want.set(e.key.join("."), e);
    }
    const deletes: Uint8Array[] = [];
    for (const e of await this.#bpftool.mapDump(this.pins.maps.cilia_lxc_ipv4)) {
      const key = bytesFromHex(e.key);
      const w = want.get(key.join("."));
      if (!w) deletes.push(key);
      else if (e.value && sameBytes(bytesFromHex(e.value), w.value)) want.delete(key.join("."));
    }
    if (want.size || deletes.length) {
      await this.#writer.apply(this.pins.maps.cilia_lxc_ipv4, [...want.values()], deletes);
    }
  }

  /** The cilia_lxc_ipv4 keys whose entry names one of `ifindexes`. */
  async #lxcIpv4Keys(ifindexes: ReadonlySet<number>): Promise<Uint8Array[]> {
    return (await this.#bpftool.mapDump(this.pins.maps.cilia_lxc_ipv4)).flatMap((e) => {
      if (!e.value) return [];
      const v = decode(LAYOUTS.lxcIpv4Info, bytesFromHex(e.value));
      return ifindexes.has(num(v.ifindex)) ? [bytesFromHex(e.key)] : [];
    });
  }

  /** Every policy key with its value, by endpoint id (what a restarted agent compares with). */
  async policyRows(): Promise<Map<number, EncodedEntry[]>> {
    const out = new Map<number, EncodedEntry[]>();
    for (const e of await this.#bpftool.mapDump(this.pins.maps.cilia_policy)) {
      if (!e.value) continue;
      const key = bytesFromHex(e.key);
      const epId = num(decode(LAYOUTS.policyKey, key).ep_id);
      let list = out.get(epId);
      if (!list) out.set(epId, list = []);
      list.push({ key, value: bytesFromHex(e.value) });
    }
    return out;
  }

  /**
   * Deletes the endpoint entry (its veth then drops everything), detaches, drops its state.
   * `policyKeys`: the endpoint's policy keys when the caller knows them for sure (KernelSink
   * does); without them the whole policy map is dumped to find them, which costs time and
   * memory in proportion to every endpoint's policy.
   */
  async removeEndpoint(
    ifname: string,
    epId: number,
    policyKeys?: readonly Uint8Array[],
  ): Promise<void> {
    const keys: Uint8Array[] = [];
    const ifindexes = new Set<number>();
    for (const e of await this.#bpftool.mapDump(this.pins.maps.cilia_endpoints)) {
      if (e.value && num(decode(LAYOUTS.endpointInfo, bytesFromHex(e.value)).ep_id) === epId) {
        keys.push(bytesFromHex(e.key));
        ifindexes.add(num(decode(LAYOUTS.endpointKey, bytesFromHex(e.key)).ifindex));
      }
    }
    // Its address first: nothing is sent to the veth by it once its entry is gone.
    const lxc = await this.#lxcIpv4Keys(ifindexes);
    if (lxc.length) await this.#writer.apply(this.pins.maps.cilia_lxc_ipv4, [], lxc);
    await this.#writer.apply(this.pins.maps.cilia_endpoints, [], keys);
    await detachEndpoint(ifname, this.netns);
    const stale = policyKeys ??
      (await this.#policyRows()).filter((r) => r.epId === epId).map((r) => r.key);
    await this.#writer.apply(this.pins.maps.cilia_policy, [], stale);
    collectConntrack(this.pins.maps.cilia_ct, { epIds: new Set([epId]) });
  }

  /** Deletes one endpoint entry by interface index and detaches from it (stale entries). */
  async removeEndpointEntry(ifindex: number, ifname?: string): Promise<void> {
    const key = encode(LAYOUTS.endpointKey, { ifindex });
    const lxc = await this.#lxcIpv4Keys(new Set([ifindex]));
    if (lxc.length) await this.#writer.apply(this.pins.maps.cilia_lxc_ipv4, [], lxc);
    await this.#writer.apply(this.pins.maps.cilia_endpoints, [], [key]);
    if (ifname) await detachEndpoint(ifname, this.netns);
  }

  async updateIpcache(
    upserts: readonly IpcacheUpsert[],
    deletes: readonly string[],
  ): Promise<void> {
    const key = (prefix: string) => {
      const p = parsePrefix(prefix);
      return encode(LAYOUTS.ipcacheKey, {
        prefixlen: 32 + p.prefixLen,
        family: p.family,
        addr: p.addr,
      });
    };
    const updates = upserts.map((u) => {
      const tun = u.tunnelEndpoint === undefined ? undefined : parseIPv4(u.tunnelEndpoint);
      if (u.tunnelEndpoint !== undefined && !tun) {
        throw new SyntaxError(`Invalid tunnel endpoint "${u.tunnelEndpoint}": expected IPv4`);
      }
      const tunnel = tun ? new DataView(tun.buffer).getUint32(0, false) : 0;
      return {
        key: key(u.prefix),
        value: encode(LAYOUTS.ipcacheValue, { identity: u.identity, tunnel_endpoint: tunnel }),
      };
    });
    await this.#apply("cilia_ipcache", updates, deletes.map(key));
  }

  /** Writes one sized map; a full map is a RangeError naming the map, its size and the flag. */
  async #apply(map: SizedMap, updates: readonly MapUpdate[], deletes: readonly Uint8Array[]) {
    try {
      await this.#writer.apply(this.pins.maps[map], updates, deletes);
    } catch (err) {
      const max = this.mapMax[map];
      if (!isMapFullErrno(err) || countEntries(this.pins.maps[map], { map, max }) < max) throw err;
      throw mapFullError(map, max, err);
    }
  }

  /**
   * Entries and max_entries of conntrack, policy and ipcache. Counting walks every key (about a
   * microsecond each), so a result younger than `maxAgeMs` is returned as it is.
   */
  mapFill(maxAgeMs = 5_000): MapFill[] {
    if (this.#fill && Date.now() - this.#fill.at < maxAgeMs) return this.#fill.rows;
    const rows = countFill(this.pins.maps, this.mapMax);
    this.#fill = { at: Date.now(), rows };
    return rows;
  }

  /**
   * Writes encoded policy keys as given: updates first, then deletes. The one planner of these
   * keys is `EndpointPolicyState` (policy_state.ts), driven by `KernelSink`.
   */
  async writePolicyKeys(updates: readonly EncodedEntry[], deletes: readonly Uint8Array[]) {
    await this.#apply("cilia_policy", updates, deletes);
  }

  /** Writes encoded entries of one map as given: updates first, then deletes (services). */
  async writeMap(map: MapName, updates: readonly MapUpdate[], deletes: readonly Uint8Array[]) {
    await this.#writer.apply(this.pins.maps[map], updates, deletes);
  }

  /** Every entry of one map, encoded. */
  async dumpMap(map: MapName): Promise<{ key: Uint8Array; value: Uint8Array }[]> {
    return (await this.#bpftool.mapDump(this.pins.maps[map])).flatMap((e) =>
      e.value ? [{ key: bytesFromHex(e.key), value: bytesFromHex(e.value) }] : []
    );
  }

  /** Every policy key in the map, by endpoint id (for reconciling after a restart). */
  async policyKeys(): Promise<Map<number, Uint8Array[]>> {
    const out = new Map<number, Uint8Array[]>();
    for (const r of await this.#policyRows()) {
      const list = out.get(r.epId);
      if (list) list.push(r.key);
      else out.set(r.epId, [r.key]);
    }
    return out;
  }

  /** The endpoint entries in the map. */
  async endpointEntries(): Promise<{ ifindex: number; epId: number; identity: number }[]> {
    return (await this.#bpftool.mapDump(this.pins.maps.cilia_endpoints)).flatMap((e) => {
      if (!e.value) return [];
      const v = decode(LAYOUTS.endpointInfo, bytesFromHex(e.value));
      const k = decode(LAYOUTS.endpointKey, bytesFromHex(e.key));
      return [{ ifindex: num(k.ifindex), epId: num(v.ep_id), identity: num(v.identity) }];
    });
  }

  /** The ipcache as prefixes ("10.0.0.1/32", "2001:db8::/64") and identities. */
  async ipcacheEntries(): Promise<IpcacheUpsert[]> {
    return (await this.#bpftool.mapDump(this.pins.maps.cilia_ipcache)).flatMap((e) => {
      if (!e.value) return [];
      const k = decode(LAYOUTS.ipcacheKey, bytesFromHex(e.key));
      const v = decode(LAYOUTS.ipcacheValue, bytesFromHex(e.value));
      const family = num(k.family);
      const prefix = `${formatIP(family, k.addr as Uint8Array)}/${num(k.prefixlen) - 32}`;
      const tun = num(v.tunnel_endpoint);
      return [{
        prefix,
        identity: num(v.identity),
        ...(tun !== 0
          ? { tunnelEndpoint: [24, 16, 8, 0].map((s) => (tun >>> s) & 255).join(".") }
          : {}),
      }];
    });
  }

  async #policyRows(): Promise<{ epId: number; key: Uint8Array; entry: PolicyEntry }[]> {
    return (await this.#bpftool.mapDump(this.pins.maps.cilia_policy)).flatMap((e) => {
      if (!e.value) return [];
      const key = bytesFromHex(e.key);
      const [epId, entry] = decodePolicyEntry(key, bytesFromHex(e.value));
      return [{ epId, key, entry }];
    });
  }

  /** The endpoint's policy entries as ranges (adjacent equal blocks merged). */
  async dumpPolicy(epId: number): Promise<PolicyEntry[]> {
    const rows = (await this.#policyRows()).filter((r) => r.epId === epId);
    return mergePolicyEntries(rows.map((r) => r.entry));
  }

  /** Decoded datapath events until signal aborts (or the consumer stops iterating). */
  events(signal?: AbortSignal): AsyncIterable<DatapathEvent> {
    return readEvents(this.pins.maps.cilia_events, { signal });
  }

  async readMetrics(): Promise<MetricsRow[]> {
    const rows: MetricsRow[] = [];
    for (const e of await this.#bpftool.mapDump(this.pins.maps.cilia_metrics)) {
      // A slot of the per-CPU array: reason | dir << 8, little-endian (bpf/lib/metrics.h, 1.).
      const [reason = 0, dir = 0] = bytesFromHex(e.key);
      let packets = 0n, bytes = 0n;
      for (const c of e.values ?? []) {
        const v = decode(LAYOUTS.metricsValue, bytesFromHex(c.value));
        packets += v.packets as bigint;
        bytes += v.bytes as bigint;
      }
      if (packets === 0n) continue; // a slot of the array never counted (bpf/lib/metrics.h, 2.)
      rows.push({
        reason,
        dir: dir === DIR_EGRESS ? "egress" : "ingress",
        packets,
        bytes,
      });
    }
    return rows.sort((a, b) => a.reason - b.reason || a.dir.localeCompare(b.dir));
  }

  /** Deletes expired conntrack entries now. */
  collectConntrack(now?: bigint): GcResult {
    return collectConntrack(this.pins.maps.cilia_ct, now === undefined ? {} : { now });
  }

  /** Stops background work. Pins, maps and attachments stay: the datapath outlives the agent. */
  close(): Promise<void> {
    this.#stopGc?.();
    this.#stopGc = undefined;
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
