// The agent's monitor: the one reader of the kernel's events (through datapath/events.ts) turns
// each event into a flow with both sides' identity, labels, namespace and pod and the policy that
// decided (attribution.ts), keeps the last `--flow-buffer-size` flows (ring.ts), and hands flows
// and raw events to live followers without ever waiting for them. Lost events are counted by
// where they were lost (perf buffer overruns, slow followers) and reported by stats(), metrics
// and every query. It decides no verdict: the kernel did, the engine names the rule.

import type { PolicyEngine } from "@cilia/policy-wasm";
import { EventReader, type PacketEvent } from "../datapath/events.ts";
import type { EndpointRecord } from "../endpoint/spec.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import { Attribution } from "./attribution.ts";
import { parsePacket } from "./_packet.ts";
import {
  buildDnsFlow,
  buildFlow,
  buildL7Flow,
  type DnsInput,
  eventVerdict,
  type Flow,
  type FlowEndpoint,
  type L7Input,
} from "./flow.ts";
import { FlowRing, Follower } from "./ring.ts";
import { compileFilter, type FlowFilter } from "./filter.ts";
import { registerMonitorMetrics } from "./metrics.ts";
import { flowNdjson } from "./wire.ts";

export const DEFAULT_FLOW_BUFFER_SIZE = 4095;
/** How far a live follower may fall behind before it loses flows. */
export const FOLLOWER_QUEUE = 16_384;

export interface MonitorOptions {
  engine: PolicyEngine;
  endpoints: () => EndpointRecord[];
  nodeName: string;
  bufferSize?: number;
  log: Logger;
  metrics?: Metrics;
}

export interface MonitorStats {
  /** Whether the monitor reads the kernel's events (false: no datapath, or it failed). */
  reading: boolean;
  error?: string;
  buffer: { size: number; capacity: number; seen: number; overwritten: number };
  lost: { perf: number; slowReaders: number; total: number };
  followers: number;
}

export interface FlowQuery {
  filter?: FlowFilter;
  /** The last N matching flows (default: all held). */
  last?: number;
  /** Only flows at or after this time. */
  since?: Date;
}

/** Counters the metrics read (plain numbers: the hot path must not format labels). */
export interface MonitorCounters {
  /** `${type}/${verdict}` → flows. */
  processed: Map<string, number>;
  /** `${direction}/${match}/${action}` → policy-verdict events. */
  verdicts: Map<string, number>;
}

type FlowSub =
  | { lines: false; follower: Follower<Flow>; match: (f: Flow) => boolean }
  | { lines: true; follower: Follower<string>; match: (f: Flow) => boolean };

interface EventSub {
  follower: Follower<PacketEvent>;
  types: Set<string> | undefined;
}

const matchAll = () => true;
const matcher = (filter: FlowFilter | undefined) =>
  filter && (filter.include.length > 0 || filter.exclude.length > 0)
    ? compileFilter(filter)
    : matchAll;

const bump = (m: Map<string, number>, k: string, by = 1) => m.set(k, (m.get(k) ?? 0) + by);

export class Monitor {
  readonly ring: FlowRing<Flow>;
  readonly counters: MonitorCounters = { processed: new Map(), verdicts: new Map() };
  readonly #o: MonitorOptions;
  /** Rule cookies → policies (also for `cilia bpf policy get`). */
  readonly attribution: Attribution;
  readonly #flowSubs = new Set<FlowSub>();
  readonly #eventSubs = new Set<EventSub>();
  #reader: EventReader | undefined;
  #error: string | undefined;
  #perfLost = 0;
  #slowLost = 0;
  #byId = new Map<number, EndpointRecord>();
  #byIp = new Map<string, EndpointRecord>();
  #indexedAt = -Infinity;
  /** `${identity}/${endpoint id}` → the side of a flow (shared by flows; rebuilt with the index). */
  #sides = new Map<string, FlowEndpoint>();
  #sidesSpec: unknown;
  /** The last second's `time` text, reused by the events of the same millisecond. */
  #timeMs = -1;
  #timeText = "";

  constructor(o: MonitorOptions) {
    this.#o = o;
    this.ring = new FlowRing(o.bufferSize ?? DEFAULT_FLOW_BUFFER_SIZE);
    this.attribution = new Attribution(o.engine);
    if (o.metrics) registerMonitorMetrics(o.metrics, this);
  }

