// The HTTP Worker's L7 records in packed form (issue 10). The Worker (http_worker.ts) writes each
// request it served into a batch: its numbers into one Float64Array, each string of the batch
// once, the fields a connection fixes once per connection and cookie; and it counts as it goes
// what the main thread's metrics need (requests by verdict, latency per histogram bucket). A
// batch goes to the main thread at most every L7_BATCH_MS with its buffer transferred, not
// copied; there the counts are added to the metrics and the monitor makes a flow object of a
// record only when someone reads it. So the main thread's cost is per batch, not per request.
// Pure: no I/O, it decides nothing. This module is browser compatible.

import type { RequestRecord } from "./http_records.ts";
import type { L7Record } from "./proxy.ts";
import type { L7ContextInput } from "../monitor/monitor.ts";

/** Bounds (seconds) of cilia_l7_request_duration_seconds. */
export const L7_LATENCY_BUCKETS: readonly number[] = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
];

/** A batch goes at most this long after the one before it (the first record after a pause: at once). */
export const L7_BATCH_MS = 100;
/** …or once it holds this many records. */
export const L7_BATCH_MAX = 8192;

/** The `verdict` label of cilia_l7_requests_total, in the order of L7BatchWire.verdicts. */
export const L7_VERDICTS = ["forwarded", "denied", "error"] as const;

/** What a connection fixes for its records (and the cookie of the verdict then current). */
export type L7Context = L7ContextInput;

/** A batch as it crosses to the main thread (`nums.buffer` is transferred). */
export interface L7BatchWire {
  n: number;
  /** N records of F.SIZE numbers (see F). */
  nums: Float64Array;
  strings: string[];
  contexts: L7Context[];
  /** Requests by verdict, in L7_VERDICTS' order. */
  verdicts: number[];
  /** Requests per latency bucket (L7_LATENCY_BUCKETS, then one above the last), and their sum (s). */
  latency: number[];
  latencySum: number;
}

/** A record's numbers (string fields are indexes into `strings`, -1: none). */
const F = {
  CTX: 0,
  METHOD: 1,
  URL: 2,
  HOST: 3,
  PROTOCOL: 4,
  CODE: 5,
  ALLOWED: 6,
  LATENCY: 7,
  ERROR: 8,
  RULE: 9,
  TIME: 10,
  SIZE: 11,
} as const;

/**
 * Where a record comes from: a connection of the Worker. The writer keeps the `l7*` fields (where
 * the connection's context is in the current batch).
 */
export interface L7Source {
  o: { ip: string; port: number; epId: number; srcIdentity: number; dstIdentity: number };
  client: { ip: string; port: number };
  direction: "ingress" | "egress";
  /** The last verdict's cookie and rule. */
  cookie: number;
  rule: number;
  l7Batch: number;
  l7Ctx: number;
  l7Cookie: number;
}

/** The Worker's side: records in, batches out. */
export class L7BatchWriter {
  #nums = new Float64Array(256 * F.SIZE);
  #n = 0;
  #strings: string[] = [];
  #index = new Map<string, number>();
  /** Per string field (method, url, host, protocol): its last string and index in this batch. */
  #lastS: (string | undefined)[] = [undefined, undefined, undefined, undefined];
  #lastI = [0, 0, 0, 0];
  #contexts: L7Context[] = [];
  #verdicts = [0, 0, 0];
  #latency: number[] = new Array(L7_LATENCY_BUCKETS.length + 1).fill(0);
  #latencySum = 0;
  /** The batch being written (a context index holds within its batch only). */
  #seq = 1;

  get size(): number {
    return this.#n;
  }

