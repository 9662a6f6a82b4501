// The record path's cache of event contexts (fast_lines.ts `EventContext`): what every IPv4
// record with the same header fields (type, reason, endpoint, identities, direction, protocol,
// verdict, match, policy port, cookie, family, conntrack state, service id) and peer endpoint
// shares — both sides, the policy, the service, the verdict and the pre-encoded parts of its line.
// Looked up by a hash of those fields with no object per record; built once per context by the
// caller. Bounded: it starts again past CONTEXT_LIMIT, and the owner clears it when endpoints,
// services or the policy change. Pure, no I/O.

import type { EventContext } from "./fast_lines.ts";

/** Contexts kept before the cache starts again. */
const CONTEXT_LIMIT = 8192;

export class ContextCache {
  #buckets = new Map<number, EventContext[]>();
  #count = 0;

  /**
   * The context of the record at `at` of `view` whose peer is endpoint `other` (0: none);
   * `make()` builds it on a miss.
   */
  get(
    view: DataView,
    at: number,
    other: number,
    make: (key: number[]) => EventContext,
  ): EventContext {
    const w0 = view.getUint32(at, true), src = view.getUint32(at + 4, true);
    const dst = view.getUint32(at + 8, true), w3 = view.getUint32(at + 16, true);
    const dport = view.getUint16(at + 22, true), cookie = view.getUint32(at + 24, true);
    const ct = view.getUint32(at + 36, true); // family, ct_state, svc_id
    let h = (w0 ^ Math.imul(src, 0x9e3779b1) ^ Math.imul(dst, 0x85ebca6b)) >>> 0;
    h = (h ^ Math.imul(w3 ^ (dport << 16) ^ ct, 0xc2b2ae35) ^ Math.imul(cookie, 0x27d4eb2f)) >>> 0;
    h = (h ^ Math.imul(other, 0x165667b1)) >>> 0;
    const bucket = this.#buckets.get(h);
    if (bucket) {
      for (const c of bucket) {
        const k = c.key;
        if (
          k[0] === w0 && k[1] === src && k[2] === dst && k[3] === w3 && k[4] === dport &&
          k[5] === cookie && k[6] === ct && k[7] === other
        ) return c;
      }
    }
    const ctx = make([w0, src, dst, w3, dport, cookie, ct, other]);
    if (this.#count >= CONTEXT_LIMIT) this.clear();
    this.#count++;
    const now = this.#buckets.get(h); // make() may have cleared the cache
    if (now) now.push(ctx);
    else this.#buckets.set(h, [ctx]);
    return ctx;
  }

  clear(): void {
    this.#buckets.clear();
    this.#count = 0;
  }
}
