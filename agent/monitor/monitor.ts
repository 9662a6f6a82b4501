// The agent's monitor: the one reader of the kernel's events (through datapath/events.ts) turns
// each event into a flow with both sides' identity, labels, namespace and pod and the policy that
// decided (attribution.ts), keeps the last `--flow-buffer-size` flows (record_ring.ts), and hands
// flows and raw events to live followers (followers.ts) without ever waiting for them. Kernel
// records take a path with no object per event (ingestRecord: contexts cached by contexts.ts,
// lines written from the bytes by fast_lines.ts) unless a reader needs objects. Lost events are
// counted by where they were lost (a full kernel event ring, slow followers) and reported by
// stats(), metrics and every query. It decides no verdict: the kernel did, the engine names the
// rule.

import type { PolicyEngine } from "@cilia/policy-wasm";
import { decodeEventAt, EventReader, type PacketEvent } from "../datapath/events.ts";
import { EVENT_HEADER_LEN } from "../datapath/codecs.ts";
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
  type FlowContext,
  type L7Input,
} from "./flow.ts";
import type { Follower } from "./ring.ts";
import { encodeContext, type EventContext } from "./fast_lines.ts";
import { RecordRing } from "./record_ring.ts";
import { compileFilter, type FlowFilter } from "./filter.ts";
import { registerMonitorMetrics } from "./metrics.ts";
import { ContextCache } from "./contexts.ts";
import { EndpointIndex } from "./endpoint_index.ts";
import {
  type AnyFollower,
  CHUNK_BYTES,
  FOLLOWER_BYTES,
  FOLLOWER_QUEUE,
  Followers,
  type LineFollower,
} from "./followers.ts";

export { FOLLOWER_BYTES, FOLLOWER_QUEUE };
export const DEFAULT_FLOW_BUFFER_SIZE = 4095;

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

/** The fields an L7 record's connection fixes (and the cookie of the verdict that decided). */
export interface L7ContextInput {
  client: { ip: string; port: number };
  server: { ip: string; port: number };
  epId: number;
  direction: "ingress" | "egress";
  srcIdentity: number;
  dstIdentity: number;
  cookie: number;
}

/** A batch of L7 records read in place (the HTTP Worker's, agent/proxy/l7_batch.ts). */
export interface L7Records {
  readonly size: number;
  readonly contexts: number;
  context(j: number): L7ContextInput;
  /** The context of record i. */
  contextOf(i: number): number;
  allowed(i: number): boolean;
  /** When record i's request ended (ms since the epoch): its flow's time. */
  timeMs(i: number): number;
  record(i: number): L7Input;
}

/** Counters the metrics read (plain numbers: the hot path must not format labels). */
export interface MonitorCounters {
  /** `${type}/${verdict}` → flows. */
  processed: Map<string, number>;
  /** `${direction}/${match}/${action}` → policy-verdict events. */
  verdicts: Map<string, number>;
}

type L7Sides = Pick<FlowContext, "source" | "destination" | "policy">;

/** What a DNS record's sides and policy come from. */
interface DnsSideInput {
  epId: number;
  srcIdentity: number;
  dstIdentity: number;
  cookie: number;
  server: { ip: string };
}

const bump = (m: Map<string, number>, k: string, by = 1) => m.set(k, (m.get(k) ?? 0) + by);

export class Monitor {
  readonly ring: RecordRing;
  readonly counters: MonitorCounters = { processed: new Map(), verdicts: new Map() };
  readonly #o: MonitorOptions;
  /** Rule cookies → policies (also for `cilia bpf policy get`). */
  readonly attribution: Attribution;
  readonly #followers = new Followers();
  readonly #endpoints: EndpointIndex;
  /** Record path: contexts by their header fields (cleared when endpoints or the policy change). */
  readonly #contexts = new ContextCache();
  #contextsOf = { generation: -1, spec: undefined as unknown };
  #reader: EventReader | undefined;
  #error: string | undefined;
  #perfLost = 0;
  #bytes: Uint8Array | undefined;
  #timeBytes = new Uint8Array(0);
  #timeBytesMs = -1;
  #clockTick = 0;
  #clockMs = 0;
  /** The last millisecond's `time` text, reused by the events of the same millisecond. */
  #timeMs = -1;
  #timeText = "";