  /** Starts reading the pinned perf event array; a failure is logged and shown in stats. */
  start(eventsMap: string): void {
    try {
      this.#reader = new EventReader(eventsMap, {
        onEvent: (e) => this.ingest(e),
        onLost: (_cpu, count) => this.#onPerfLost(count),
      });
    } catch (err) {
      this.#error = err instanceof Error ? err.message : String(err);
      this.#o.log.error("cannot read datapath events: flows are not recorded", {
        error: this.#error,
      });
    }
  }

  #onPerfLost(count: number): void {
    this.#perfLost += count;
    for (const s of [...this.#eventSubs, ...this.#flowSubs]) {
      s.follower.reportLost("PERF_EVENT_RING_BUFFER", count);
    }
  }

  #index(force: boolean): void {
    const now = performance.now();
    if (now - this.#indexedAt < (force ? 100 : 1000)) return;
    this.#indexedAt = now;
    this.#byId.clear();
    this.#byIp.clear();
    this.#sides.clear();
    for (const e of this.#o.endpoints()) {
      this.#byId.set(e.id, e);
      if (e.ipv4) this.#byIp.set(e.ipv4, e);
      if (e.ipv6) this.#byIp.set(e.ipv6, e);
    }
  }

  /** A flow's side; one object per (identity, endpoint), shared by flows (never mutated). */
  #endpoint(identity: number, ep: EndpointRecord | undefined): FlowEndpoint {
    const spec = this.#o.engine.spec;
    if (spec !== this.#sidesSpec) {
      this.#sidesSpec = spec;
      this.#sides.clear();
    }
    const key = `${identity}/${ep?.id ?? ""}`;
    let side = this.#sides.get(key);
    if (side) return side;
    const labels = this.#o.engine.identity(identity)?.labels ?? ep?.identityLabels ?? [];
    side = ep
      ? { ID: ep.id, identity, namespace: ep.namespace, labels, pod_name: ep.name }
      : { identity, labels };
    this.#sides.set(key, side);
    return side;
  }

  /** Now as an ISO time (one Date per millisecond, not per event). */
  #now(): string {
    const ms = Date.now();
    if (ms !== this.#timeMs) {
      this.#timeMs = ms;
      this.#timeText = new Date(ms).toISOString();
    }
    return this.#timeText;
  }

  /** A flow to the ring and the followers that want it; serialised at most once, if wanted. */
  #publish(flow: Flow): void {
    this.ring.push(flow);
    let line: string | undefined;
    for (const s of this.#flowSubs) {
      if (!s.match(flow)) continue;
      const ok = !s.lines
        ? s.follower.offer(flow)
        : s.follower.hasRoom
        ? s.follower.offer(line ??= flowNdjson(flow))
        : s.follower.offer("");
      if (!ok) this.#slowLost++;
    }
  }

  /** One kernel event → raw followers, a flow, the ring, flow followers and counters. */
  ingest(e: PacketEvent, now?: Date): void {
    for (const s of this.#eventSubs) {
      if ((!s.types || s.types.has(e.type)) && !s.follower.offer(e)) this.#slowLost++;
    }
    this.#index(false);
    let self = this.#byId.get(e.epId);
    if (!self && e.epId !== 0) {
      this.#index(true);
      self = this.#byId.get(e.epId);
    }
    const packet = parsePacket(e.data);
    const ip = packet.IP;
    const other = ip
      ? this.#byIp.get(e.direction === "egress" ? ip.destination : ip.source)
      : undefined;
    const src = e.direction === "egress" ? self : other;
    const dst = e.direction === "egress" ? other : self;
    const audit = e.verdict === "audit";
    const flow = buildFlow(e, {
      nodeName: this.#o.nodeName,
      now: now ?? this.#now(),
      source: this.#endpoint(e.srcIdentity, src),
      destination: this.#endpoint(e.dstIdentity, dst),
      policy: this.attribution.of(e, self, audit),
      packet,
    });
    bump(this.counters.processed, `${e.type}/${flow.verdict}`);
    if (e.type === "policy-verdict") {
      bump(this.counters.verdicts, `${e.direction}/${e.match}/${e.verdict}`);
    }
    this.#publish(flow);
  }

  /** One query the DNS proxy judged → an L7 DNS flow in the ring and to flow followers. */
  ingestDns(
    r: DnsInput & { epId: number; srcIdentity: number; dstIdentity: number; cookie: number },
    now = new Date(),
  ): void {
    this.#index(false);
    const policy = this.attribution.byCookie(r.cookie, false);
    const flow = buildDnsFlow(r, {
      nodeName: this.#o.nodeName,
      now,
      source: this.#endpoint(r.srcIdentity, this.#byId.get(r.epId)),
      destination: this.#endpoint(r.dstIdentity, this.#byIp.get(r.server.ip)),
      policy,
    });
    bump(this.counters.processed, `l7/${flow.verdict}`);
    this.#publish(flow);
  }

  /** One request the L7 proxy judged → an L7 flow in the ring and to flow followers. */
  ingestL7(
    r: L7Input & { epId: number; srcIdentity: number; dstIdentity: number; cookie: number },
    now = new Date(),
  ): void {
    this.#index(false);
    const self = this.#byId.get(r.epId);
    const other = this.#byIp.get(r.direction === "egress" ? r.server.ip : r.client.ip);
    const src = r.direction === "egress" ? self : other;
    const dst = r.direction === "egress" ? other : self;
    const policy = this.attribution.byCookie(r.cookie, false);
    const flow = buildL7Flow(r, {
      nodeName: this.#o.nodeName,
      now,
      source: this.#endpoint(r.srcIdentity, src),
      destination: this.#endpoint(r.dstIdentity, dst),
      policy,
    });
    bump(this.counters.processed, `l7/${flow.verdict}`);
    this.#publish(flow);
  }

  /** Held flows that match, oldest first, with the counts a reader needs to trust them. */
  query(q: FlowQuery = {}): { flows: Flow[]; stats: MonitorStats } {
    const match = q.filter ? compileFilter(q.filter) : () => true;
    const since = q.since?.toISOString();
    let flows = this.ring.toArray().filter((f) => (!since || f.time >= since) && match(f));
    if (q.last !== undefined) flows = flows.slice(Math.max(0, flows.length - q.last));
    return { flows, stats: this.stats() };
  }

  /** A live reader of flows that match; close it with unfollow(). */
  follow(filter?: FlowFilter, limit = FOLLOWER_QUEUE): Follower<Flow> {
    const follower = new Follower<Flow>(limit);
    this.#flowSubs.add({ lines: false, follower, match: matcher(filter) });
    return follower;
  }

  /** Like follow(), as NDJSON lines (`{"flow": …}`), each serialised once for all followers. */
  followLines(filter?: FlowFilter, limit = FOLLOWER_QUEUE): Follower<string> {
    const follower = new Follower<string>(limit);
    this.#flowSubs.add({ lines: true, follower, match: matcher(filter) });
    return follower;
  }

  /** A live reader of raw events (of these types); close it with unfollow(). */
  followEvents(types?: string[], limit = FOLLOWER_QUEUE): Follower<PacketEvent> {
    const follower = new Follower<PacketEvent>(limit);
    this.#eventSubs.add({ follower, types: types?.length ? new Set(types) : undefined });
    return follower;
  }

  unfollow(f: Follower<Flow> | Follower<string> | Follower<PacketEvent>): void {
    f.close();
    for (const s of this.#flowSubs) if (s.follower === f) this.#flowSubs.delete(s);
    for (const s of this.#eventSubs) if (s.follower === f) this.#eventSubs.delete(s);
  }

  stats(): MonitorStats {
    const slowReaders = this.#slowLost;
    return {
      reading: this.#reader !== undefined,
      ...(this.#error ? { error: this.#error } : {}),
      buffer: {
        size: this.ring.size,
        capacity: this.ring.capacity,
        seen: this.ring.seen,
        overwritten: this.ring.overwritten,
      },
      lost: { perf: this.#perfLost, slowReaders, total: this.#perfLost + slowReaders },
      followers: this.#flowSubs.size + this.#eventSubs.size,
    };
  }

  close(): void {
    this.#reader?.close();
    this.#reader = undefined;
    for (const s of [...this.#flowSubs, ...this.#eventSubs]) s.follower.close();
    this.#flowSubs.clear();
    this.#eventSubs.clear();
  }
}

export { eventVerdict };
