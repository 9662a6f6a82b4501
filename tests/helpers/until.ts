// Waiting in a test for a condition that other work (a watch, a timer) makes true.

/** Waits until `cond()` holds, checking every 5 ms; an error naming `what` after `ms`. */
export async function until(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) {
      throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
}
