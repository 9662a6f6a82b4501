// The agent's monitor: the one reader of the kernel's events (through datapath/events.ts) turns
// each event into a flow with both sides' identity, labels, namespace and pod and the policy that
// decided (attribution.ts), keeps the last `--flow-buffer-size` flows (record_ring.ts), and hands
// flows and raw events to live followers (followers.ts) without ever waiting for them. Kernel
// records take a path with no object per event (ingestRecord: contexts cached by contexts.ts,
// lines written from the bytes by fast_lines.ts) unless a reader needs objects. Lost events are
// counted by where they were lost (a full kernel event ring, slow followers) and reported by
// stats(), metrics and every query. It decides no verdict: the kernel did, the engine names the
// rule.
//
// Its parts: kernel events → flows (_kernel_flows.ts), the proxies' records → L7 and DNS flows
// (_l7_flows.ts), and what both share (_parts.ts).

import type { PolicyEngine } from "@cilia/policy-wasm";
import { EventReader, type PacketEvent } from "../datapath/events.ts";
import type { EndpointRecord } from "../endpoint/spec.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import { Attribution } from "./attribution.ts";
import { type DnsInput, eventVerdict, type Flow, type L7Input } from "./flow.ts";
import type { Follower } from "./ring.ts";
import { RecordRing } from "./record_ring.ts";
import { compileFilter, type FlowFilter } from "./filter.ts";
import { registerMonitorMetrics } from "./metrics.ts";
import { EndpointIndex } from "./endpoint_index.ts";
import { ServiceIndex, type ServiceRecord } from "./service_index.ts";
import {
  type AnyFollower,
  FOLLOWER_BYTES,
  FOLLOWER_QUEUE,
  Followers,
  type LineFollower,
} from "./followers.ts";
import type { MonitorCounters } from "./_parts.ts";
import { KernelFlows } from "./_kernel_flows.ts";
import { type DnsSideInput, L7Flows, type L7Records } from "./_l7_flows.ts";

export { FOLLOWER_BYTES, FOLLOWER_QUEUE };
export type { MonitorCounters };
export type { L7ContextInput, L7Records } from "./_l7_flows.ts";
export const DEFAULT_FLOW_BUFFER_SIZE = 4095;

export interface MonitorOptions {
  engine: PolicyEngine;
  endpoints: () => EndpointRecord[];
  /** One endpoint by id: a new endpoint's first event looks it up alone, not every endpoint. */
  endpoint?: (id: number) => EndpointRecord | undefined;
  /** The services at start; servicesChanged() hands over every later change. */
  services?: readonly ServiceRecord[];
  /** The node's NodePort addresses: flows of the underlay name NodePort frontends with them. */
  nodeAddresses?: readonly string[];
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

export class Monitor {
  readonly ring: RecordRing;
  readonly counters: MonitorCounters = { processed: new Map(), verdicts: new Map() };
  readonly #o: MonitorOptions;
  /** Rule cookies → policies (also for `cilia bpf policy get`). */
  readonly attribution: Attribution;
  readonly #followers = new Followers();
  readonly #kernel: KernelFlows;
  readonly #l7: L7Flows;
  readonly #services: ServiceIndex;
  #reader: EventReader | undefined;
  #error: string | undefined;
  #perfLost = 0;

  constructor(o: MonitorOptions) {
    this.#o = o;
    this.ring = new RecordRing(o.bufferSize ?? DEFAULT_FLOW_BUFFER_SIZE, o.nodeName);
    this.attribution = new Attribution(o.engine);
    this.#services = new ServiceIndex(
      o.services,
      o.nodeAddresses ? { nodeAddresses: o.nodeAddresses } : {},
    );
    const parts = {
      engine: o.engine,
      nodeName: o.nodeName,
      ring: this.ring,
      followers: this.#followers,
      counters: this.counters,
      endpoints: new EndpointIndex(
        o.endpoints,
        o.engine,
        o.endpoint ? { endpoint: o.endpoint } : {},
      ),
      services: this.#services,
      attribution: this.attribution,
    };
    this.#kernel = new KernelFlows(parts);
    this.#l7 = new L7Flows(parts);
    if (o.metrics) registerMonitorMetrics(o.metrics, this);
  }

