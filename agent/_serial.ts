/**
 * One-at-a-time execution for the agent's state changes (engine, endpoints, policies): each
 * `run()` starts when the previous one has settled, whether it succeeded or failed. No I/O.
 */

export class Serial {
  #tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => T | Promise<T>): Promise<T> {
    const p = this.#tail.then(fn);
    this.#tail = p.catch(() => undefined);
    return p;
  }

  /** Resolves once everything queued so far has settled. */
  async idle(): Promise<void> {
    let tail;
    do {
      tail = this.#tail;
      await tail;
    } while (tail !== this.#tail);
  }
}
