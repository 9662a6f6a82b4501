// The monitor's hot path for `observe -o json`: a flow's NDJSON line written as bytes straight
// from a ring-buffer record, with no event, flow or string object per event. What a line shares
// with other events of the same context (both sides, the policy, the verdict and reason, the event
// type) is encoded once per context (`EventContext`); per event only the time, the addresses, the
// ports, the TCP flags and the Summary are written. It covers IPv4 TCP/UDP/ICMP records whose L4
// header was captured; `write()` returns false for anything else and the caller takes the general
// path (buildFlow + flowNdjson). The bytes equal `flowNdjson(buildFlow(...))` exactly (tested).
// Lines collect in one buffer until `take()`. This module is browser compatible.

import type { Flow, FlowEndpoint, FlowPolicy, FlowService, FlowType, FlowVerdict } from "./flow.ts";

/** What the events of one context share, and its pre-encoded parts of the line. */
export interface EventContext {
  source: FlowEndpoint;
  destination: FlowEndpoint;
  policy: FlowPolicy | undefined;
  /** The service of the context's svc_id (both directions: a reply's is its source's). */
  service: FlowService | undefined;
  verdict: FlowVerdict;
  type: FlowType;
  /** `${type}/${verdict}` and `${direction}/${match}/${action}` for the monitor's counters. */
  processedKey: string;
  verdictKey: string | undefined;
  /** The header fields and peer endpoint that identify the context (see Monitor). */
  key: readonly number[];
  /** `","verdict":…,"IP":{"source":"` (after the time); `,"source":…"Summary":"`. */
  head: Uint8Array;
  mid: Uint8Array;
  /** `"`, the policy, `cilia_type` and the end of the line. */
  tail: Uint8Array;
  /** mid + Summary + tail by Summary (TCP flag bits 0-63, UDP 64, ICMP type 65 + t). */
  rest: (Uint8Array | undefined)[];
}

const enc = new TextEncoder();
const bytesOf = (s: string) => enc.encode(s);

/** The fixed parts of a context's line, from a flow of that context (any of its events). */
export function encodeContext(
  flow: Flow,
  ctx: Omit<EventContext, "head" | "mid" | "tail" | "rest">,
): EventContext {
  let head = `","verdict":${JSON.stringify(flow.verdict)}`;
  if (flow.drop_reason !== undefined) {
    head += `,"drop_reason":${flow.drop_reason},"drop_reason_desc":` +
      JSON.stringify(flow.drop_reason_desc);
  }
  head += ',"IP":{"source":"';
  const mid = `,"source":${JSON.stringify(flow.source)},"destination":` +
    `${JSON.stringify(flow.destination)},"Type":"L3_L4","node_name":` +
    `${JSON.stringify(flow.node_name)},"event_type":${JSON.stringify(flow.event_type)},` +
    (flow.source_service ? `"source_service":${JSON.stringify(flow.source_service)},` : "") +
    (flow.destination_service
      ? `"destination_service":${JSON.stringify(flow.destination_service)},`
      : "") +
    `"traffic_direction":${JSON.stringify(flow.traffic_direction)},"is_reply":` +
    `${flow.is_reply},"Summary":"`;
  const tail = `"${flow.policy ? `,"policy":${JSON.stringify(flow.policy)}` : ""},"cilia_type":` +
    `${JSON.stringify(flow.cilia_type)}}}\n`;
  return { ...ctx, head: bytesOf(head), mid: bytesOf(mid), tail: bytesOf(tail), rest: [] };
}

/** The part of a line after the L4 fields for Summary `i` (see EventContext.rest). */
function restOf(ctx: EventContext, i: number): Uint8Array {
  let r = ctx.rest[i];
  if (!r) {
    const summary = i < 64 ? TCP_SUMMARY[i]! : i === 64 ? UDP_SUMMARY : ICMP_SUMMARY[i - 65]!;
    r = new Uint8Array(ctx.mid.length + summary.length + ctx.tail.length);
    r.set(ctx.mid);
    r.set(summary, ctx.mid.length);
    r.set(ctx.tail, ctx.mid.length + summary.length);
    ctx.rest[i] = r;
  }
  return r;
}

const FLAG_NAMES = ["FIN", "SYN", "RST", "PSH", "ACK", "URG"];
/** By the low 6 flag bits: `{"SYN":true}}}` (closing flags, TCP and l4) and the Summary. */
const TCP_FLAGS: Uint8Array[] = [];
const TCP_SUMMARY: Uint8Array[] = [];
for (let bits = 0; bits < 64; bits++) {
  const names = FLAG_NAMES.filter((_, i) => bits & (1 << i));
  TCP_FLAGS.push(bytesOf(`,"flags":{${names.map((n) => `"${n}":true`).join(",")}}}}`));
  TCP_SUMMARY.push(bytesOf(names.length > 0 ? `TCP Flags: ${names.join(", ")}` : "TCP"));
}
const ICMP4_NAMES: Record<number, string> = {
  0: "EchoReply",
  3: "DestinationUnreachable",
  8: "EchoRequest",
  11: "TimeExceeded",
};
const ICMP_SUMMARY = Array.from(
  { length: 256 },
  (_, t) => bytesOf(`ICMPv4 ${ICMP4_NAMES[t] ?? `type ${t}`}`),
);
const UDP_SUMMARY = bytesOf("UDP");