  /** Starts reading the pinned event ring buffer; a failure is logged and shown in stats. */
  start(eventsMap: string): void {
    try {
      this.#reader = new EventReader(eventsMap, {
        onRecord: (view, at, length) => this.#kernel.ingestRecord(view, at, length),
        onBatch: () => {
          this.#kernel.pollDone(); // the next poll's first record reads the clock again
          this.#followers.linesWritten();
        },
        onLost: (_cpu, count) => {
          this.#perfLost += count;
          this.#followers.reportLost("PERF_EVENT_RING_BUFFER", count);
        },
      });
    } catch (err) {
      this.#error = err instanceof Error ? err.message : String(err);
      this.#o.log.error("cannot read datapath events: flows are not recorded", {
        error: this.#error,
      });
    }
  }

  /** The agent's services changed: events name them by these records from now on. */
  servicesChanged(services: readonly ServiceRecord[]): void {
    this.#services.update(services);
  }

  /**
   * One ring-buffer record (in place: valid during the call only) → the ring, followers and
   * counters, with no object per event unless a reader needs one (_kernel_flows.ts).
   */
  ingestRecord(view: DataView, at: number, length: number): void {
    this.#kernel.ingestRecord(view, at, length);
  }

  /** One kernel event → raw followers, a flow, the ring, flow followers and counters. */
  ingest(e: PacketEvent, now?: Date): void {
    this.#kernel.ingest(e, now);
  }

  /**
   * One query the DNS proxy judged → an L7 DNS flow in the ring and to flow followers; its time
   * is `r.at` (when the answer went out; the proxy hands records over in batches) if given.
   */
  ingestDns(
    r: DnsInput & {
      epId: number;
      srcIdentity: number;
      dstIdentity: number;
      cookie: number;
      at?: number;
    },
    now?: Date,
  ): void {
    this.#l7.dns(r, now);
  }

  /**
   * A batch of DNS records, as ingestDns takes each (the same flows, counts and followers): both
   * sides and the policy are looked up now (once for a run of records alike), a flow object is
   * made now only when someone follows flows, else when a query first reads it.
   */
  ingestDnsBatch(rs: readonly (DnsInput & DnsSideInput & { at: number })[]): void {
    this.#l7.dnsBatch(rs);
  }

  /** One request the L7 proxy judged → an L7 flow in the ring and to flow followers. */
  ingestL7(
    r: L7Input & { epId: number; srcIdentity: number; dstIdentity: number; cookie: number },
    now?: Date,
  ): void {
    this.#l7.l7(r, now);
  }

  /**
   * A batch of L7 records, as ingestL7 takes each (the same flows, counts and followers): both
   * sides and the policy are looked up once per context, now; a flow object is made now only
   * when someone follows flows, else when a query first reads it (the ring keeps a maker).
   */
  ingestL7Batch(b: L7Records): void {
    this.#l7.l7Batch(b);
  }

  /** Held flows that match, oldest first, with the counts a reader needs to trust them. */
  query(q: FlowQuery = {}): { flows: Flow[]; stats: MonitorStats } {
    if (q.last === 0) return { flows: [], stats: this.stats() }; // counts only: no flow built
    const match = q.filter ? compileFilter(q.filter) : () => true;
    const since = q.since?.toISOString();
    let flows = this.ring.toArray().filter((f) => (!since || f.time >= since) && match(f));
    if (q.last !== undefined) flows = flows.slice(Math.max(0, flows.length - q.last));
    return { flows, stats: this.stats() };
  }

  /** A live reader of flows that match (queue: `limit` flows); close it with unfollow(). */
  follow(filter?: FlowFilter, limit = FOLLOWER_QUEUE): Follower<Flow> {
    return this.#followers.follow(filter, limit);
  }

  /**
   * Like follow(), as NDJSON (`{"flow": …}` lines), with a queue of `limitBytes`: without a
   * filter, chunks of many lines (bytes, written once for all such followers); with one, a line
   * (text) per flow.
   */
  followLines(filter?: FlowFilter, limitBytes = FOLLOWER_BYTES): LineFollower {
    return this.#followers.followLines(filter, limitBytes);
  }

  /** A live reader of raw events (of these types); close it with unfollow(). */
  followEvents(types?: string[], limit = FOLLOWER_QUEUE): Follower<PacketEvent> {
    return this.#followers.followEvents(types, limit);
  }

  unfollow(f: AnyFollower): void {
    this.#followers.unfollow(f);
  }

  stats(): MonitorStats {
    const slowReaders = this.#followers.slowLost;
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
      followers: this.#followers.count,
    };
  }

  close(): void {
    this.#reader?.close();
    this.#reader = undefined;
    this.#followers.close();
  }
}

export { eventVerdict };
