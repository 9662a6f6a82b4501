/**
 * One etcd watch stream over the JSON gateway, and the cursors that resume it. A cursor is "R"
 * (every change up to revision R was seen) or "R:n" (and the first n events of revision R + 1,
 * since one revision can change several keys, as when a lease expires). Reconnecting is the
 * caller's job; this module only reports where the stream stood.
 */

import type { WatchEvent } from "./kvstore.ts";
import { WatchCompactedError } from "./errors.ts";
import {
  b64,
  type EtcdClient,
  EtcdError,
  fromJson,
  type Json,
  prefixEnd,
  readNdjson,
  toEntry,
  unb64Text,
} from "./_etcd_client.ts";

/** Where a watch stands: resume at revision `start`, skipping its first `skip` events. */
export interface WatchPosition {
  start: number;
  skip: number;
}

/** Cursor "R": everything up to revision R was seen; "R:n": also n events of revision R + 1. */
export function parseCursor(cursor: string): WatchPosition | null {
  const m = /^(\d+)(?::(\d+))?$/.exec(cursor);
  if (m === null) return null;
  return m[2] === undefined
    ? { start: Number(m[1]) + 1, skip: 0 }
    : { start: Number(m[1]) + 1, skip: Number(m[2]) };
}

/**
 * One watch stream, opened at `pos.at` (or at the current revision), yielding its events and
 * moving `pos.at` past each one, so that the caller can reopen it from there.
 */
export async function* watchStream(
  client: EtcdClient,
  prefix: string,
  { pos, signal, store }: {
    pos: { at: WatchPosition | null };
    signal: AbortSignal | undefined;
    store: string;
  },
): AsyncGenerator<WatchEvent> {
  const create: Json = {
    key: prefix === "" ? b64("\0") : b64(prefix),
    range_end: prefixEnd(prefix),
  };
  const from = pos.at;
  if (from !== null) create.start_revision = String(from.start);
  const res = await client.open("/v3/watch", { create_request: create }, signal);
  let rev = -1;
  let nth = 0; // 1-based index of the event within its revision
  const stop = signal ? AbortSignal.any([client.closing, signal]) : client.closing;
  for await (const msg of readNdjson(res.body!, stop)) {
    if (msg.error !== undefined) {
      throw fromJson(msg, 200);
    }
    const r = msg.result ?? {};
    if (r.canceled === true) throw cancelled(r, pos.at, store);
    pos.at ??= { start: Number(r.header.revision) + 1, skip: 0 };
    const events: Json[] = r.events ?? [];
    for (let i = 0; i < events.length; i++) {
      const e = events[i];
      const eventRev = Number(e.kv.mod_revision);
      nth = eventRev === rev ? nth + 1 : 1;
      rev = eventRev;
      if (rev < pos.at.start || (rev === from?.start && nth <= from.skip)) continue;
      // A revision may change several keys (a lease expiring): a cursor can point inside it.
      const more = Number(events[i + 1]?.kv.mod_revision) === rev;
      pos.at = more ? { start: rev, skip: nth } : { start: rev + 1, skip: 0 };
      const cursor = more ? `${rev - 1}:${nth}` : String(rev);
      yield e.type === "DELETE"
        ? { type: "delete", key: unb64Text(e.kv.key), revision: String(rev), cursor }
        : { type: "put", entry: toEntry(e.kv), cursor };
    }
  }
}

function cancelled(r: Json, at: WatchPosition | null, store: string): Error {
  if (r.compact_revision !== undefined) {
    const cursor = at === null ? "" : String(at.start - 1);
    return new WatchCompactedError(
      cursor,
      `Cannot resume watch from cursor "${cursor}" in ${store}: history before "${r.compact_revision}" was compacted`,
    );
  }
  return new EtcdError(2, `watch cancelled: ${r.cancel_reason ?? "no reason given"}`, 200);
}