  constructor(o: MonitorOptions) {
    this.#o = o;
    this.ring = new RecordRing(o.bufferSize ?? DEFAULT_FLOW_BUFFER_SIZE, o.nodeName);
    this.attribution = new Attribution(o.engine);
    this.#endpoints = new EndpointIndex(o.endpoints, o.engine);
    if (o.metrics) registerMonitorMetrics(o.metrics, this);
  }

  /** Starts reading the pinned event ring buffer; a failure is logged and shown in stats. */
  start(eventsMap: string): void {
    try {
      this.#reader = new EventReader(eventsMap, {
        onRecord: (view, at, length) => this.ingestRecord(view, at, length),
        onBatch: () => {
          this.#clockTick = 0; // the next poll's first record reads the clock again
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

  /** Now as an ISO time (one Date per millisecond, not per event). */
  #now(): string {
    const ms = Date.now();
    if (ms !== this.#timeMs) {
      this.#timeMs = ms;
      this.#timeText = new Date(ms).toISOString();
    }
    return this.#timeText;
  }

  /** Now as ISO text bytes (one encoding per millisecond). */
  #nowBytes(ms: number): Uint8Array {
    if (ms !== this.#timeBytesMs) {
      this.#timeBytesMs = ms;
      this.#timeBytes = new TextEncoder().encode(new Date(ms).toISOString());
    }
    return this.#timeBytes;
  }

  /** A flow to the ring and the followers that want it, its line sent at once (in order). */
  #publish(flow: Flow): void {
    this.ring.push(flow);
    this.#followers.flow(flow);
    this.#followers.flush();
  }

