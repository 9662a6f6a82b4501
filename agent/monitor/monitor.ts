// The agent's monitor: the one reader of the kernel's events (through datapath/events.ts) turns
// each event into a flow with both sides' identity, labels, namespace and pod and the policy that
// decided (attribution.ts), keeps the last `--flow-buffer-size` flows (record_ring.ts), and hands
// flows and raw events to live followers (ring.ts) without ever waiting for them. Kernel records
// take a path with no object per event (ingestRecord: contexts encoded once, lines written from
// the bytes by fast_lines.ts) unless a reader needs objects. Lost events are counted by
// where they were lost (a full kernel event ring, slow followers) and reported by stats(), metrics
// and every query. It decides no verdict: the kernel did, the engine names the rule.

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
  type FlowEndpoint,
  type L7Input,
} from "./flow.ts";
import { Follower } from "./ring.ts";
import { encodeContext, type EventContext, LineWriter } from "./fast_lines.ts";
import { RecordRing } from "./record_ring.ts";
import { compileFilter, type FlowFilter } from "./filter.ts";
import { registerMonitorMetrics } from "./metrics.ts";
import { flowNdjson } from "./wire.ts";

export const DEFAULT_FLOW_BUFFER_SIZE = 4095;
/** How far a live follower may fall behind before it loses flows. */
export const FOLLOWER_QUEUE = 65_536;
/** Bytes of lines collected before they go to the followers as one chunk (also at a poll's end). */
const CHUNK_BYTES = 60_000;
/** Event contexts kept before the cache starts again. */
const CONTEXT_LIMIT = 8192;

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
  | { lines: true; follower: Follower<string | Uint8Array>; match: (f: Flow) => boolean };

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
  readonly ring: RecordRing;
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
  /** IPv4 (as a big-endian u32) → endpoint, for the record path. */
  #byIp4 = new Map<number, EndpointRecord>();
  /** Unfiltered line followers: they share the chunks `#lines` collects. */
  readonly #allLines = new Set<Follower<string | Uint8Array>>();
  /** Followers that need flow objects (filters, object followers). */
  #objectSubs = 0;
  readonly #lines = new LineWriter();
  /** Record path: context key hash → contexts (see #context). */
  #contexts = new Map<number, EventContext[]>();
  #contextCount = 0;
  #contextsSpec: unknown;
  #bytes: Uint8Array | undefined;
  #timeBytes = new Uint8Array(0);
  #timeBytesMs = -1;
  #clockTick = 0;
  #clockMs = 0;
  #indexedAt = -Infinity;
  /** `${identity}/${endpoint id}` → the side of a flow (shared by flows; rebuilt with the index). */
  #sides = new Map<string, FlowEndpoint>();
  #sidesSpec: unknown;
  /** The last second's `time` text, reused by the events of the same millisecond. */
  #timeMs = -1;
  #timeText = "";

  constructor(o: MonitorOptions) {
    this.#o = o;
    this.ring = new RecordRing(o.bufferSize ?? DEFAULT_FLOW_BUFFER_SIZE, o.nodeName);
    this.attribution = new Attribution(o.engine);
    if (o.metrics) registerMonitorMetrics(o.metrics, this);
  }

  /** Starts reading the pinned event ring buffer; a failure is logged and shown in stats. */
  start(eventsMap: string): void {
    try {
      this.#reader = new EventReader(eventsMap, {
        onRecord: (view, at, length) => this.ingestRecord(view, at, length),
        onBatch: () => {
          this.#clockTick = 0; // the next poll's first record reads the clock again
          this.#flushLines();
        },
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
    this.#byIp4.clear();
    this.#sides.clear();
    this.#contexts.clear();
    this.#contextCount = 0;
    for (const e of this.#o.endpoints()) {
      this.#byId.set(e.id, e);
      if (e.ipv4) {
        this.#byIp.set(e.ipv4, e);
        const b = e.ipv4.split(".").map(Number);
        this.#byIp4.set(((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0, e);
      }
      if (e.ipv6) this.#byIp.set(e.ipv6, e);
    }
  }

  /** A flow's side; one object per (identity, endpoint), shared by flows (never mutated). */
  #endpoint(identity: number, ep: EndpointRecord | undefined): FlowEndpoint {
    const spec = this.#o.engine.spec;
    if (spec !== this.#sidesSpec) {
      this.#sidesSpec = spec;
      this.#sides.clear();
      this.#contexts.clear();
      this.#contextCount = 0;
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
    this.#toFollowers(flow);
    this.#flushLines();
  }

  /** A flow to flow followers (lines for unfiltered line followers go through `#lines`). */
  #toFollowers(flow: Flow, skipAllLines?: boolean): void {
    if (!skipAllLines && this.#allLines.size > 0) this.#lines.writeText(flowNdjson(flow));
    let line: string | undefined;
    for (const s of this.#flowSubs) {
      if (s.lines && this.#allLines.has(s.follower)) continue;
      if (!s.match(flow)) continue;
      const ok = !s.lines
        ? s.follower.offer(flow)
        : s.follower.hasRoom
        ? s.follower.offer(line ??= flowNdjson(flow))
        : s.follower.offer("");
      if (!ok) this.#slowLost++;
    }
  }

  /** Collected lines → every unfiltered line follower, as one chunk. */
  #flushLines(): void {
    const chunk = this.#lines.take();
    if (!chunk) return;
    for (const f of this.#allLines) {
      if (!f.offer(chunk.bytes, chunk.lines)) this.#slowLost += chunk.lines;
    }
  }

  /** Now as ISO text bytes (one encoding per millisecond). */
  #nowBytes(ms: number): Uint8Array {
    if (ms !== this.#timeBytesMs) {
      this.#timeBytesMs = ms;
      this.#timeBytes = new TextEncoder().encode(new Date(ms).toISOString());
    }
    return this.#timeBytes;
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
    const d = this.#bytes, p = at + EVENT_HEADER_LEN;
    const capLen = Math.min(view.getUint32(at + 32, true), length - EVENT_HEADER_LEN);
    const ipv4 = capLen >= 34 && d[p + 12] === 0x08 && d[p + 13] === 0x00;
    if (this.#eventSubs.size > 0 || !ipv4) {
      this.ingest(decodeEventAt(view, at, length));
      return;
    }
    // The clock and the endpoint index are read at the first record of each poll and then once
    // per 32 records (a record's time is when the monitor read it; 32 take well under 1 ms).
    if ((this.#clockTick++ & 31) === 0) {
      this.#clockMs = Date.now();
      this.#index(false);
      if (this.#o.engine.spec !== this.#contextsSpec) { // a new policy: attribution may differ
        this.#contextsSpec = this.#o.engine.spec;
        this.#contexts.clear();
        this.#contextCount = 0;
      }
    }
    const ms = this.#clockMs;
    const ctx = this.#context(view, at, d, p);
    const time = this.#nowBytes(ms);
    if (this.#allLines.size > 0 && !this.#lines.write(d, p, capLen, ctx, time)) {
      this.ingest(decodeEventAt(view, at, length));
      return;
    }
    this.ring.pushRecord(d, at, length, ms, ctx);
    bump(this.counters.processed, ctx.processedKey);
    if (ctx.verdictKey) bump(this.counters.verdicts, ctx.verdictKey);
    if (this.#objectSubs > 0) {
      const e = decodeEventAt(view, at, length);
      this.#toFollowers(
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
    if (this.#lines.size >= CHUNK_BYTES) this.#flushLines();
  }

  /**
   * The context of an IPv4 record: both sides, the policy, verdict and the encoded line parts,
   * shared by every record with the same header fields (type, reason, endpoint, identities,
   * direction, protocol, verdict, match, policy port, cookie, conntrack state) and peer endpoint.
   */
  #context(view: DataView, at: number, d: Uint8Array, p: number): EventContext {
    const w0 = view.getUint32(at, true), src = view.getUint32(at + 4, true);
    const dst = view.getUint32(at + 8, true), w3 = view.getUint32(at + 16, true);
    const dport = view.getUint16(at + 22, true), cookie = view.getUint32(at + 24, true);
    const ct = d[at + 37]!;
    const egress = d[at + 16] === 2;
    const ipAt = p + (egress ? 30 : 26);
    const ip = ((d[ipAt]! << 24) | (d[ipAt + 1]! << 16) | (d[ipAt + 2]! << 8) | d[ipAt + 3]!) >>> 0;
    const other = this.#byIp4.get(ip)?.id ?? 0;
    let h = (w0 ^ Math.imul(src, 0x9e3779b1) ^ Math.imul(dst, 0x85ebca6b)) >>> 0;
    h = (h ^ Math.imul(w3 ^ (dport << 16) ^ ct, 0xc2b2ae35) ^ Math.imul(cookie, 0x27d4eb2f)) >>> 0;
    h = (h ^ Math.imul(other, 0x165667b1)) >>> 0;
    const bucket = this.#contexts.get(h);
    if (bucket) {
      for (const c of bucket) {
        const k = c.key;
        if (
          k[0] === w0 && k[1] === src && k[2] === dst && k[3] === w3 && k[4] === dport &&
          k[5] === cookie && k[6] === ct && k[7] === other
        ) return c;
      }
    }
    const e = decodeEventAt(view, at, EVENT_HEADER_LEN + 34);
    const flow = this.#flowOf(e);
    const ctx = encodeContext(flow, {
      source: flow.source,
      destination: flow.destination,
      policy: flow.policy,
      verdict: flow.verdict,
      type: e.type,
      processedKey: `${e.type}/${flow.verdict}`,
      verdictKey: e.type === "policy-verdict"
        ? `${e.direction}/${e.match}/${e.verdict}`
        : undefined,
      key: [w0, src, dst, w3, dport, cookie, ct, other],
    });
    if (this.#contextCount >= CONTEXT_LIMIT) {
      this.#contexts.clear();
      this.#contextCount = 0;
    }
    this.#contextCount++;
    if (bucket) bucket.push(ctx);
    else this.#contexts.set(h, [ctx]);
    return ctx;
  }

  /** One kernel event → raw followers, a flow, the ring, flow followers and counters. */
  ingest(e: PacketEvent, now?: Date): void {
    for (const s of this.#eventSubs) {
      if ((!s.types || s.types.has(e.type)) && !s.follower.offer(e)) this.#slowLost++;
    }
    const flow = this.#flowOf(e, now);
    bump(this.counters.processed, `${e.type}/${flow.verdict}`);
    if (e.type === "policy-verdict") {
      bump(this.counters.verdicts, `${e.direction}/${e.match}/${e.verdict}`);
    }
    this.#publish(flow);
  }

  /** An event's flow: both sides looked up, the policy attributed. */
  #flowOf(e: PacketEvent, now?: Date): Flow {
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
    return buildFlow(e, {
      nodeName: this.#o.nodeName,
      now: now ?? this.#now(),
      source: this.#endpoint(e.srcIdentity, src),
      destination: this.#endpoint(e.dstIdentity, dst),
      policy: this.attribution.of(e, self, audit),
      packet,
    });
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
    this.#objectSubs++;
    return follower;
  }

  /**
   * Like follow(), as NDJSON (`{"flow": …}` lines): without a filter, chunks of many lines
   * (bytes, written once for all such followers); with one, a line (text) per flow.
   */
  followLines(filter?: FlowFilter, limit = FOLLOWER_QUEUE): Follower<string | Uint8Array> {
    const follower = new Follower<string | Uint8Array>(limit);
    const match = matcher(filter);
    this.#flowSubs.add({ lines: true, follower, match });
    if (match === matchAll) {
      this.#flushLines(); // what was collected before this follower came is not for it
      this.#allLines.add(follower);
    } else this.#objectSubs++;
    return follower;
  }

  /** A live reader of raw events (of these types); close it with unfollow(). */
  followEvents(types?: string[], limit = FOLLOWER_QUEUE): Follower<PacketEvent> {
    const follower = new Follower<PacketEvent>(limit);
    this.#eventSubs.add({ follower, types: types?.length ? new Set(types) : undefined });
    return follower;
  }

  unfollow(f: Follower<Flow> | Follower<string | Uint8Array> | Follower<PacketEvent>): void {
    f.close();
    for (const s of this.#flowSubs) {
      if (s.follower !== f) continue;
      this.#flowSubs.delete(s);
      if (!this.#allLines.delete(s.follower as Follower<string | Uint8Array>)) this.#objectSubs--;
    }
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
    this.#allLines.clear();
    this.#objectSubs = 0;
    this.#eventSubs.clear();
  }
}

export { eventVerdict };
