// The monitor's live readers and the fan-out to them: flow followers (objects, or NDJSON lines),
// raw event followers, and the lines the record path writes (fast_lines.ts), collected into large
// chunks that every unfiltered line follower shares. It never waits for a reader: each has a
// bounded queue (ring.ts) and what does not fit is lost for that reader alone, counted here and
// told to it. Followers of lines are bounded in bytes (what they hold), others in items. It
// decides nothing about flows and reads no kernel state.

import type { PacketEvent } from "../datapath/events.ts";
import { LineWriter } from "./fast_lines.ts";
import { compileFilter, type FlowFilter } from "./filter.ts";
import type { Flow } from "./flow.ts";
import { Follower } from "./ring.ts";
import { flowNdjson } from "./wire.ts";

/** How many flows (or raw events) an object follower may fall behind before it loses some. */
export const FOLLOWER_QUEUE = 65_536;
/** How many bytes of NDJSON lines a line follower may hold before it loses some (~65k flows). */
export const FOLLOWER_BYTES = 64 << 20;
/** Lines collected before they go to the line followers as one chunk. */
export const CHUNK_BYTES = 256 << 10;
/** Longest a collected line waits for more before it goes out (ms). */
const FLUSH_MS = 4;

export type LineFollower = Follower<string | Uint8Array>;
export type AnyFollower = Follower<Flow> | LineFollower | Follower<PacketEvent>;

type FlowSub =
  | { lines: false; follower: Follower<Flow>; match: (f: Flow) => boolean }
  | { lines: true; follower: LineFollower; match: (f: Flow) => boolean };

interface EventSub {
  follower: Follower<PacketEvent>;
  types: Set<string> | undefined;
}

const matchAll = () => true;
const matcher = (filter: FlowFilter | undefined) =>
  filter && (filter.include.length > 0 || filter.exclude.length > 0)
    ? compileFilter(filter)
    : matchAll;

export class Followers {
  readonly #flowSubs = new Set<FlowSub>();
  readonly #eventSubs = new Set<EventSub>();
  /** Unfiltered line followers: they share the chunks `lines` collects. */
  readonly #allLines = new Set<LineFollower>();
  /** Followers that need flow objects (filters, object followers). */
  #objectSubs = 0;
  /** Lines the record path writes for the unfiltered line followers (see flush()). */
  readonly lines = new LineWriter(CHUNK_BYTES + (64 << 10));
  #flushTimer: ReturnType<typeof setTimeout> | undefined;
  #flushedAt = 0;
  /** Flows and events lost because a follower was too far behind. */
  slowLost = 0;

  /** Whether someone follows raw events (the record path then makes event objects). */
  get wantEvents(): boolean {
    return this.#eventSubs.size > 0;
  }

  /** Whether a follower needs flow objects (filters, object followers). */
  get wantObjects(): boolean {
    return this.#objectSubs > 0;
  }

  /** Whether an unfiltered line follower wants the lines in `lines`. */
  get wantLines(): boolean {
    return this.#allLines.size > 0;
  }

  get count(): number {
    return this.#flowSubs.size + this.#eventSubs.size;
  }

  /** Whether someone follows flows (as objects or lines). */
  get wantFlows(): boolean {
    return this.#flowSubs.size > 0;
  }

  follow(filter: FlowFilter | undefined, limit: number): Follower<Flow> {
    const follower = new Follower<Flow>(limit);
    this.#flowSubs.add({ lines: false, follower, match: matcher(filter) });
    this.#objectSubs++;
    return follower;
  }

  /** Without a filter, the shared chunks of lines (bytes); with one, a line (text) per flow. */
  followLines(filter: FlowFilter | undefined, limitBytes: number): LineFollower {
    const follower: LineFollower = new Follower(limitBytes);
    const match = matcher(filter);
    this.#flowSubs.add({ lines: true, follower, match });
    if (match === matchAll) {
      this.flush(); // what was collected before this follower came is not for it
      this.#allLines.add(follower);
    } else this.#objectSubs++;
    return follower;
  }

  followEvents(types: string[] | undefined, limit: number): Follower<PacketEvent> {
    const follower = new Follower<PacketEvent>(limit);
    this.#eventSubs.add({ follower, types: types?.length ? new Set(types) : undefined });
    return follower;
  }

  unfollow(f: AnyFollower): void {
    f.close();
    for (const s of this.#flowSubs) {
      if (s.follower !== f) continue;
      this.#flowSubs.delete(s);
      if (!this.#allLines.delete(s.follower as LineFollower)) this.#objectSubs--;
    }
    for (const s of this.#eventSubs) if (s.follower === f) this.#eventSubs.delete(s);
  }

  /** A raw event to the raw followers that want its type. */
  event(e: PacketEvent): void {
    for (const s of this.#eventSubs) {
      if ((!s.types || s.types.has(e.type)) && !s.follower.offer(e)) this.slowLost++;
    }
  }

  /**
   * A flow to the flow followers; its line goes to `lines` for the unfiltered line followers
   * unless the record path wrote it there already (`lineWritten`).
   */
  flow(flow: Flow, lineWritten = false): void {
    if (!lineWritten && this.#allLines.size > 0) this.lines.writeText(flowNdjson(flow));
    let line: string | undefined;
    for (const s of this.#flowSubs) {
      if (s.lines && this.#allLines.has(s.follower)) continue;
      if (!s.match(flow)) continue;
      let ok: boolean;
      if (!s.lines) ok = s.follower.offer(flow);
      else if (!s.follower.hasRoom) ok = s.follower.offer("", 1, 1); // lost, without a line
      else {
        line ??= flowNdjson(flow);
        ok = s.follower.offer(line, 1, line.length);
      }
      if (!ok) this.slowLost++;
    }
  }

  /** Tells every follower that `count` events were lost at `source` (the kernel ring). */
  reportLost(source: string, count: number): void {
    for (const s of [...this.#eventSubs, ...this.#flowSubs]) s.follower.reportLost(source, count);
  }

  /**
   * After the record path wrote lines: a full chunk goes out now, a smaller one once FLUSH_MS
   * passed since the last (a timer sends what is left when no more lines come).
   */
  linesWritten(): void {
    if (this.lines.lines === 0) return;
    if (this.lines.size >= CHUNK_BYTES || performance.now() - this.#flushedAt >= FLUSH_MS) {
      this.flush();
    } else {
      this.#flushTimer ??= setTimeout(() => {
        this.#flushTimer = undefined;
        this.flush();
      }, FLUSH_MS);
    }
  }

  /** Collected lines → every unfiltered line follower, as one chunk (shared, never copied). */
  flush(): void {
    this.#flushedAt = performance.now();
    const chunk = this.lines.take();
    if (!chunk) return;
    const held = chunk.bytes.buffer.byteLength;
    for (const f of this.#allLines) {
      if (!f.offer(chunk.bytes, chunk.lines, held)) this.slowLost += chunk.lines;
    }
  }

  close(): void {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    for (const s of [...this.#flowSubs, ...this.#eventSubs]) s.follower.close();
    this.#flowSubs.clear();
    this.#allLines.clear();
    this.#objectSubs = 0;
    this.#eventSubs.clear();
  }
}