  /**
   * One ring-buffer record (in place: valid during the call only) → the ring (as bytes), the
   * unfiltered line followers (a line written from the bytes), counters, and, only when someone
   * needs them, an event object (raw followers) and a flow object (filtered followers). Records
   * the line writer does not cover (IPv6, odd packets) take the object path. A record's time is
   * read at the first record of each reader poll and then every 32 records.
   */
  ingestRecord(view: DataView, at: number, length: number): void {
    if (length < EVENT_HEADER_LEN) return;
    if (this.#bytes?.buffer !== view.buffer) {
      this.#bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
    }
    const d = this.#bytes, p = at + EVENT_HEADER_LEN, followers = this.#followers;
    const capLen = Math.min(view.getUint32(at + 32, true), length - EVENT_HEADER_LEN);
    const ipv4 = capLen >= 34 && d[p + 12] === 0x08 && d[p + 13] === 0x00;
    if (followers.wantEvents || !ipv4) {
      this.ingest(decodeEventAt(view, at, length));
      return;
    }
    // The clock and the endpoint index are read at the first record of each poll and then once
    // per 32 records (a record's time is when the monitor read it; 32 take well under 1 ms).
    if ((this.#clockTick++ & 31) === 0) {
      this.#clockMs = Date.now();
      this.#endpoints.refresh();
    }
    const ms = this.#clockMs;
    const ctx = this.#context(view, at, d, p);
    const time = this.#nowBytes(ms);
    if (followers.wantLines) {
      if (!followers.lines.write(d, p, capLen, ctx, time)) {
        this.ingest(decodeEventAt(view, at, length));
        return;
      }
      if (followers.lines.size >= CHUNK_BYTES) followers.flush();
    }
    this.ring.pushRecord(d, at, length, ms, ctx);
    bump(this.counters.processed, ctx.processedKey);
    if (ctx.verdictKey) bump(this.counters.verdicts, ctx.verdictKey);
    if (followers.wantObjects) {
      const e = decodeEventAt(view, at, length);
      followers.flow(
        buildFlow(e, {
          nodeName: this.#o.nodeName,
          now: this.#now(),
          source: ctx.source,
          destination: ctx.destination,
          policy: ctx.policy,
        }),
        true,
      );
    }
  }

  /** The context of an IPv4 record (see contexts.ts), built from its flow on a miss. */
  #context(view: DataView, at: number, d: Uint8Array, p: number): EventContext {
    const spec = this.#o.engine.spec, generation = this.#endpoints.generation;
    if (spec !== this.#contextsOf.spec || generation !== this.#contextsOf.generation) {
      this.#contextsOf = { generation, spec }; // new endpoints or policy: attribution may differ
      this.#contexts.clear();
    }
    const ipAt = p + (d[at + 16] === 2 ? 30 : 26); // the peer: destination of an egress packet
    const ip = ((d[ipAt]! << 24) | (d[ipAt + 1]! << 16) | (d[ipAt + 2]! << 8) | d[ipAt + 3]!) >>> 0;
    const other = this.#endpoints.byIp4(ip)?.id ?? 0;
    return this.#contexts.get(view, at, d, other, (key) => {
      const e = decodeEventAt(view, at, EVENT_HEADER_LEN + 34);
      const flow = this.#flowOf(e);
      return encodeContext(flow, {
        source: flow.source,
        destination: flow.destination,
        policy: flow.policy,
        verdict: flow.verdict,
        type: e.type,
        processedKey: `${e.type}/${flow.verdict}`,
        verdictKey: e.type === "policy-verdict"
          ? `${e.direction}/${e.match}/${e.verdict}`
          : undefined,
        key,
      });
    });
  }

  /** One kernel event → raw followers, a flow, the ring, flow followers and counters. */
  ingest(e: PacketEvent, now?: Date): void {
    this.#followers.event(e);
    const flow = this.#flowOf(e, now);
    bump(this.counters.processed, `${e.type}/${flow.verdict}`);
    if (e.type === "policy-verdict") {
      bump(this.counters.verdicts, `${e.direction}/${e.match}/${e.verdict}`);
    }
    this.#publish(flow);
  }

  /** An event's flow: both sides looked up, the policy attributed. */
  #flowOf(e: PacketEvent, now?: Date): Flow {
    const index = this.#endpoints;
    index.refresh();
    let self = index.byId(e.epId);
    if (!self && e.epId !== 0) {
      index.refresh(true);
      self = index.byId(e.epId);
    }
    const packet = parsePacket(e.data);
    const ip = packet.IP;
    const other = ip
      ? index.byIp(e.direction === "egress" ? ip.destination : ip.source)
      : undefined;
    const src = e.direction === "egress" ? self : other;
    const dst = e.direction === "egress" ? other : self;
    const audit = e.verdict === "audit";
    return buildFlow(e, {
      nodeName: this.#o.nodeName,
      now: now ?? this.#now(),
      source: index.side(e.srcIdentity, src),
      destination: index.side(e.dstIdentity, dst),
      policy: this.attribution.of(e, self, audit),
      packet,
    });
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
    now = r.at !== undefined ? new Date(r.at) : new Date(),
  ): void {
    const index = this.#endpoints;
    index.refresh();
    const policy = this.attribution.byCookie(r.cookie, false);
    const flow = buildDnsFlow(r, {
      nodeName: this.#o.nodeName,
      now,
      source: index.side(r.srcIdentity, index.byId(r.epId)),
      destination: index.side(r.dstIdentity, index.byIp(r.server.ip)),
      policy,
    });
    bump(this.counters.processed, `l7/${flow.verdict}`);
    this.#publish(flow);
  }

  /**
   * A batch of DNS records, as ingestDns takes each (the same flows, counts and followers): both
   * sides and the policy are looked up now (once for a run of records alike), a flow object is
   * made now only when someone follows flows, else when a query first reads it.
   */
  ingestDnsBatch(rs: readonly (DnsInput & DnsSideInput & { at: number })[]): void {
    const n = rs.length;
    if (n === 0) return;
    const index = this.#endpoints;
    index.refresh();
    const sides: L7Sides[] = [];
    let last: DnsSideInput | undefined, side: L7Sides | undefined, forwarded = 0;
    for (const r of rs) {
      if (r.allowed) forwarded++;
      if (
        !last || r.epId !== last.epId || r.srcIdentity !== last.srcIdentity ||
        r.dstIdentity !== last.dstIdentity || r.cookie !== last.cookie ||
        r.server.ip !== last.server.ip
      ) {
        last = r;
        side = {
          source: index.side(r.srcIdentity, index.byId(r.epId)),
          destination: index.side(r.dstIdentity, index.byIp(r.server.ip)),
          policy: this.attribution.byCookie(r.cookie, false),
        };
      }
      sides.push(side!);
    }
    if (forwarded > 0) bump(this.counters.processed, "l7/FORWARDED", forwarded);
    if (forwarded < n) bump(this.counters.processed, "l7/DROPPED", n - forwarded);
    const nodeName = this.#o.nodeName;
    const make = (i: number) =>
      buildDnsFlow(rs[i]!, { ...sides[i]!, nodeName, now: new Date(rs[i]!.at) });
    this.#pushMade(n, make);
  }

  /** One request the L7 proxy judged → an L7 flow in the ring and to flow followers. */
  ingestL7(
    r: L7Input & { epId: number; srcIdentity: number; dstIdentity: number; cookie: number },
    now = new Date(),
  ): void {
    this.#endpoints.refresh();
    const flow = buildL7Flow(r, { ...this.#l7Sides(r), nodeName: this.#o.nodeName, now });
    bump(this.counters.processed, `l7/${flow.verdict}`);
    this.#publish(flow);
  }

  /**
   * A batch of L7 records, as ingestL7 takes each (the same flows, counts and followers): both
   * sides and the policy are looked up once per context, now; a flow object is made now only
   * when someone follows flows, else when a query first reads it (the ring keeps a maker).
   */
  ingestL7Batch(b: L7Records): void {
    const n = b.size;
    if (n === 0) return;
    this.#endpoints.refresh();
    const sides: L7Sides[] = [];
    for (let j = 0; j < b.contexts; j++) sides.push(this.#l7Sides(b.context(j)));
    let forwarded = 0;
    for (let i = 0; i < n; i++) if (b.allowed(i)) forwarded++;
    if (forwarded > 0) bump(this.counters.processed, "l7/FORWARDED", forwarded);
    if (forwarded < n) bump(this.counters.processed, "l7/DROPPED", n - forwarded);
    const nodeName = this.#o.nodeName;
    const make = (i: number) =>
      buildL7Flow(b.record(i), {
        ...sides[b.contextOf(i)]!,
        nodeName,
        now: new Date(b.timeMs(i)),
      });
    this.#pushMade(n, make);
  }

  /** N flows of a batch: made now for followers, else kept as makers until a query reads them. */
  #pushMade(n: number, make: (i: number) => Flow): void {
    if (!this.#followers.wantFlows) return this.ring.pushMade(n, make);
    for (let i = 0; i < n; i++) {
      const flow = make(i);
      this.ring.push(flow);
      this.#followers.flow(flow);
    }
    this.#followers.flush();
  }

  /** Both sides of an L7 record's connection and the policy its cookie names. */
  #l7Sides(c: L7ContextInput): L7Sides {
    const index = this.#endpoints;
    const self = index.byId(c.epId);
    const other = index.byIp(c.direction === "egress" ? c.server.ip : c.client.ip);
    const src = c.direction === "egress" ? self : other;
    const dst = c.direction === "egress" ? other : self;
    return {
      source: index.side(c.srcIdentity, src),
      destination: index.side(c.dstIdentity, dst),
      policy: this.attribution.byCookie(c.cookie, false),
    };
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
