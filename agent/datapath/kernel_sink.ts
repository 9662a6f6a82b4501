// The agent's DatapathSink on the real kernel datapath: endpoints become endpoint-map entries
// with the programs attached to their host-side veth, map-state diffs become policy-map writes,
// and ipcache changes ipcache writes. After a restart the pinned maps are reused as they are
// (connections keep flowing): open() notes what the kernel holds, the agent re-applies its
// state, and reconcile() deletes what nobody re-applied. It computes no policy (the engine does).
//
// Write order and failures (fail closed):
// 1. A new endpoint's whole policy is written before its entry and its programs; until both are
//    there its interface carries no entry and the agent keeps the link down.
// 2. A policy write that fails (a full map, a bpftool error) may have written part of the batch:
//    the endpoint is flagged NOT_READY in the endpoint map (the kernel drops all its traffic,
//    reason 203), or, when even that write fails, its entry is deleted (drop 165). Its policy
//    keys are then unknown: the next write dumps them and rewrites the whole policy, deleting
//    what is not in it, and only then clears the flag.
// 3. A thrown error always means "not in force"; nothing is recorded as written before it was.
// 4. After a restart (programs reused, or reloaded and re-attached by Datapath.open), what the
//    kernel holds exactly as the agent wants it (an endpoint's policy keys and values, its entry
//    with both programs attached, ipcache entries) is recorded, not written again, until
//    reconcile(): restoring 1,000 unchanged endpoints runs no process per endpoint. Any
//    difference is written as usual.
import { DROP_REASONS, type IpcacheEntry } from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import type {
  DatapathEndpoint,
  DatapathSink,
  EndpointFlags,
  PolicyChange,
} from "../endpoint/datapath_sink.ts";
import { formatIP, parsePrefix } from "./_addr.ts";
import { collectConntrack } from "./conntrack_gc.ts";
import {
  Datapath,
  type EndpointSnapshot,
  endpointValue,
  type IpcacheUpsert,
  type MapSizes,
  type MetricsRow,
} from "./datapath.ts";
import { type EncodedEntry, keyId } from "./policy_map.ts";
import { attachedPrograms, PROG_FROM_CONTAINER, PROG_TO_CONTAINER, runsProgram } from "./loader.ts";
import { linkNames } from "../sys/links.ts";
import { EndpointPolicyState } from "./policy_state.ts";
import { LB_MAPS, LbState } from "../service/lb_state.ts";
import type { ServiceSpec } from "../service/spec.ts";
import type { RemovedBackend } from "../service/manager.ts";

export interface KernelSinkOptions {
  bpffsRoot: string;
  buildDir: string;
  log: Logger;
  /** How often expired conntrack entries are freed; default 30 s. */
  conntrackGcIntervalMs?: number;
  /**
   * Run tc/ip/bpftool in /run/netns/<netns>: for tests and benches that drive a node from
   * outside it. Unset for the agent, which runs inside its node.
   */
  netns?: string;
  /** max_entries of conntrack, policy and ipcache (the agent's --bpf-*-max flags). */
  mapSizes?: MapSizes;
}

interface Wanted {
  ep: DatapathEndpoint;
  flags: EndpointFlags;
}

const sameBytes = (a: Uint8Array, b: Uint8Array) =>
  a.length === b.length && a.every((x, i) => x === b[i]);

/** "10.0.0.1" → "10.0.0.1/32": one spelling per prefix. */
function canonical(prefix: string): string {
  const p = parsePrefix(prefix);
  return `${formatIP(p.family, p.addr)}/${p.prefixLen}`;
}

