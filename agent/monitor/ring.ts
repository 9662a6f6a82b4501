// The agent's flow history and its live readers. `FlowRing` keeps the last `capacity` items in a
// fixed array (an item pushed past capacity overwrites the oldest, and is counted). A
// `Follower` is one live reader with its own bounded queue: `publish()` never waits for a reader,
// so a slow one cannot stall the datapath's reader or the other followers; what does not fit is
// dropped for that reader alone and counted, and the reader is told how much it lost. Pure, no
// I/O. This module is browser compatible.

export class FlowRing<T> {
  readonly capacity: number;
  readonly #items: (T | undefined)[];
  /** Items ever pushed (the next item's sequence number). */
  #seq = 0;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`Invalid flow buffer size ${capacity}: expected a positive integer`);
    }
    this.capacity = capacity;
    this.#items = new Array(capacity);
  }

  push(item: T): void {
    this.#items[this.#seq % this.capacity] = item;
    this.#seq++;
  }

  /** Items pushed since start. */
  get seen(): number {
    return this.#seq;
  }

  /** Items held now. */
  get size(): number {
    return Math.min(this.#seq, this.capacity);
  }

  /** Items overwritten before anyone asked for them through a query (history that fell off). */
  get overwritten(): number {
    return Math.max(0, this.#seq - this.capacity);
  }

  /** The held items, oldest first. */
  toArray(): T[] {
    const out: T[] = [];
    for (let s = this.#seq - this.size; s < this.#seq; s++) {
      out.push(this.#items[s % this.capacity]!);
    }
    return out;
  }
}

/**
 * One live reader's queue: bounded, never blocks the writer. The bound is in units the owner
 * picks (flows for object followers, bytes for followers of NDJSON lines): an item stands for
 * `count` flows (what is counted as lost) and takes `size` units of the bound.
 */
export class Follower<T> {
  readonly #queue: T[] = [];
  /** Flows per queued item (a chunk of lines counts as its lines). */
  readonly #weights: number[] = [];
  /** Units of the bound per queued item. */
  readonly #sizes: number[] = [];
  readonly #limit: number;
  #head = 0;
  /** Flows queued and not yet taken. */
  #queued = 0;
  /** Units of the bound queued and not yet taken. */
  #used = 0;
  #wake: (() => void) | undefined;
  #closed = false;
  /** Items lost for this reader since it last heard of it, by where they were lost. */
  #lostPending = new Map<string, number>();
  /** Items dropped for this reader in total. */
  lost = 0;

  /** `limit`: the units this reader may have queued (flows unless offers say otherwise). */
  constructor(limit: number) {
    if (!(limit >= 1)) throw new RangeError(`Invalid follower limit ${limit}: expected at least 1`);
    this.#limit = limit;
  }

  /**
   * Queues an item standing for `count` flows (1, or a chunk's lines) that takes `size` units of
   * the bound (default: `count`); false (and all `count` counted as lost) when it does not fit
   * because the reader is too far behind.
   */
  offer(item: T, count = 1, size = count): boolean {
    if (this.#closed) return false;
    if (this.#used + size > this.#limit) {
      this.lost += count;
      this.reportLost("SLOW_READER", count);
      return false;
    }
    this.#queue.push(item);
    this.#weights.push(count);
    this.#sizes.push(size);
    this.#queued += count;
    this.#used += size;
    this.#wakeUp();
    return true;
  }

  /** Whether the bound has room left now (so a caller can skip preparing an item). */
  get hasRoom(): boolean {
    return !this.#closed && this.#used < this.#limit;
  }

  /** Wakes a waiting take() once (not once per item: a burst costs one wake-up). */
  #wakeUp(): void {
    const wake = this.#wake;
    if (wake) {
      this.#wake = undefined;
      wake();
    }
  }

  /** Tells this reader that `count` items were lost at `source` (e.g. the kernel ring). */
  reportLost(source: string, count: number): void {
    if (this.#closed) return;
    this.#lostPending.set(source, (this.#lostPending.get(source) ?? 0) + count);
    this.#wakeUp();
  }

  /**
   * Queued items standing for up to `max` flows (at least one item) and how many were lost
   * since the last take; waits while there is neither. Resolves with done when closed.
   */
  async take(
    max: number,
  ): Promise<{ items: T[]; lost: { source: string; count: number }[]; done: boolean }> {
    while (this.#queue.length - this.#head === 0 && this.#lostPending.size === 0 && !this.#closed) {
      await new Promise<void>((r) => this.#wake = r);
    }
    let end = this.#head, flows = 0, used = 0;
    while (end < this.#queue.length && (end === this.#head || flows + this.#weights[end]! <= max)) {
      used += this.#sizes[end]!;
      flows += this.#weights[end++]!;
    }
    const items = this.#queue.slice(this.#head, end);
    this.#head = end;
    this.#queued -= flows;
    this.#used -= used;
    if (this.#head > 4096 && this.#head * 2 > this.#queue.length) {
      this.#queue.splice(0, this.#head);
      this.#weights.splice(0, this.#head);
      this.#sizes.splice(0, this.#head);
      this.#head = 0;
    }
    const lost = [...this.#lostPending].map(([source, count]) => ({ source, count }));
    this.#lostPending.clear();
    return { items, lost, done: this.#closed && items.length === 0 && lost.length === 0 };
  }

  /** Flows queued and not yet taken. */
  get pending(): number {
    return this.#queued;
  }

  /** Units of the bound queued and not yet taken (bytes, for followers of lines). */
  get pendingSize(): number {
    return this.#used;
  }

  close(): void {
    this.#closed = true;
    this.#wakeUp();
  }
}
