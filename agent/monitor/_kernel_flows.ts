// The kernel's events → flows, for the monitor (monitor.ts owns the ring, followers and counters
// this writes to). Two paths: a ring-buffer record read in place, kept as bytes with a cached
// context (contexts.ts) and, for unfiltered line followers, written as a line from its bytes
// (fast_lines.ts), with no object per event; and the object path (an event, its flow with both
// sides looked up and the policy attributed) for records the line writer does not cover and for
// readers that need objects. Events without an endpoint (ep_id 0: the socket LB's translations,
// and the underlay device's NodePort/LoadBalancer traces and drops, bpf/lib/np_event.h) take the
// object path: both sides are looked up by address, which the record path's context key does not
// hold. It decides no verdict: the kernel did, the engine names the rule.

import { decodeEventAt, type PacketEvent } from "../datapath/events.ts";
import { EVENT_HEADER_LEN, TRACE_SOCK_XLATE } from "../datapath/codecs.ts";
import { type ParsedPacket, parsePacket } from "./_packet.ts";
import { buildFlow, type Flow, type FlowService } from "./flow.ts";
import { encodeContext, type EventContext } from "./fast_lines.ts";
import { ContextCache } from "./contexts.ts";
import type { EndpointIndex } from "./endpoint_index.ts";
import type { RecordRing } from "./record_ring.ts";
import { CHUNK_BYTES, type Followers } from "./followers.ts";
import { bump, type MonitorCounters, type MonitorParts, publish } from "./_parts.ts";

export class KernelFlows {
  readonly #p: MonitorParts;
  // The parts the record path reads per record, as fields of their own.
  readonly #ring: RecordRing;
  readonly #followers: Followers;
  readonly #counters: MonitorCounters;
  readonly #endpoints: EndpointIndex;
  /** Record path: contexts by header fields (cleared when endpoints, services or policy change). */
  readonly #contexts = new ContextCache();
  #contextsOf = { generation: -1, services: -1, spec: undefined as unknown };
  #bytes: Uint8Array | undefined;
  #timeBytes = new Uint8Array(0);
  #timeBytesMs = -1;
  #clockTick = 0;
  #clockMs = 0;
  /** The last millisecond's `time` text, reused by the events of the same millisecond. */
  #timeMs = -1;
  #timeText = "";

  constructor(parts: MonitorParts) {
    this.#p = parts;
    this.#ring = parts.ring;
    this.#followers = parts.followers;
    this.#counters = parts.counters;
    this.#endpoints = parts.endpoints;
  }

  /** A reader poll ended: the next poll's first record reads the clock again. */
  pollDone(): void {
    this.#clockTick = 0;
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
    // No endpoint (a socket LB trace, the underlay's events): the object path (see above).
    const noEndpoint = d[at + 2] === 0 && d[at + 3] === 0;
    if (followers.wantEvents || !ipv4 || noEndpoint) {
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
    this.#ring.pushRecord(d, at, length, ms, ctx);
    bump(this.#counters.processed, ctx.processedKey);
    if (ctx.verdictKey) bump(this.#counters.verdicts, ctx.verdictKey);
    if (followers.wantObjects) this.#followObject(view, at, length, ctx);
  }

  /** A record of the byte path as a flow object, for the followers that want objects. */
  #followObject(view: DataView, at: number, length: number, ctx: EventContext): void {
    const e = decodeEventAt(view, at, length);
    this.#followers.flow(
      buildFlow(e, {
        nodeName: this.#p.nodeName,
        now: this.#now(),
        source: ctx.source,
        destination: ctx.destination,
        policy: ctx.policy,
        service: ctx.service,
      }),
      true,
    );
  }

  /** The context of an IPv4 record (see contexts.ts), built from its flow on a miss. */
  #context(view: DataView, at: number, d: Uint8Array, p: number): EventContext {
    const spec = this.#p.engine.spec, generation = this.#endpoints.generation;
    const services = this.#p.services.generation, of = this.#contextsOf;
    if (spec !== of.spec || generation !== of.generation || services !== of.services) {
      // new endpoints, services or policy: sides, services and attribution may differ
      this.#contextsOf = { generation, services, spec };
      this.#contexts.clear();
    }
    const ipAt = p + (d[at + 16] === 2 ? 30 : 26); // the peer: destination of an egress packet
    const ip = ((d[ipAt]! << 24) | (d[ipAt + 1]! << 16) | (d[ipAt + 2]! << 8) | d[ipAt + 3]!) >>> 0;
    const other = this.#endpoints.byIp4(ip)?.id ?? 0;
    return this.#contexts.get(view, at, other, (key) => {
      const e = decodeEventAt(view, at, EVENT_HEADER_LEN + 34);
      const flow = this.#flowOf(e);
      return encodeContext(flow, {
        source: flow.source,
        destination: flow.destination,
        policy: flow.policy,
        service: flow.source_service ?? flow.destination_service,
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
    bump(this.#counters.processed, `${e.type}/${flow.verdict}`);
    if (e.type === "policy-verdict") {
      bump(this.#counters.verdicts, `${e.direction}/${e.match}/${e.verdict}`);
    }
    publish(this.#p, flow);
  }

  /** An event's flow: both sides looked up, the policy attributed. */
  #flowOf(e: PacketEvent, now?: Date): Flow {
    const index = this.#endpoints;
    index.refresh();
    let self = index.byId(e.epId);
    if (!self && e.epId !== 0) self = index.learn(e.epId);
    const packet = parsePacket(e.data);
    const ip = packet.IP;
    // No endpoint in the event (the socket LB's traces): both sides by their addresses.
    const bySide = (out: boolean) =>
      ip && (e.epId === 0 || out !== (e.direction === "egress"))
        ? index.byIp(out ? ip.source : ip.destination)
        : self;
    const src = bySide(true), dst = bySide(false);
    const audit = e.verdict === "audit";
    // The underlay's events (np_event.h) decide no policy; their cookie is the frontend's port.
    const underlay = e.epId === 0 && !(e.type === "trace" && e.subtype === TRACE_SOCK_XLATE);
    return buildFlow(e, {
      nodeName: this.#p.nodeName,
      now: now ?? this.#now(),
      source: index.side(e.srcIdentity, src),
      destination: index.side(e.dstIdentity, dst),
      policy: underlay ? undefined : this.#p.attribution.of(e, self, audit),
      service: underlay ? this.#underlayService(e, packet) : this.#p.services.of(e.svcId),
      packet,
    });
  }

  /** An underlay event's service: its NodePort/LoadBalancer frontend (service_index.ts). */
  #underlayService(e: PacketEvent, packet: ParsedPacket): FlowService | undefined {
    if (e.svcId === 0) return undefined;
    const l4 = packet.l4;
    const dport = l4 && "TCP" in l4
      ? l4.TCP.destination_port
      : l4 && "UDP" in l4
      ? l4.UDP.destination_port
      : undefined;
    // Before translation (a drop for a frontend without backends) the packet names the frontend.
    const address = dport === e.cookie ? packet.IP?.destination : undefined;
    return this.#p.services.externalOf(e.svcId, e.cookie, address);
  }
}