export class KernelSink implements DatapathSink {
  readonly datapath: Datapath;
  readonly #log: Logger;
  readonly #wanted = new Map<number, Wanted>();
  /** Endpoints whose entry is in the kernel, with the interface it is keyed by. */
  readonly #inKernel = new Map<number, string>();
  readonly #states = new Map<number, EndpointPolicyState>();
  readonly #ipcache = new Map<string, number>();
  readonly #warnedL7 = new Set<number>();
  /** Endpoints flagged NOT_READY in the kernel (rule 2), with the error that caused it. */
  readonly #notReady = new Map<number, string>();
  /** Endpoints whose policy keys in the kernel may differ from their state (rule 2). */
  readonly #unknown = new Set<number>();
  /** The service maps as written (bpf/lib/lb.h), and one service write at a time. */
  readonly #lb = new LbState();
  #lbRestored = false;
  #lbSerial: Promise<void> = Promise.resolve();
  /** Policy keys the kernel held at open(), by endpoint id, until reconcile(). */
  #stale: Map<number, Uint8Array[]> | undefined;
  /** The values of those keys, by endpoint id, until reconcile() (rule 4). */
  #staleRows: Map<number, EncodedEntry[]> | undefined;
  /** Endpoint entries and attachments the kernel held at open(), until reconcile() (rule 4). */
  #restored: Promise<EndpointSnapshot | undefined> | undefined;
  /** Ipcache entries the kernel held at open(), until reconcile() (rule 4). */
  #restoredIpcache: Map<string, IpcacheUpsert> | undefined;

  private constructor(dp: Datapath, log: Logger, rows: Map<number, EncodedEntry[]>) {
    this.datapath = dp;
    this.#log = log;
    this.#staleRows = rows;
    this.#stale = new Map([...rows].map(([id, r]) => [id, r.map((e) => e.key)]));
  }

