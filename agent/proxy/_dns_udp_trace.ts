// Per-query stage timestamps of the DNS proxy's UDP Worker (dns_udp_worker.ts), for finding where
// its latency goes (`deno task bench dns --trace DIR`). Off unless the agent runs with
// CILIA_DNS_TRACE=FILE: then every query gets one row of CLOCK_REALTIME times in µs since the
// epoch (the client's own times, taken the same way, join on the DNS id): the kernel's arrival
// time on the proxy socket (SO_TIMESTAMPNS, read with the datagram: _dns_mmsg.ts), the Worker's read, the upstream send, the answer's
// kernel arrival on the leg and its read, the reply's send, whether the main thread was asked,
// and the epoll batch it came in. Rows are appended as JSON lines when the Worker idles (an
// epoll_wait that timed out) or stops (at most MAX_ROWS kept). It decides nothing.

const COLS = 12;
const MAX_ROWS = 200_000;
/** Column numbers of a row. */
export const T = {
  id: 0,
  kin: 1,
  read: 2,
  fwd: 3,
  ukin: 4,
  uread: 5,
  sent: 6,
  main: 7,
  batch: 8,
  waitFrom: 9,
  waitTo: 10,
  port: 11,
} as const;

export class DnsUdpTrace {
  readonly #path: string;
  readonly #rows = new Float64Array(COLS * MAX_ROWS);
  #n = 0;
  /** Rows already written. */
  #written = 0;
  readonly #lib = Deno.dlopen("libc.so.6", {
    clock_gettime: { parameters: ["i32", "pointer"], result: "i32" },
  });
  /** struct timespec as 32-bit halves: read without a BigInt per clock read (its garbage). */
  readonly #ts = new Uint32Array(4);
  readonly #tsp = Deno.UnsafePointer.of(this.#ts);
  /** The current epoll batch: size, when the wait began and when it returned. */
  readonly #batch = [0, 0, 0];

  private constructor(path: string) {
    this.#path = path;
  }

  /** A trace when CILIA_DNS_TRACE names a file, else undefined. */
  static fromEnv(): DnsUdpTrace | undefined {
    let path: string | undefined;
    try {
      path = Deno.env.get("CILIA_DNS_TRACE");
    } catch {
      return undefined;
    }
    return path ? new DnsUdpTrace(path) : undefined;
  }

  /** CLOCK_REALTIME in µs since the epoch. */
  now(): number {
    this.#lib.symbols.clock_gettime(0, this.#tsp);
    const ts = this.#ts;
    return (ts[0]! + ts[1]! * 2 ** 32) * 1e6 + ts[2]! / 1e3;
  }

  /** An epoll_wait that began at `from` returned `n` events. */
  batch(n: number, from: number): void {
    const b = this.#batch;
    b[0] = n;
    b[1] = from;
    b[2] = this.now();
  }

  /**
   * A new row for a query (its first two bytes are the id) from the sockaddr `from`, which arrived
   * at `kin` (the kernel's time stamp, µs); -1 when full.
   */
  query(msg: Uint8Array, from: Uint8Array, kin: number): number {
    const read = this.now();
    if (this.#n >= MAX_ROWS) return -1;
    const r = this.#n++ * COLS, rows = this.#rows;
    rows[r + T.id] = msg.length >= 2 ? (msg[0]! << 8) | msg[1]! : -1;
    rows[r + T.kin] = kin;
    rows[r + T.read] = read;
    rows[r + T.batch] = this.#batch[0]!;
    rows[r + T.waitFrom] = this.#batch[1]!;
    rows[r + T.waitTo] = this.#batch[2]!;
    rows[r + T.port] = (from[2]! << 8) | from[3]!;
    return r;
  }

  /** Sets column `col` of row `r` to now (or to `v`). */
  mark(r: number | undefined, col: number, v?: number): void {
    if (r === undefined || r < 0) return;
    this.#rows[r + col] = v ?? this.now();
  }

  /** Adds to column `col` of row `r` (the main-thread counter). */
  add(r: number | undefined, col: number, v: number): void {
    if (r !== undefined && r >= 0) this.#rows[r + col]! += v;
  }

  /** Appends the rows not yet written as JSON lines (call when idle: it blocks). */
  flush(): void {
    // In chunks: the text of every row at once outlived the Worker's scavenges (MBs copied).
    while (this.#written < this.#n) {
      const end = Math.min(this.#n, this.#written + 1000);
      let text = "";
      for (let i = this.#written; i < end; i++) {
        text += JSON.stringify(Array.from(this.#rows.subarray(i * COLS, (i + 1) * COLS))) + "\n";
      }
      this.#written = end;
      try {
        Deno.writeTextFileSync(this.#path, text, { append: true });
      } catch { /* diagnostics only */ }
    }
  }

  /** Writes what is left and closes the library. */
  close(): void {
    this.flush();
    this.#lib.close();
  }
}
