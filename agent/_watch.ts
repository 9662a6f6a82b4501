/**
 * List-then-watch over one kvstore prefix, the way every agent subsystem follows cluster state:
 * a full listing (`snapshot`) and then each change (`event`); when the store's history no longer
 * reaches the watch's position (`WatchCompactedError`) or the watch fails, it lists again, so the
 * handler converges. Handlers must be idempotent: a change may be seen twice around a listing.
 * A failing handler is logged and does not stop the watch.
 */

import type { KvEntry, KvStore, WatchEvent } from "./kvstore/kvstore.ts";
import { WatchCompactedError } from "./kvstore/errors.ts";
import type { Logger } from "./log.ts";

export interface WatchHandlers {
  /** Every key under the prefix: replace what is known. */
  snapshot(entries: KvEntry[]): void | Promise<void>;
  event(e: WatchEvent): void | Promise<void>;
}

export interface PrefixWatch {
  /** Settles after the first snapshot was handled (rejects if it could not be listed). */
  ready: Promise<void>;
  /** Settles when the watch has ended (abort or store closed). */
  done: Promise<void>;
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });

export function watchPrefix(
  store: KvStore,
  prefix: string,
  handlers: WatchHandlers,
  opts: { signal: AbortSignal; log: Logger },
): PrefixWatch {
  const { signal, log } = opts;
  let settle!: { resolve: () => void; reject: (e: unknown) => void };
  const ready = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
  let first = true;
  const done = (async () => {
    while (!signal.aborted) {
      try {
        const cursor = await store.cursor();
        await handlers.snapshot(await store.list(prefix));
        if (first) settle.resolve();
        first = false;
        for await (const e of store.watch(prefix, { after: cursor, signal })) {
          try {
            await handlers.event(e);
          } catch (err) {
            log.error("cannot apply a kvstore change", { prefix, key: keyOf(e), error: err });
          }
        }
        return;
      } catch (err) {
        if (signal.aborted) return;
        if (first) {
          settle.reject(err);
          return;
        }
        if (err instanceof WatchCompactedError) {
          log.warn("watch history compacted: listing again", { prefix });
        } else {
          log.error("watch failed: listing again", { prefix, error: err });
          await sleep(500, signal);
        }
      }
    }
  })();
  done.then(() => {
    if (first) settle.reject(new Error(`Watch of "${prefix}" ended before its first listing`));
  });
  ready.catch(() => {}); // callers await it; an early failure must not be "unhandled" meanwhile
  return { ready, done };
}

function keyOf(e: WatchEvent): string {
  return e.type === "put" ? e.entry.key : e.key;
}
