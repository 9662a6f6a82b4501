/**
 * Retries work that failed until it succeeds, with exponential backoff: `kick()` after a failure
 * schedules a run (100 ms, then twice as long after every run that still left work, up to 10 s);
 * a run that leaves nothing to do resets the delay. It knows nothing of what it retries: the
 * regenerator uses it to bring endpoints whose datapath write failed to their desired state.
 * No timer is left after `close()`.
 */

export interface RetryLoopOptions {
  /** Does the work; resolves to true when work remains (then the loop runs again later). */
  run: () => Promise<boolean>;
  minMs?: number;
  maxMs?: number;
  onError?: (err: unknown) => void;
}

export class RetryLoop {
  readonly #o: Required<Omit<RetryLoopOptions, "onError">> & Pick<RetryLoopOptions, "onError">;
  #delay: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #running: Promise<void> | undefined;
  #closed = false;
  /** Runs done so far (status and tests). */
  runs = 0;

  constructor(opts: RetryLoopOptions) {
    this.#o = { minMs: 100, maxMs: 10_000, ...opts };
    this.#delay = this.#o.minMs;
  }

  /** The delay before the next run, when one is scheduled. */
  get nextDelayMs(): number | undefined {
    return this.#timer === undefined ? undefined : this.#delay;
  }

  /** Schedules a run unless one is scheduled or running. */
  kick(): void {
    if (this.#closed || this.#timer !== undefined || this.#running !== undefined) return;
    this.#timer = setTimeout(async () => {
      this.#timer = undefined;
      const run = this.#runOnce();
      this.#running = run.then(() => {});
      const again = await run;
      this.#running = undefined;
      if (again) this.kick();
    }, this.#delay);
  }

  /** One run; resolves to whether another is needed. */
  async #runOnce(): Promise<boolean> {
    let again = true;
    try {
      this.runs++;
      again = await this.#o.run();
    } catch (err) {
      this.#o.onError?.(err);
    }
    if (this.#closed) return false;
    this.#delay = again ? Math.min(this.#delay * 2, this.#o.maxMs) : this.#o.minMs;
    return again;
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }
}
