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

/** A value is larger than the backend holds: a caller error, not an unreachable store. */
export class ValueTooLargeError extends Error {
  override name = "ValueTooLargeError";
  constructor(readonly size: number, readonly limit: number, message: string) {
    super(message);
  }
}

/**
 * An operation on the store failed: it is unreachable, closed, or refused the request. Every
 * backend failure that is none of the errors above is one of these (`kvError()`), so callers
 * (the API's 503 `kvstore_unavailable`) branch on the class, never on the message.
 */
export class KvStoreError extends Error {
  override name = "KvStoreError";
  constructor(readonly op: string, readonly key: string, message: string, options?: ErrorOptions) {
    super(message, options);
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
  if (
    cause instanceof WatchCompactedError || cause instanceof LeaseExpiredError ||
    cause instanceof ValueTooLargeError
  ) return cause;
  const detail = cause instanceof Error ? cause.message : String(cause);
  const message = `Cannot ${op} "${key}" in ${store}: ${detail}`;
  if (cause instanceof LeaseGone) return new LeaseExpiredError(cause.lease, message, { cause });
  return new KvStoreError(op, key, message, { cause });
}

/** Throws a TypeError naming the first key `entries` holds twice (createAll). */
export function distinctKeys(entries: readonly { key: string }[]): void {
  const seen = new Set<string>();
  for (const { key } of entries) {
    if (seen.has(key)) throw new TypeError(`expected distinct keys, got "${key}" twice`);
    seen.add(key);
  }
}
