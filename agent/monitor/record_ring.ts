// The monitor's flow history without an object per event: the last `capacity` kernel records are
// kept as bytes in one slab, with their time and their context (both sides and the policy, shared
// by many events); a flow object is made only when a query reads it. Flows that come as objects
// (DNS, tests) are kept as they are; the L7 proxy's batches come with a maker (pushMade), each
// flow made when first read. Same counts as FlowRing (seen, size, overwritten). It decides
// nothing. This module is browser compatible.

import { decodeEventAt } from "../datapath/events.ts";
import type { EventContext } from "./fast_lines.ts";
import { buildFlow, type Flow } from "./flow.ts";

/** Bytes kept per record: the header and 64 captured bytes (what the kernel sends). */
export const RECORD_BYTES = 104;

export class RecordRing {
  readonly capacity: number;
  readonly #slab: Uint8Array;
  readonly #words: Uint32Array;
  #src: ArrayBufferLike | undefined;
  #srcWords: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
  readonly #view: DataView;
  readonly #lens: Uint8Array;
  readonly #times: Float64Array;
  readonly #ctx: (EventContext | undefined)[];
  readonly #flows: (Flow | undefined)[];
  /** Flows to make on demand: the maker and the argument it takes. */
  readonly #makers: (((i: number) => Flow) | undefined)[];
  readonly #makerArgs: Int32Array;
  readonly #nodeName: string;
  #seq = 0;

  constructor(capacity: number, nodeName: string) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`Invalid flow buffer size ${capacity}: expected a positive integer`);
    }
    this.capacity = capacity;
    this.#nodeName = nodeName;
    this.#slab = new Uint8Array(capacity * RECORD_BYTES);
    this.#view = new DataView(this.#slab.buffer);
    this.#words = new Uint32Array(this.#slab.buffer);
    this.#lens = new Uint8Array(capacity);
    this.#times = new Float64Array(capacity);
    this.#ctx = new Array(capacity);
    this.#flows = new Array(capacity);
    this.#makers = new Array(capacity);
    this.#makerArgs = new Int32Array(capacity);
  }

  /**
   * Keeps a copy of the record (`length` bytes at `at` of `src`, a multiple of 4 from the start
   * of its buffer as ring records are) seen at `timeMs`.
   */
  pushRecord(src: Uint8Array, at: number, length: number, timeMs: number, ctx: EventContext): void {
    const slot = this.#seq++ % this.capacity;
    const n = Math.min(length, RECORD_BYTES);
    if (src.buffer !== this.#src) {
      this.#src = src.buffer;
      this.#srcWords = new Uint32Array(src.buffer, 0, src.buffer.byteLength >>> 2);
    }
    const from = (src.byteOffset + at) >>> 2, to = (slot * RECORD_BYTES) >>> 2;
    const words = this.#words, srcWords = this.#srcWords;
    for (let i = 0; i < (n + 3) >>> 2; i++) words[to + i] = srcWords[from + i]!;
    this.#lens[slot] = n;
    this.#times[slot] = timeMs;
    this.#ctx[slot] = ctx;
    this.#flows[slot] = undefined;
    this.#makers[slot] = undefined;
  }

  push(flow: Flow): void {
    const slot = this.#seq++ % this.capacity;
    this.#flows[slot] = flow;
    this.#ctx[slot] = undefined;
    this.#makers[slot] = undefined;
  }

  /**
   * `count` flows in order, flow i made by `make(i)` when first read; those that would be
   * overwritten at once are counted, never made.
   */
  pushMade(count: number, make: (i: number) => Flow): void {
    const skip = Math.max(0, count - this.capacity);
    this.#seq += skip;
    for (let i = skip; i < count; i++) {
      const slot = this.#seq++ % this.capacity;
      this.#flows[slot] = undefined;
      this.#ctx[slot] = undefined;
      this.#makers[slot] = make;
      this.#makerArgs[slot] = i;
    }
  }

  get seen(): number {
    return this.#seq;
  }

  get size(): number {
    return Math.min(this.#seq, this.capacity);
  }

  get overwritten(): number {
    return Math.max(0, this.#seq - this.capacity);
  }

  #flowAt(slot: number): Flow {
    const kept = this.#flows[slot];
    if (kept) return kept;
    const make = this.#makers[slot];
    if (make) {
      const flow = make(this.#makerArgs[slot]!);
      this.#flows[slot] = flow;
      this.#makers[slot] = undefined;
      return flow;
    }
    const ctx = this.#ctx[slot]!;
    const e = decodeEventAt(this.#view, slot * RECORD_BYTES, this.#lens[slot]!);
    const flow = buildFlow(e, {
      nodeName: this.#nodeName,
      now: new Date(this.#times[slot]!).toISOString(),
      source: ctx.source,
      destination: ctx.destination,
      policy: ctx.policy,
      service: ctx.service,
      verdict: ctx.verdict,
    });
    this.#flows[slot] = flow; // asked once, kept until overwritten
    return flow;
  }

  /** The held flows, oldest first. */
  toArray(): Flow[] {
    const out: Flow[] = [];
    for (let s = this.#seq - this.size; s < this.#seq; s++) {
      out.push(this.#flowAt(s % this.capacity));
    }
    return out;
  }
}