  /** One request `src` served, ended at `atMs` (ms since the epoch). */
  add(src: L7Source, rec: RequestRecord, atMs: number): void {
    if (src.l7Batch !== this.#seq || src.l7Cookie !== src.cookie) {
      const o = src.o;
      src.l7Ctx = this.#contexts.push({
        client: src.client,
        server: { ip: o.ip, port: o.port },
        epId: o.epId,
        direction: src.direction,
        srcIdentity: o.srcIdentity,
        dstIdentity: o.dstIdentity,
        cookie: src.cookie,
      }) - 1;
      src.l7Batch = this.#seq, src.l7Cookie = src.cookie;
    }
    if ((this.#n + 1) * F.SIZE > this.#nums.length) {
      const more = new Float64Array(this.#nums.length * 2);
      more.set(this.#nums);
      this.#nums = more;
    }
    const p = this.#n++ * F.SIZE, v = this.#nums;
    v[p + F.CTX] = src.l7Ctx;
    v[p + F.METHOD] = this.#field(0, rec.method);
    v[p + F.URL] = this.#field(1, rec.url);
    v[p + F.HOST] = this.#field(2, rec.host);
    v[p + F.PROTOCOL] = this.#field(3, rec.protocol);
    v[p + F.CODE] = rec.code;
    v[p + F.ALLOWED] = rec.allowed ? 1 : 0;
    v[p + F.LATENCY] = rec.latencyMs;
    v[p + F.ERROR] = rec.error === undefined ? -1 : this.#str(rec.error);
    v[p + F.RULE] = rec.allowed ? src.rule : -1;
    v[p + F.TIME] = atMs;
    // The metrics: as L7Proxy counts a record of the event loop (a 403 is a denial, not an error).
    this.#verdicts[rec.error !== undefined && rec.code !== 403 ? 2 : rec.allowed ? 0 : 1]!++;
    const s = rec.latencyMs / 1000;
    let b = 0;
    while (b < L7_LATENCY_BUCKETS.length && s > L7_LATENCY_BUCKETS[b]!) b++;
    this.#latency[b]!++;
    this.#latencySum += s;
  }

  /** A field's string index: the last one's when it is that string (no hashing), else #str. */
  #field(f: number, s: string): number {
    if (this.#lastS[f] === s) return this.#lastI[f]!;
    const i = this.#str(s);
    this.#lastS[f] = s, this.#lastI[f] = i;
    return i;
  }

  #str(s: string): number {
    let i = this.#index.get(s);
    if (i === undefined) {
      i = this.#strings.push(s) - 1;
      this.#index.set(s, i);
    }
    return i;
  }

  /** The batch written so far (undefined: none), and a new one begun. */
  take(): L7BatchWire | undefined {
    if (this.#n === 0) return undefined;
    const wire: L7BatchWire = {
      n: this.#n,
      nums: this.#nums,
      strings: this.#strings,
      contexts: this.#contexts,
      verdicts: this.#verdicts,
      latency: this.#latency,
      latencySum: this.#latencySum,
    };
    this.#nums = new Float64Array(this.#nums.length);
    this.#n = 0;
    this.#strings = [];
    this.#index.clear();
    this.#lastS.fill(undefined);
    this.#contexts = [];
    this.#verdicts = [0, 0, 0];
    this.#latency = new Array(L7_LATENCY_BUCKETS.length + 1).fill(0);
    this.#latencySum = 0;
    this.#seq++;
    return wire;
  }
}

/** The main thread's side: a batch read in place, a record object made only when asked. */
export class L7Batch {
  readonly wire: L7BatchWire;

  constructor(wire: L7BatchWire) {
    const need = wire.n * F.SIZE;
    if (!(wire.nums instanceof Float64Array) || wire.nums.length < need) {
      throw new RangeError(`Invalid L7 record batch: ${wire.n} records need ${need} numbers`);
    }
    this.wire = wire;
  }

  get size(): number {
    return this.wire.n;
  }

  get contexts(): number {
    return this.wire.contexts.length;
  }

  context(j: number): L7Context {
    return this.wire.contexts[j]!;
  }

  /** The context of record i. */
  contextOf(i: number): number {
    return this.wire.nums[i * F.SIZE + F.CTX]!;
  }

  allowed(i: number): boolean {
    return this.wire.nums[i * F.SIZE + F.ALLOWED] === 1;
  }

  /** When record i's request ended (ms since the epoch). */
  timeMs(i: number): number {
    return this.wire.nums[i * F.SIZE + F.TIME]!;
  }

  /** Record i as the event loop's path makes it. */
  record(i: number): L7Record {
    const v = this.wire.nums, s = this.wire.strings, p = i * F.SIZE;
    const c = this.wire.contexts[v[p + F.CTX]!]!;
    const error = v[p + F.ERROR]!;
    return {
      method: s[v[p + F.METHOD]!]!,
      url: s[v[p + F.URL]!]!,
      host: s[v[p + F.HOST]!]!,
      protocol: s[v[p + F.PROTOCOL]!] as RequestRecord["protocol"],
      code: v[p + F.CODE]!,
      allowed: v[p + F.ALLOWED] === 1,
      latencyMs: v[p + F.LATENCY]!,
      ...(error >= 0 ? { error: s[error]! } : {}),
      client: c.client,
      server: c.server,
      epId: c.epId,
      direction: c.direction,
      srcIdentity: c.srcIdentity,
      dstIdentity: c.dstIdentity,
      cookie: c.cookie,
      rule: v[p + F.RULE]!,
    };
  }
}
