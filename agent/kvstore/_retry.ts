/**
 * Bounded retry with a short jittered back-off, for sqlite's "database is locked" under
 * contention between processes and for optimistic commits that lost a race. No I/O of its own.
 */

/** Returned by an attempt that lost an optimistic race and should simply run again. */
export const AGAIN: unique symbol = Symbol("again");

const LOCKED = /database is locked|database is busy|SQLITE_BUSY/i;

export function isLocked(err: unknown): boolean {
  return err instanceof Error && LOCKED.test(err.message);
}

/**
 * Sleeps about `ms` milliseconds (±50 %), so that racing processes drift apart; returns early
 * when one of `signals` aborts.
 */
export function backoff(ms: number, ...signals: (AbortSignal | undefined)[]): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      for (const s of signals) s?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms * (0.5 + Math.random()));
    for (const s of signals) s?.addEventListener("abort", done);
  });
}

/**
 * Runs `attempt` until it returns something other than `AGAIN`, retrying "database is locked"
 * errors too, at most `maxAttempts` times; other errors propagate at once.
 */
export async function retrying<T>(
  attempt: () => Promise<T | typeof AGAIN>,
  maxAttempts = 2000,
): Promise<T> {
  let lastError: unknown = undefined;
  for (let i = 0; i < maxAttempts; i++) {
    try {
      const result = await attempt();
      if (result !== AGAIN) return result;
      lastError = undefined;
      if (i > 8) await backoff(1);
    } catch (err) {
      if (!isLocked(err)) throw err;
      lastError = err;
      await backoff(Math.min(1 + i / 8, 20));
    }
  }
  const why = lastError instanceof Error ? lastError.message : "every commit lost a race";
  throw new Error(`${why} (gave up after ${maxAttempts} attempts)`, { cause: lastError });
}
