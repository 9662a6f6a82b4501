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
  buildFlow,
  buildL7Flow,
  eventVerdict,
  type Flow,
  type FlowEndpoint,
  type L7Input,
} from "./flow.ts";
import { FlowRing, Follower } from "./ring.ts";
import { compileFilter, type FlowFilter } from "./filter.ts";
import { registerMonitorMetrics } from "./metrics.ts";

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

interface FlowSub {
  follower: Follower<Flow>;
  match: (f: Flow) => boolean;
}

interface EventSub {
  follower: Follower<PacketEvent>;
  types: Set<string> | undefined;
}

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
    for (const e of this.#o.endpoints()) {
      this.#byId.set(e.id, e);
      if (e.ipv4) this.#byIp.set(e.ipv4, e);
      if (e.ipv6) this.#byIp.set(e.ipv6, e);
    }
  }

  #endpoint(identity: number, ep: EndpointRecord | undefined): FlowEndpoint {
    const labels = this.#o.engine.identity(identity)?.labels ?? ep?.identityLabels ?? [];
    if (!ep) return { identity, labels };
    return { ID: ep.id, identity, namespace: ep.namespace, labels, pod_name: ep.name };
  }

  /** One kernel event → raw followers, a flow, the ring, flow followers and counters. */
  ingest(e: PacketEvent, now = new Date()): void {
    for (const s of this.#eventSubs) {
      if ((!s.types || s.types.has(e.type)) && !s.follower.offer(e)) this.#slowLost++;
    }
    this.#index(false);
    let self = this.#byId.get(e.epId);
    if (!self && e.epId !== 0) {
      this.#index(true);
      self = this.#byId.get(e.epId);
    }
    const ip = parsePacket(e.data).IP;
    const other = ip
      ? this.#byIp.get(e.direction === "egress" ? ip.destination : ip.source)
      : undefined;
    const src = e.direction === "egress" ? self : other;
    const dst = e.direction === "egress" ? other : self;
    const audit = e.verdict === "audit";
    const flow = buildFlow(e, {
      nodeName: this.#o.nodeName,
      now,
      source: this.#endpoint(e.srcIdentity, src),
      destination: this.#endpoint(e.dstIdentity, dst),
      policy: this.attribution.of(e, self, audit),
    });
    this.ring.push(flow);
    bump(this.counters.processed, `${e.type}/${flow.verdict}`);
    if (e.type === "policy-verdict") {
      bump(this.counters.verdicts, `${e.direction}/${e.match}/${e.verdict}`);
    }
    for (const s of this.#flowSubs) {
      if (s.match(flow) && !s.follower.offer(flow)) this.#slowLost++;
    }
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
    this.ring.push(flow);
    bump(this.counters.processed, `l7/${flow.verdict}`);
    for (const s of this.#flowSubs) {
      if (s.match(flow) && !s.follower.offer(flow)) this.#slowLost++;
    }
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
    this.#flowSubs.add({ follower, match: filter ? compileFilter(filter) : () => true });
    return follower;
  }

  /** A live reader of raw events (of these types); close it with unfollow(). */
  followEvents(types?: string[], limit = FOLLOWER_QUEUE): Follower<PacketEvent> {
    const follower = new Follower<PacketEvent>(limit);
    this.#eventSubs.add({ follower, types: types?.length ? new Set(types) : undefined });
    return follower;
  }

  unfollow(f: Follower<Flow> | Follower<PacketEvent>): void {
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
