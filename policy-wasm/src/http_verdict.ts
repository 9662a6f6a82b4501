// The L7 proxy's per-request path into the engine (and the DNS proxy's, per query): an HTTP (or
// DNS) query written straight into the engine's input buffer (the same MSG_QUERY bytes encodeQuery() makes, without its intermediate
// buffers), judged by the `query_verdict` export (query() without the explanation), and a 16-byte
// result read in place. Same verdicts as query(); nothing here decides anything. This module is
// browser compatible.

import { L7_KIND } from "./encode.ts";
import { POLICY_DIR_EGRESS, POLICY_DIR_INGRESS, VERDICT_NAMES } from "./constants.generated.ts";
import type { HttpRequest, QueryInput, Verdict } from "./query_codec.ts";
import { ABSENT, MAGIC, MSG, VERSION } from "./wire.ts";

export interface HttpVerdictExports {
  memory: WebAssembly.Memory;
  input_reserve(len: number): number;
  output_ptr(): number;
  query_verdict(len: number): number;
}

/** What the proxy needs of a verdict: query()'s verdict, cookie and L7 outcome, nothing else. */
export interface HttpVerdict {
  verdict: Verdict;
  cookie: number;
  l7: { status: "not-evaluated" | "allowed" | "denied"; entry: number; rule: number };
}

const L7_STATUS = ["not-evaluated", "allowed", "denied"] as const;
const enc = new TextEncoder();
/** Strings up to this length are copied by a loop (ASCII); longer ones by encodeInto. */
const SHORT = 48;

export class HttpVerdictWriter {
  #u8 = new Uint8Array(0);
  #dv = new DataView(new ArrayBuffer(0));

  #views(x: HttpVerdictExports): void {
    if (this.#u8.buffer !== x.memory.buffer) {
      this.#u8 = new Uint8Array(x.memory.buffer);
      this.#dv = new DataView(x.memory.buffer);
    }
  }

  /** Writes `q` as a MSG_QUERY message; returns its length. */
  write(x: HttpVerdictExports, q: QueryInput & { http: HttpRequest }): number {
    const h = q.http;
    const headers = h.headers ? Object.entries(h.headers) : [];
    const len = (s: unknown) => typeof s === "string" ? s.length : 0;
    let chars = len(h.method) + len(h.path) + len(h.host);
    for (const [k, v] of headers) chars += len(k) + len(v);
    const room = 21 + 4 * (4 + 2 * headers.length) + 3 * chars;
    const ptr = this.#head(x, q, room, L7_KIND.http);
    const dv = this.#dv;
    const end = ptr + room;
    let at = this.#str(h.method, ptr + 21, end);
    at = this.#str(h.path, at, end);
    at = this.#str(h.host ?? "", at, end);
    dv.setUint32(at, headers.length, true);
    at += 4;
    for (const [k, v] of headers) at = this.#str(v, this.#str(k, at, end), end);
    return at - ptr;
  }

  /** Writes `q` as a MSG_QUERY message with a DNS name (the DNS proxy's path); its length. */
  writeDns(x: HttpVerdictExports, q: QueryInput & { dns: string }): number {
    const room = 21 + 4 + 3 * q.dns.length;
    const ptr = this.#head(x, q, room, L7_KIND.dns);
    return this.#str(q.dns, ptr + 21, ptr + room) - ptr;
  }

  /** Reserves `room` bytes of input and writes the 21-byte MSG_QUERY head; returns where. */
  #head(x: HttpVerdictExports, q: QueryInput, room: number, kind: number): number {
    const ptr = x.input_reserve(room);
    this.#views(x);
    const dv = this.#dv;
    dv.setUint32(ptr, MAGIC, true);
    dv.setUint16(ptr + 4, VERSION, true);
    dv.setUint16(ptr + 6, MSG.QUERY, true);
    dv.setUint32(ptr + 8, q.endpoint, true);
    dv.setUint8(ptr + 12, q.direction === "ingress" ? POLICY_DIR_INGRESS : POLICY_DIR_EGRESS);
    dv.setUint32(ptr + 13, q.peer, true);
    dv.setUint8(ptr + 17, q.proto);
    dv.setUint16(ptr + 18, q.port, true);
    dv.setUint8(ptr + 20, kind);
    return ptr;
  }

  /** A u32 byte length and the UTF-8 of `s` at `at`; returns where the next field goes. */
  #str(s: string, at: number, end: number): number {
    if (typeof s !== "string") { // as ByteWriter.str(): absent (the engine reads "")
      this.#dv.setUint32(at, ABSENT, true);
      return at + 4;
    }
    const u8 = this.#u8;
    const n = s.length;
    let i = 0;
    if (n <= SHORT) {
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        u8[at + 4 + i] = c;
      }
    }
    const len = i === n ? n : enc.encodeInto(s, u8.subarray(at + 4, end)).written;
    this.#dv.setUint32(at, len, true);
    return at + 4 + len;
  }

  /** The verdict query_verdict() left in the output buffer. */
  read(x: HttpVerdictExports): HttpVerdict {
    this.#views(x);
    const p = x.output_ptr();
    const dv = this.#dv;
    return {
      verdict: VERDICT_NAMES[dv.getUint8(p)] ?? "none",
      cookie: dv.getUint32(p + 4, true),
      l7: {
        status: L7_STATUS[dv.getUint8(p + 1)] ?? "not-evaluated",
        entry: dv.getInt32(p + 8, true),
        rule: dv.getInt32(p + 12, true),
      },
    };
  }
}
