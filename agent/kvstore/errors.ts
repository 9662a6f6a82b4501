/**
 * Errors the kvstore's callers branch on, and the one message shape every backend uses:
 * `Cannot put "cilia/x" in etcd at 127.0.0.1:2379: <details>`. No I/O here.
 */

/** A lease expired, was revoked or never existed: grant a new one and put its keys again. */
export class LeaseExpiredError extends Error {
  override name = "LeaseExpiredError";
  constructor(readonly lease: string, message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

/** The history before a watch cursor is gone: list again, then watch from a fresh cursor. */
export class WatchCompactedError extends Error {
  override name = "WatchCompactedError";
  constructor(readonly cursor: string, message: string) {
    super(message);
  }
}

/** Thrown by backends for a missing lease; `kvError()` turns it into a `LeaseExpiredError`. */
export class LeaseGone extends Error {
  constructor(readonly lease: string) {
    super(`lease "${lease}" expired, was revoked or never existed`);
  }
}

/** Wraps a failure of `op` on `key` (a key, prefix or lease id) in the store named `store`. */
export function kvError(op: string, key: string, store: string, cause: unknown): Error {
  if (cause instanceof WatchCompactedError || cause instanceof LeaseExpiredError) return cause;
  const detail = cause instanceof Error ? cause.message : String(cause);
  const message = `Cannot ${op} "${key}" in ${store}: ${detail}`;
  if (cause instanceof LeaseGone) return new LeaseExpiredError(cause.lease, message, { cause });
  return new Error(message, { cause });
}