const s = (text: string) => bytesOf(text);
const P_TIME = s('{"flow":{"time":"'), P_DST = s('","destination":"');
const P_TCP = s('","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":');
const P_UDP = s('","ipVersion":"IPv4"},"l4":{"UDP":{"source_port":');
const P_ICMP = s('","ipVersion":"IPv4"},"l4":{"ICMPv4":{"type":');
const P_DPORT = s(',"destination_port":'), P_END2 = s("}}"), P_CODE = s(',"code":');
/** Addresses cached per slot (direct-mapped by the low bits). */
const ADDR_SLOTS = 4096;

/** Appends NDJSON lines for records; `take()` hands the collected bytes over. */
export class LineWriter {
  #buf: Uint8Array;
  #pos = 0;
  /** Lines in the buffer. */
  lines = 0;
  readonly #addrKeys = new Float64Array(ADDR_SLOTS).fill(-1);
  readonly #addrText: Uint8Array[] = new Array(ADDR_SLOTS);

  /** `capacity`: the bytes a buffer starts with (it grows for a larger batch of lines). */
  constructor(capacity = 1 << 20) {
    this.#buf = new Uint8Array(capacity);
  }

  #put(b: Uint8Array): void {
    this.#buf.set(b, this.#pos);
    this.#pos += b.length;
  }

  #num(n: number): void {
    const buf = this.#buf;
    if (n === 0) {
      buf[this.#pos++] = 48;
      return;
    }
    let digits = 0;
    for (let x = n; x > 0; x = (x / 10) | 0) digits++;
    let p = this.#pos + digits;
    this.#pos = p;
    for (let x = n; x > 0; x = (x / 10) | 0) buf[--p] = 48 + x % 10;
  }

  /** The dotted text of the IPv4 address at `at` (cached by value). */
  #ip(d: Uint8Array, at: number): Uint8Array {
    const key = ((d[at]! << 24) | (d[at + 1]! << 16) | (d[at + 2]! << 8) | d[at + 3]!) >>> 0;
    const slot = (key ^ (key >>> 12)) & (ADDR_SLOTS - 1);
    if (this.#addrKeys[slot] !== key) {
      this.#addrKeys[slot] = key;
      this.#addrText[slot] = bytesOf(`${d[at]}.${d[at + 1]}.${d[at + 2]}.${d[at + 3]}`);
    }
    return this.#addrText[slot]!;
  }

  /**
   * Appends the line of the record's packet (`d` from `at`, `len` captured bytes) in context
   * `ctx` at `time` (ISO text as bytes); false, and nothing written, unless it is IPv4
   * TCP/UDP/ICMP with the L4 header captured.
   */
  write(d: Uint8Array, at: number, len: number, ctx: EventContext, time: Uint8Array): boolean {
    if (len < 34 || d[at + 12] !== 0x08 || d[at + 13] !== 0x00) return false;
    if ((((d[at + 20]! & 0x1f) << 8) | d[at + 21]!) !== 0) return false; // a fragment
    const l4 = at + 14 + (d[at + 14]! & 0x0f) * 4, proto = d[at + 23];
    const end = at + len;
    if (proto === 6 ? l4 + 14 > end : proto === 17 ? l4 + 4 > end : proto !== 1 || l4 + 2 > end) {
      return false;
    }
    if (this.#buf.length - this.#pos < 4096 + ctx.mid.length + ctx.tail.length) this.#grow();
    this.#put(P_TIME);
    this.#put(time);
    this.#put(ctx.head);
    this.#put(this.#ip(d, at + 26));
    this.#put(P_DST);
    this.#put(this.#ip(d, at + 30));
    let summary: number;
    if (proto === 1) {
      this.#put(P_ICMP);
      this.#num(d[l4]!);
      this.#put(P_CODE);
      this.#num(d[l4 + 1]!);
      this.#put(P_END2);
      summary = 65 + d[l4]!;
    } else {
      this.#put(proto === 6 ? P_TCP : P_UDP);
      this.#num((d[l4]! << 8) | d[l4 + 1]!);
      this.#put(P_DPORT);
      this.#num((d[l4 + 2]! << 8) | d[l4 + 3]!);
      if (proto === 6) {
        summary = d[l4 + 13]! & 0x3f;
        this.#put(TCP_FLAGS[summary]!);
      } else {
        this.#put(P_END2);
        summary = 64;
      }
    }
    this.#put(restOf(ctx, summary));
    this.lines++;
    return true;
  }

  /** Appends a line written elsewhere (the general path), keeping the order of lines. */
  writeText(line: string): void {
    if (this.#buf.length - this.#pos < line.length * 3) this.#grow(line.length * 3);
    this.#pos += enc.encodeInto(line, this.#buf.subarray(this.#pos)).written;
    this.lines++;
  }

  #grow(need = 0): void {
    const next = new Uint8Array(Math.max(this.#buf.length * 2, this.#pos + need + 4096));
    next.set(this.#buf.subarray(0, this.#pos));
    this.#buf = next;
  }

  /**
   * Bytes collected since the last take, with their line count; undefined if none. A buffer at
   * least half full is handed over as it is (no copy; the writer starts a new one), a smaller
   * collection is copied out so what the caller holds stays close to what it uses.
   */
  take(): { bytes: Uint8Array; lines: number } | undefined {
    if (this.lines === 0) return undefined;
    const full = this.#pos * 2 >= this.#buf.length;
    const out = {
      bytes: full ? this.#buf.subarray(0, this.#pos) : this.#buf.slice(0, this.#pos),
      lines: this.lines,
    };
    if (full) this.#buf = new Uint8Array(this.#buf.length);
    this.#pos = 0;
    this.lines = 0;
    return out;
  }

  get size(): number {
    return this.#pos;
  }
}
