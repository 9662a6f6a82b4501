// The DNS proxy Worker's upstream UDP legs (dns_udp_worker.ts): one non-blocking socket per
// (client, identity, endpoint, direction, server), bound on the pod gateway with one proxy-NAT
// entry (so a server pod sees the client's address), registered in the Worker's epoll, closed
// after it idled. Each query in flight gets an id of the leg's choosing; an answer is handed on
// only when it comes from the leg's server with such an id (the Worker checks it against the
// question); a query not answered in time fails. A query without an answer is sent again (the same
// bytes and id) after `resendMs` and twice that, as resolvers do: a server whose socket buffer
// overflowed under a burst loses a datagram, not the query. It judges and learns nothing.

import type { OrigDestination, ProxyMaps } from "../datapath/proxy_maps.ts";
import * as S from "../sys/sockets_ffi.ts";
import type { DnsAnswer, DnsQuery } from "./dns_message.ts";
import { type DnsUdpTrace, T } from "./_dns_udp_trace.ts";
import { Mmsg, SLOTS } from "./_dns_mmsg.ts";

/**
 * One query from a pod, from its arrival to its answer. The Worker takes these from a pool
 * (_dns_udp_pending.ts) and gives them back once answered: a holder that may outlive that (a
 * message to the main thread, a query in flight) checks `seq`, `qid` or `upId` first.
 */
export interface Pending {
  /** The listener it came in on and the client's sockaddr (where the answer goes). */
  fd: number;
  addr: Uint8Array;
  msg: Uint8Array;
  o: OrigDestination;
  client: { ip: string; port: number };
  started: number;
  q?: DnsQuery | undefined;
  /** The version of the Worker's query memo q came from (_dns_udp_memo.ts). */
  qv?: number;
  cookie?: number | undefined;
  answer?: DnsAnswer | undefined;
  bytes?: Uint8Array | undefined;
  /** Its row in the trace (_dns_udp_trace.ts), when tracing. */
  tr?: number | undefined;
  /** In flight on a leg (forward() sets these): the leg's id for it, -1 when not in flight. */
  upId?: number;
  deadline?: number;
  resendAt?: number;
  resends?: number;
}

/** A query is sent at most this many times more. */
const MAX_RESENDS = 2;

interface Leg {
  key: string;
  fd: number;
  localPort: number;
  server: { ip: string; port: number };
  addr: Uint8Array;
  /** By the leg's id: the query itself (no object per query in flight). */
  inflight: Map<number, Pending>;
  lastUsed: number;
}

export interface DnsUdpLegsOptions {
  maps: Pick<ProxyMaps, "writeNat" | "deleteNat">;
  gateway: string;
  gateway6: string;
  receiveBuffer: number;
  timeoutMs: number;
  /** A query without an answer is sent again after this (ms; default 250), then twice that. */
  resendMs?: number;
  /**
   * An answer for p from its server, the pod's id restored; false: not p's answer (ignored).
   * `bytes` is valid during the call only (a receive slot): copy what is kept.
   */
  onAnswer: (p: Pending, bytes: Uint8Array) => boolean | void;
  onFail: (p: Pending, error: string) => void;
  /** A leg's socket was opened (open) or closed: whoever outlives the Worker can clean up after it. */
  onLeg?: (leg: LegSocket, open: boolean) => void;
  trace?: DnsUdpTrace;
}

/** A leg's socket and its proxy-NAT entry. */
export interface LegSocket {
  fd: number;
  server: { ip: string; port: number };
  localPort: number;
}

const usizes: bigint[] = [];
/** n as sendto()'s length (a BigInt), made once per length up to 64 KiB: none per datagram. */
export function usize(n: number): bigint {
  return n < 65536 ? (usizes[n] ??= BigInt(n)) : BigInt(n);
}

/** Same family, port and address (IPv6 flow label and scope ignored). */
export function sameAddr(a: Uint8Array, b: Uint8Array): boolean {
  const n = a[0] === S.AF_INET ? 8 : 24;
  if (a[0] !== b[0] || a[1] !== b[1] || a[2] !== b[2] || a[3] !== b[3]) return false;
  for (let i = n === 8 ? 4 : 8; i < n; i++) if (a[i] !== b[i]) return false;
  return true;
}

