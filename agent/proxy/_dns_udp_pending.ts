// The DNS proxy UDP Worker's per-query state (dns_udp_worker.ts), pooled: a query's Pending, its
// bytes, its client's sockaddr and its parsed question are reused objects and buffers, not made
// anew per datagram. Made per query they were what V8's scavenges copied (the Worker's young
// generation kept ~0.5 MB of them at every scavenge, and copied them twice before they died in
// the old generation: sampled with includeObjectsCollectedByMajorGC over `bench dns`), and the
// scavenge pauses grew with them. Reuse is safe only if nothing acts on a query after it was given
// back: a query goes back only once answered (finish()), when it is in no leg's flight (the legs
// take it out first) and no longer awaited from the main thread (the Worker checks `qid`); `seq`
// moves on every take, for whoever must tell one use from the next. It decides nothing.

import type { OrigDestination } from "../datapath/proxy_maps.ts";
import * as S from "../sys/sockets_ffi.ts";
import type { DnsQuery } from "./dns_message.ts";
import type { Pending } from "./_dns_udp_legs.ts";

/** Queries up to this size use the pooled buffer (larger ones get their own). */
const MSG_BYTES = 512;
/** Given-back queries kept for reuse at most (more in flight at once are made and dropped). */
const KEEP = 1024;

/** No destination (a pooled query between uses). */
export const NO_DEST: OrigDestination = Object.freeze({
  ip: "",
  port: 0,
  epId: 0,
  dir: 0,
  srcIdentity: 0,
  dstIdentity: 0,
  cookie: 0,
});
const NO_CLIENT = Object.freeze({ ip: "", port: 0 });

/** A pooled query: its buffers and views (a view is remade only when the length changes). */
export interface PooledPending extends Pending {
  seq: number;
  /** The main thread's question id it awaits an answer for (0: none). */
  qid: number;
  /** Its own question object, filled by the query memo (DnsUdpMemo.queryInto()). */
  own: DnsQuery;
  msgBuf: Uint8Array;
  addrBuf: Uint8Array;
}

export class PendingPool {
  readonly #free: PooledPending[] = [];
  #seq = 0;
  /** Taken and not given back (tests, and a bound on what a leak would cost). */
  out = 0;

  /** A query for the datagram `msg` from `from` (both copied: they are receive slots). */
  take(fd: number, msg: Uint8Array, from: Uint8Array, started: number): PooledPending {
    const p = this.#free.pop() ?? fresh();
    this.out++;
    p.seq = ++this.#seq;
    p.fd = fd;
    p.started = started;
    const len = msg.length;
    if (len > MSG_BYTES) p.msg = msg.slice();
    else {
      if (p.msg.buffer !== p.msgBuf.buffer || p.msg.length !== len) {
        p.msg = p.msgBuf.subarray(0, len);
      }
      p.msg.set(msg);
    }
    if (p.addr.length !== from.length) p.addr = p.addrBuf.subarray(0, from.length);
    p.addr.set(from);
    return p;
  }

  /** Gives p back: it must be in no leg's flight and awaited by nothing. */
  give(p: PooledPending): void {
    this.out--;
    p.qid = 0;
    p.upId = -1;
    p.q = undefined;
    p.qv = -1;
    p.cookie = undefined;
    p.answer = undefined;
    p.bytes = undefined;
    p.tr = undefined;
    p.o = NO_DEST;
    p.client = NO_CLIENT;
    if (this.#free.length < KEEP) this.#free.push(p);
  }
}

function fresh(): PooledPending {
  const msgBuf = new Uint8Array(MSG_BYTES), addrBuf = new Uint8Array(S.SOCKADDR_SIZE);
  // Every field set here, in one order: one object shape for all of them.
  return {
    fd: -1,
    addr: addrBuf.subarray(0, 0),
    msg: msgBuf.subarray(0, 0),
    o: NO_DEST,
    client: NO_CLIENT,
    started: 0,
    q: undefined,
    qv: -1,
    cookie: undefined,
    answer: undefined,
    bytes: undefined,
    tr: undefined,
    upId: -1,
    deadline: 0,
    resendAt: 0,
    resends: 0,
    seq: 0,
    qid: 0,
    own: { id: 0, name: "", type: "", typeCode: 0, raw: msgBuf.subarray(0, 0) },
    msgBuf,
    addrBuf,
  };
}
