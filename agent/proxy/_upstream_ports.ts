// The L7 proxy's upstream local ports (each upstream leg is connected from a port of its own, the
// key of its proxy-NAT entry), shared by the agent's thread and the HTTP Worker: one bit per port
// in a SharedArrayBuffer taken and given back with atomic operations, and a shared cursor, so
// both threads pick from one range without ever picking the same port. It opens no socket.

/** Int32 slots before the bitmap: the cursor. */
const CURSOR = 0, HEADER = 1;

export class UpstreamPorts {
  readonly #a: Int32Array;
  readonly #lo: number;
  readonly #hi: number;

  /** A new range [lo, hi], or the one another thread made (`shared`: its `buffer`). */
  constructor(range: readonly [number, number], shared?: SharedArrayBuffer) {
    const [lo, hi] = range;
    if (!(Number.isInteger(lo) && Number.isInteger(hi) && 0 < lo && lo <= hi && hi < 65536)) {
      throw new RangeError(
        `Invalid upstream port range "${lo}-${hi}": expected 1 ≤ lo ≤ hi < 65536`,
      );
    }
    this.#lo = lo, this.#hi = hi;
    const words = HEADER + Math.ceil((hi - lo + 1) / 32);
    this.#a = new Int32Array(shared ?? new SharedArrayBuffer(4 * words));
    if (this.#a.length < words) throw new RangeError("The shared upstream port map is too small");
  }

  get buffer(): SharedArrayBuffer {
    return this.#a.buffer as SharedArrayBuffer;
  }

  get range(): [number, number] {
    return [this.#lo, this.#hi];
  }

  /** A free port, now taken; throws when every port of the range is in use. */
  take(): number {
    const n = this.#hi - this.#lo + 1;
    for (let i = 0; i < n; i++) {
      const at = (Atomics.add(this.#a, CURSOR, 1) >>> 0) % n;
      const w = HEADER + (at >>> 5), bit = 1 << (at & 31);
      if ((Atomics.or(this.#a, w, bit) & bit) === 0) return this.#lo + at;
    }
    throw new Error("No free upstream port");
  }

  /** Gives a taken port back. */
  release(port: number): void {
    const at = port - this.#lo;
    if (at < 0 || port > this.#hi) return;
    Atomics.and(this.#a, HEADER + (at >>> 5), ~(1 << (at & 31)));
  }
}