export class DnsUdpLegs {
  readonly #o: DnsUdpLegsOptions;
  readonly #legs = new Map<string, Leg>();
  readonly #byFd = new Map<number, Leg>();
  #inflight = 0;
  /**
   * No query in flight is due for a resend or its deadline before this (ms): expire() returns at
   * once until then, instead of walking every query in flight on every wake-up.
   */
  #nextDue = Infinity;
  /** The Worker's epoll instance (legs are added to it). */
  epoll = -1;
  /** The legs' batched reads (one recvmmsg per wake-up). */
  readonly #rx: Mmsg;
  readonly #ev = new Uint8Array(S.EPOLL_EVENT_SIZE);
  /** The leg the last query went on, by its client and original destination (same objects). */
  #last: { client: unknown; o: unknown; leg: Leg | undefined } = {
    client: undefined,
    o: undefined,
    leg: undefined,
  };

  constructor(o: DnsUdpLegsOptions) {
    this.#o = o;
    this.#rx = new Mmsg(o.trace ? { timestamps: true } : {});
  }

  get inflight(): number {
    return this.#inflight;
  }

  /**
   * Sends p's query on its leg (opened on first use); an error text if it cannot. `now`: the
   * caller's clock reading (performance.now()), if it has one.
   */
  forward(p: Pending, now = performance.now()): string | undefined {
    const o = p.o, last = this.#last;
    // The client's address and the original destination are reused objects while their bytes
    // repeat (_dns_udp_memo.ts, ProxyMaps.original()): then so is the leg, without a key string.
    let leg = last.client === p.client && last.o === o ? last.leg : undefined;
    if (!leg) {
      const key = `${p.client.ip}/${o.srcIdentity}/${o.epId}/${o.dir}/${o.ip}:${o.port}`;
      leg = this.#legs.get(key);
      if (!leg) {
        try {
          leg = this.#open(key, p, now);
        } catch (err) {
          return `upstream error: ${(err as Error).message}`;
        }
      }
      this.#last = { client: p.client, o, leg };
    }
    if (leg.inflight.size >= 0x8000) return `too many queries in flight to ${o.ip}:${o.port}`;
    let id = (Math.random() * 0x10000) | 0;
    while (leg.inflight.has(id)) id = (id + 1) & 0xffff;
    leg.lastUsed = now;
    if (!this.#send(leg, p.msg, id)) return `upstream error: ${S.sysError("sendto").message}`;
    p.upId = id;
    p.deadline = now + this.#o.timeoutMs;
    p.resendAt = now + this.#resendMs;
    p.resends = 0;
    leg.inflight.set(id, p);
    this.#inflight++;
    this.#nextDue = Math.min(this.#nextDue, now + Math.min(this.#resendMs, this.#o.timeoutMs));
    return undefined;
  }

  /**
   * Sends the pod's query with the leg's id: written over the pod's id for the send (the kernel
   * copies the datagram) and put back, so no copy of the query is made or kept.
   */
  #send(leg: Leg, msg: Uint8Array, id: number): boolean {
    const hi = msg[0]!, lo = msg[1]!;
    msg[0] = id >> 8;
    msg[1] = id & 0xff;
    const sent = S.libc().sendto(leg.fd, msg, usize(msg.length), 0, leg.addr, leg.addr.length);
    msg[0] = hi;
    msg[1] = lo;
    return Number(sent) >= 0;
  }

  #open(key: string, p: Pending, now: number): Leg {
    const o = p.o, v6 = o.ip.includes(":");
    const sock = S.bindUdp(v6 ? this.#o.gateway6 || "::" : this.#o.gateway, 0, {
      receiveBuffer: this.#o.receiveBuffer,
    });
    const c = S.libc();
    if (this.#o.trace) this.#rx.timestamp(sock.fd);
    const server = { ip: o.ip, port: o.port };
    const addr = new Uint8Array(S.SOCKADDR_SIZE);
    const leg: Leg = {
      key,
      fd: sock.fd,
      localPort: sock.port,
      server,
      addr: addr.subarray(0, S.encodeSockaddr(addr, o.ip, o.port)),
      inflight: new Map(),
      lastUsed: now,
    };
    try {
      this.#o.maps.writeNat({
        server,
        localPort: sock.port,
        clientIp: p.client.ip,
        identity: o.srcIdentity,
        epId: o.epId,
        dir: o.dir,
      });
      const v = new DataView(this.#ev.buffer);
      v.setUint32(0, S.EPOLLIN, true);
      v.setUint32(4, sock.fd, true);
      if (c.epoll_ctl(this.epoll, S.EPOLL_CTL_ADD, sock.fd, this.#ev) !== 0) {
        throw S.sysError("epoll_ctl");
      }
    } catch (err) {
      c.close(sock.fd);
      throw err;
    }
    this.#legs.set(key, leg);
    this.#byFd.set(sock.fd, leg);
    this.#o.onLeg?.({ fd: sock.fd, server, localPort: sock.port }, true);
    return leg;
  }

  /** Reads what the leg on `fd` received (rule: its server, an id in flight). */
  drain(fd: number): void {
    const leg = this.#byFd.get(fd);
    if (!leg) return;
    const rx = this.#rx, t = this.#o.trace;
    for (let round = 0; round < 16; round++) {
      const n = rx.receive(fd);
      if (n <= 0) return;
      for (let i = 0; i < n; i++) {
        const got = rx.data(i);
        if (!got || got.length < 12 || !sameAddr(rx.from(i), leg.addr)) continue;
        const id = (got[0]! << 8) | got[1]!;
        const p = leg.inflight.get(id);
        if (!p || p.upId !== id) continue; // (a pooled query is in flight under its own id only)
        if (t) {
          t.mark(p.tr, T.uread);
          t.mark(p.tr, T.ukin, rx.arrival(i));
        }
        got[0] = p.msg[0]!; // the pod's id, in the slot (onAnswer copies what it keeps)
        got[1] = p.msg[1]!;
        // Out of flight before onAnswer (which may give p back to the pool), back if not its answer.
        leg.inflight.delete(id);
        this.#inflight--;
        p.upId = -1;
        if (this.#o.onAnswer(p, got) === false) {
          leg.inflight.set(id, p);
          this.#inflight++;
          p.upId = id;
        }
      }
      if (n < SLOTS) return; // the socket was empty
    }
  }

  get #resendMs(): number {
    return this.#o.resendMs ?? 250;
  }

  /** Sends again the queries due for it, fails those whose time is up. */
  expire(now: number): void {
    if (this.#inflight === 0 || now < this.#nextDue) return;
    let next = Infinity;
    for (const leg of this.#legs.values()) {
      for (const p of leg.inflight.values()) { // (values(): no [id, p] array per query)
        const id = p.upId!;
        if (p.deadline! <= now) {
          leg.inflight.delete(id);
          this.#inflight--;
          p.upId = -1;
          const { ip, port } = leg.server;
          this.#o.onFail(p, `no answer from ${ip}:${port} in ${this.#o.timeoutMs} ms`);
          continue;
        }
        if (p.resendAt! <= now && p.resends! < MAX_RESENDS) {
          p.resends!++;
          p.resendAt = now + this.#resendMs * 2 ** p.resends!;
          this.#send(leg, p.msg, id);
        }
        next = Math.min(next, p.deadline!, p.resends! < MAX_RESENDS ? p.resendAt! : Infinity);
      }
    }
    this.#nextDue = next;
  }

  /** Closes legs with nothing in flight that were not used for `idleMs`. */
  sweepIdle(now: number, idleMs: number): void {
    for (const leg of this.#legs.values()) {
      if (leg.inflight.size === 0 && now - leg.lastUsed >= idleMs) this.#drop(leg, "closed");
    }
  }

  #drop(leg: Leg, reason: string): void {
    if (this.#last.leg === leg) this.#last = { client: undefined, o: undefined, leg: undefined };
    this.#legs.delete(leg.key);
    this.#byFd.delete(leg.fd);
    const inflight = [...leg.inflight.values()];
    this.#inflight -= leg.inflight.size;
    leg.inflight.clear();
    for (const p of inflight) {
      p.upId = -1;
      this.#o.onFail(p, reason);
    }
    const c = S.libc();
    c.epoll_ctl(this.epoll, S.EPOLL_CTL_DEL, leg.fd, this.#ev);
    c.close(leg.fd);
    try {
      this.#o.maps.deleteNat({ server: leg.server, localPort: leg.localPort });
    } catch { /* maps closed */ }
    this.#o.onLeg?.({ fd: leg.fd, server: leg.server, localPort: leg.localPort }, false);
  }

  close(): void {
    for (const leg of [...this.#legs.values()]) this.#drop(leg, "the DNS proxy is closed");
    this.#rx.close();
  }
}