  static async open(o: KernelSinkOptions): Promise<KernelSink> {
    const dp = await Datapath.open({
      bpffsRoot: o.bpffsRoot,
      buildDir: o.buildDir,
      conntrackGcIntervalMs: o.conntrackGcIntervalMs ?? 30_000,
      ...(o.netns === undefined ? {} : { netns: o.netns }),
      ...(o.mapSizes === undefined ? {} : { mapSizes: o.mapSizes }),
    });
    try {
      // The two dumps at once (the agent runs its commands in several shells).
      const [rows, ipcache] = await Promise.all([dp.policyRows(), dp.ipcacheEntries()]);
      const sink = new KernelSink(dp, o.log, rows);
      // What the kernel holds now (after a reload, every endpoint is re-attached to the new
      // programs already): endpoints restored unchanged need no write at all (rule 4).
      sink.#restoredIpcache = new Map(ipcache.map((e) => [e.prefix, e]));
      const t0 = performance.now();
      sink.#restored = dp.endpointSnapshot().then((snap) => {
        // The first restored endpoint waits for it: say how long it took.
        o.log.info("kernel endpoint state read", {
          interfaces: snap.ifindex.size,
          ms: Math.round(performance.now() - t0),
        });
        return snap;
      }, (err) => {
        o.log.warn("cannot read the endpoints the kernel holds: restoring rewrites them", {
          error: err,
        });
        return undefined;
      });
      o.log.info(dp.loaded ? "datapath loaded" : "datapath reused from pins", {
        bpffsRoot: o.bpffsRoot,
        programs: dp.pins.progDir,
      });
      return sink;
    } catch (err) {
      await dp.close();
      throw err;
    }
  }

  /**
   * Rule 1: a new endpoint, or one on a new interface: its whole policy (`change.adds`), then
   * its entry and its programs. Keys a previous agent or a failed write left for it are read
   * back and deleted unless the new policy has them.
   */
  async attach(ep: DatapathEndpoint, flags: EndpointFlags, change: PolicyChange): Promise<void> {
    const old = this.#inKernel.get(ep.id);
    if (old !== undefined && old !== ep.ifname) {
      await this.datapath.removeEndpoint(old, ep.id);
      this.#forget(ep.id);
    }
    this.#wanted.set(ep.id, { ep, flags });
    this.#states.set(ep.id, new EndpointPolicyState(ep.id));
    if (ep.ifname === undefined) {
      this.#states.get(ep.id)!.plan(change).commit(); // nothing in the kernel to change
      return;
    }
    if (old === ep.ifname) this.#unknown.add(ep.id); // re-attached: read its keys back
    await this.#write(ep.id, { ...change, deletes: [] }, true);
  }

  /** The flags or addresses of an attached endpoint (NOT_READY stays until it is written). */
  async updateEndpoint(ep: DatapathEndpoint, flags: EndpointFlags): Promise<void> {
    const ifname = this.#inKernel.get(ep.id);
    if (ifname !== undefined && ifname !== ep.ifname) {
      throw new Error(
        `Endpoint ${ep.id} moved from "${ifname}" to "${ep.ifname}": attach it again`,
      );
    }
    this.#wanted.set(ep.id, { ep, flags });
    if (ifname !== undefined) await this.#writeEndpoint({ ep, flags });
  }

  /** What CNI CHECK needs: the entry (ready, this endpoint) and both programs attached. */
  async check(ep: DatapathEndpoint): Promise<string | undefined> {
    if (ep.ifname === undefined) return undefined;
    if (this.#notReady.has(ep.id)) {
      return `Endpoint ${ep.id}'s policy is not written: ${this.#notReady.get(ep.id)}`;
    }
    const index = [...await linkNames(this.datapath.netns)].find(([, n]) => n === ep.ifname)?.[0];
    const entry = (await this.datapath.endpointEntries()).find((e) => e.ifindex === index);
    if (entry === undefined || entry.epId !== ep.id) {
      return `"${ep.ifname}" has no datapath entry for endpoint ${ep.id}`;
    }
    for (const [hook, prog] of [["ingress", PROG_FROM_CONTAINER], ["egress", PROG_TO_CONTAINER]]) {
      const progs = await attachedPrograms(
        ep.ifname,
        hook as "ingress" | "egress",
        this.datapath.netns,
      );
      if (!progs.some((p) => runsProgram(p, prog!))) {
        return `"${prog}" is not attached at ${hook} of "${ep.ifname}"`;
      }
    }
    return undefined;
  }

  #forget(id: number): void {
    this.#inKernel.delete(id);
    this.#states.delete(id);
    this.#notReady.delete(id);
    this.#unknown.delete(id);
    this.#warnedL7.delete(id);
  }

  async removeEndpoint(ep: DatapathEndpoint): Promise<void> {
    const ifname = this.#inKernel.get(ep.id);
    if (ep.ifname !== undefined) (await this.#restored)?.ifindex.delete(ep.ifname);
    this.#wanted.delete(ep.id);
    // Its keys are known unless a write failed or a previous agent left some (rule 2).
    const known = this.#unknown.has(ep.id) || this.#stale?.has(ep.id)
      ? undefined
      : this.#states.get(ep.id)?.keys();
    if (ifname !== undefined) await this.datapath.removeEndpoint(ifname, ep.id, known);
    else if (this.#unknown.has(ep.id)) {
      // A first write that failed midway: delete the keys it left.
      await this.datapath.writePolicyKeys([], await this.#keysOf(ep.id));
    }
    this.#forget(ep.id);
  }

  /** Endpoints the kernel drops all traffic of, because their policy could not be written. */
  notReady(): { endpoint: number; error: string }[] {
    return [...this.#notReady].map(([endpoint, error]) => ({ endpoint, error }));
  }

  /** A diff of an attached endpoint's policy (rule 2 on failure). */
  async applyPolicy(endpointId: number, change: PolicyChange): Promise<void> {
    const state = this.#states.get(endpointId);
    const wanted = this.#wanted.get(endpointId);
    if (state === undefined || wanted === undefined) {
      throw new Error(`Endpoint ${endpointId} is not attached: attach() it first`);
    }
    if (wanted.ep.ifname === undefined) {
      state.plan(change).commit(); // no interface: nothing in the kernel to change
      return;
    }
    await this.#write(endpointId, change, false);
  }

  /**
   * Writes a policy change. After a failure (or a restart) the kernel's keys are read back, not
   * assumed (rule 2); the entry and programs follow a first write and clear NOT_READY (rule 1).
   */
  async #write(endpointId: number, change: PolicyChange, first: boolean): Promise<void> {
    this.#warnL7(endpointId, change);
    const state = this.#states.get(endpointId)!;
    const wanted = this.#wanted.get(endpointId)!;
    const stale = this.#unknown.has(endpointId)
      ? await this.#keysOf(endpointId)
      : this.#stale?.get(endpointId);
    const plan = !first && stale === undefined
      ? state.plan(change)
      : state.plan(change, { full: true, stale: stale ?? [] });
    try {
      if (!this.#holdsAlready(endpointId, first, plan)) {
        await this.datapath.writePolicyKeys(plan.updates, plan.deletes);
      }
      if (first || this.#notReady.has(endpointId)) {
        await this.#writeEndpoint(wanted, { ready: true });
      }
    } catch (err) {
      this.#unknown.add(endpointId);
      await this.#lockDown(endpointId, err);
      throw err;
    }
    plan.commit();
    this.#stale?.delete(endpointId);
    this.#staleRows?.delete(endpointId);
    this.#unknown.delete(endpointId);
    this.#notReady.delete(endpointId);
    this.#inKernel.set(endpointId, wanted.ep.ifname!);
  }

  /**
   * Rule 4: a restored endpoint's first full write that equals, key for key and value for value,
   * what the kernel held at open() is not written again.
   */
  #holdsAlready(
    endpointId: number,
    first: boolean,
    plan: { updates: EncodedEntry[]; deletes: Uint8Array[] },
  ): boolean {
    const rows = first && !this.#unknown.has(endpointId)
      ? this.#staleRows?.get(endpointId)
      : undefined;
    if (rows === undefined || plan.deletes.length > 0 || plan.updates.length !== rows.length) {
      return false;
    }
    const held = new Map(rows.map((r) => [keyId(r.key), r.value]));
    return plan.updates.every((u) => {
      const v = held.get(keyId(u.key));
      return v !== undefined && sameBytes(v, u.value);
    });
  }

  /**
   * Rule 2: the endpoint's traffic is dropped until its policy is written. An endpoint that is
   * not in the kernel yet has no entry and no programs (its link stays down): nothing to do,
   * unless a previous agent left an entry for its interface (a restart), which is flagged too.
   */
  async #lockDown(endpointId: number, cause: unknown): Promise<void> {
    const wanted = this.#wanted.get(endpointId);
    const error = cause instanceof Error ? cause.message : String(cause);
    const ifname = this.#inKernel.get(endpointId) ?? wanted?.ep.ifname;
    if (wanted === undefined || ifname === undefined) return;
    const present = this.#inKernel.has(endpointId) ||
      (await this.datapath.endpointEntries().catch(() => [])).some((e) => e.epId === endpointId);
    if (!present) return;
    this.#notReady.set(endpointId, error);
    try {
      await this.#writeEndpoint(wanted, { ready: false });
      this.#log.error("endpoint policy not written: the kernel drops its traffic", {
        endpoint: endpointId,
        dropReason: `203 (${DROP_REASONS.get(203)?.[1]})`,
        error,
      });
    } catch (err) {
      this.#log.error("cannot flag endpoint not ready: deleting its entry instead", {
        endpoint: endpointId,
        error: err,
      });
      const index = [...await linkNames(this.datapath.netns)].find(([, n]) => n === ifname)?.[0];
      if (index !== undefined) {
        await this.datapath.removeEndpointEntry(index).catch((e) =>
          this.#log.error("cannot delete endpoint entry", { endpoint: endpointId, error: e })
        );
      }
    }
  }

  /** The policy keys the kernel holds for an endpoint, read from the map. */
  async #keysOf(endpointId: number): Promise<Uint8Array[]> {
    return (await this.datapath.policyKeys()).get(endpointId) ?? [];
  }

  /** Redirects without a proxy drop in the kernel (fail closed): say so, once per endpoint. */
  #warnL7(endpointId: number, change: PolicyChange): void {
    const l7 = change.adds.filter((e) => e.verdict === "redirect" && !e.proxyPort);
    if (l7.length === 0 || this.#warnedL7.has(endpointId)) return;
    this.#warnedL7.add(endpointId);
    this.#log.warn(
      "L7 rules apply, but this node has no L7 proxy yet: the kernel drops that traffic",
      {
        endpoint: endpointId,
        ports: [
          ...new Set(l7.map((e) => `${e.portLo}${e.portHi !== e.portLo ? "-" + e.portHi : ""}`)),
        ],
        dropReason: `178 (${DROP_REASONS.get(178)?.[1]})`,
        hint:
          "cilia never skips L7 rules silently; use plain L3/L4 rules for these peers until the proxy lands",
      },
    );
  }

  /** Entries of other nodes' pods and addresses carry their node's IP (`tunnelEndpoint`). */
  async updateIpcache(upserts: IpcacheUpsert[], deletes: IpcacheEntry[]): Promise<void> {
    let up = upserts.map((u) => ({
      prefix: canonical(u.prefix),
      identity: u.identity,
      ...(u.tunnelEndpoint !== undefined ? { tunnelEndpoint: u.tunnelEndpoint } : {}),
    }));
    const upserted = new Set(up.map((u) => u.prefix));
    const held = this.#restoredIpcache;
    if (held) {
      // Rule 4: what the kernel already holds is recorded, not written again.
      up = up.filter((u) => {
        const k = held.get(u.prefix);
        if (k?.identity !== u.identity || k.tunnelEndpoint !== u.tunnelEndpoint) return true;
        this.#ipcache.set(u.prefix, u.identity);
        return false;
      });
    }
    const del = deletes.map((d) => ({ prefix: canonical(d.prefix), identity: d.identity }))
      .filter((d) => !upserted.has(d.prefix) && this.#ipcache.get(d.prefix) === d.identity);
    await this.datapath.updateIpcache(up, del.map((d) => d.prefix));
    for (const d of del) this.#ipcache.delete(d.prefix);
    for (const u of up) this.#ipcache.set(u.prefix, u.identity);
  }

  /**
   * Deletes what the kernel held before this agent started and nobody re-applied: endpoint
   * entries, policy keys and conntrack entries of endpoints that no longer exist, and ipcache
   * prefixes. Call once, after the agent restored its state.
   */
  async reconcile(): Promise<{ endpoints: number; policyKeys: number; prefixes: number }> {
    const dp = this.datapath;
    const [names, entries] = await Promise.all([linkNames(dp.netns), dp.endpointEntries()]);
    let endpoints = 0;
    for (const e of entries) {
      if (this.#inKernel.get(e.epId) === names.get(e.ifindex)) continue;
      await dp.removeEndpointEntry(e.ifindex, names.get(e.ifindex));
      endpoints++;
    }
    const staleKeys = [...(this.#stale ?? new Map<number, Uint8Array[]>())]
      .filter(([id]) => !this.#inKernel.has(id));
    const keys = staleKeys.flatMap(([, k]) => k);
    await dp.writePolicyKeys([], keys);
    const gone = new Set(staleKeys.map(([id]) => id));
    if (gone.size > 0) {
      collectConntrack(dp.pins.maps.cilia_ct, { epIds: gone });
    }
    this.#stale = undefined;
    this.#staleRows = undefined;
    this.#restored = undefined;
    this.#restoredIpcache = undefined;
    const prefixes = (await dp.ipcacheEntries()).filter((e) =>
      this.#ipcache.get(e.prefix) !== e.identity
    ).map((e) => e.prefix);
    await dp.updateIpcache([], prefixes);
    const result = { endpoints, policyKeys: keys.length, prefixes: prefixes.length };
    this.#log.info("datapath reconciled", { removed: result });
    return result;
  }

  /**
   * The service maps (bpf/lib/lb.h) become `services`: only the difference is written
   * (lb_state.ts plans it). The first call reads back what a previous agent left, so a restart
   * keeps backend ids (conntrack holds them) and deletes services nobody re-applied.
   */
  applyServices(
    services: readonly ServiceSpec[],
    opts: { nodePortAddresses?: readonly string[] } = {},
  ): Promise<void> {
    return this.#lbSerial = this.#lbSerial.catch(() => {}).then(async () => {
      await this.#restoreLb();
      const plan = this.#lb.plan(services, opts);
      for (const w of plan.writes) await this.datapath.writeMap(w.map, w.updates, w.deletes);
      plan.commit();
    });
  }

  /**
   * The (frontend, backend) pairs the service maps held before this sink's first write (what a
   * previous agent left; LbState.heldPairs), for socket termination after a restart. Call it
   * before the first applyServices(); later it returns what was written since.
   */
  heldBackendPairs(): Promise<RemovedBackend[]> {
    const run = this.#lbSerial.catch(() => {}).then(async () => {
      await this.#restoreLb();
      return this.#lb.heldPairs();
    });
    this.#lbSerial = run.then(() => {}, () => {});
    return run;
  }

  /** The first service write (or heldBackendPairs) reads back what a previous agent left. */
  async #restoreLb(): Promise<void> {
    if (this.#lbRestored) return;
    for (const m of LB_MAPS) this.#lb.restore(m, await this.datapath.dumpMap(m));
    this.#lbRestored = true;
  }

  readMetrics(): Promise<MetricsRow[]> {
    return this.datapath.readMetrics();
  }

  /** Writes the entry (flags, addresses) and attaches the programs; NOT_READY unless `ready`. */
  async #writeEndpoint(
    { ep, flags }: Wanted,
    o: { ready?: boolean } = {},
  ): Promise<void> {
    const ipv4 = ep.ips.find((ip) => !ip.includes(":"));
    const ipv6 = ep.ips.find((ip) => ip.includes(":"));
    const entry = {
      ifname: ep.ifname!,
      epId: ep.id,
      identity: ep.identity,
      ...(ipv4 ? { ipv4 } : {}),
      ...(ipv6 ? { ipv6 } : {}),
      ...(ep.mac ? { mac: ep.mac } : {}),
      ...(ep.hostMac ? { hostMac: ep.hostMac } : {}),
      ingressDefaultDeny: flags.defaultDeny.ingress,
      egressDefaultDeny: flags.defaultDeny.egress,
      enforcement: flags.enforcement,
      notReady: o.ready === undefined ? this.#notReady.has(ep.id) : !o.ready,
    };
    // Rule 4: the same entry, with both programs attached, from before a restart stays as it is.
    const held = await this.#restored;
    const ifindex = held?.ifindex.get(ep.ifname!);
    held?.ifindex.delete(ep.ifname!); // only the first write after the restart may be skipped
    const value = ifindex === undefined ? undefined : held?.values.get(ifindex);
    if (
      ifindex !== undefined && value !== undefined && held!.attached.has(ifindex) &&
      sameBytes(value, endpointValue(entry))
    ) return;
    await this.datapath.upsertEndpoint(entry);
  }

  /** Stops background work; pins, maps and attached programs stay for the next agent. */
  async close(): Promise<void> {
    // The snapshot open() started may still be reading (bpftool children): wait for it, or a
    // sink closed right after open() would leave those processes running (it never rejects).
    await this.#restored;
    await this.datapath.close();
  }
}

/** `cilia_drop_count_total{reason,direction}` and `cilia_forward_count_total{direction}`, read
 * from the datapath's per-CPU counters on every scrape. */
export function registerDatapathMetrics(m: Metrics, sink: KernelSink): void {
  const drops = m.counter(
    "cilia_drop_count_total",
    "packets dropped by the datapath, by reason and direction",
  );
  const forwarded = m.counter(
    "cilia_forward_count_total",
    "packets passed by the datapath, by direction",
  );
  const pressure = m.labeledGauge(
    "cilia_bpf_map_pressure",
    "fill ratio (entries / max_entries) of the sized kernel maps, by map",
  );
  m.onScrape(() => {
    for (const f of sink.datapath.mapFill()) pressure.set({ map: f.map }, f.pressure);
  });
  m.onScrape(async () => {
    for (const r of await sink.readMetrics()) {
      const direction = r.dir.toUpperCase();
      if (r.reason === 0) forwarded.set({ direction }, Number(r.packets));
      else {
        const reason = DROP_REASONS.get(r.reason)?.[1] ?? `reason ${r.reason}`;
        drops.set({ reason, direction }, Number(r.packets));
      }
    }
  });
}
