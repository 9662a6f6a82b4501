// The connections of the L7 proxy's HTTP Worker (http_worker.ts): each one a synchronous
// Http1Machine with its client leg and, once a request was allowed, its upstream leg (a port of
// the shared range, bound, the proxy-NAT entry written, then connected: the kernel gives that leg
// the client's address and identity). It moves bytes between the legs and the machine, keeps
// what a write could not take (bounded, with backpressure on the other leg), sets each fd's
// epoll interest, fires deadlines, gives an upstream port and its proxy-NAT entry back 2 s after
// its leg closed, and marks every fd it owns in the shared fd map (the main thread closes them if
// the Worker dies). A connection that opens with the HTTP/2 preface (h2c, gRPC) is not served
// here: it is relayed byte for byte over a unix socket to the main thread's h2 path, after a line
// that says what the kernel said of it (its original destination and client). It judges
// nothing: `judge` decides.
//
// Its parts: the connection's record and output helpers (_http_worker_conn.ts) and its upstream
// legs with their ports' delayed release (_http_worker_legs.ts).

import type { OrigDestination, ProxyMaps } from "../datapath/proxy_maps.ts";
import { DIR_EGRESS } from "../datapath/codecs.ts";
import * as S from "../sys/sockets_ffi.ts";
import type { Head } from "./http1.ts";
import { Http1Machine, type MachineIo } from "./http1_machine.ts";
import { prefaceState } from "./_h2_preface.ts";
import type { HttpRequestInfo, RequestRecord } from "./http_records.ts";
import type { UpstreamPorts } from "./_upstream_ports.ts";
import { append, concat, type Conn } from "./_http_worker_conn.ts";
import { socketError, UpstreamLegs } from "./_http_worker_legs.ts";
import * as IO from "./_http_worker_io.ts";

export type { Conn } from "./_http_worker_conn.ts";

/** Queued output above HIGH stops reads of the other leg; above MAX_PENDING closes (a guard). */
const HIGH = 1 << 20, MAX_PENDING = 1 << 22;
const IN = S.EPOLLIN | S.EPOLLRDHUP;

export interface HttpConnsOptions {
  maps: ProxyMaps;
  /** One bit per fd the Worker owns (shared with the main thread). */
  fds: Int32Array;
  ports: UpstreamPorts;
  judge(c: Conn, req: HttpRequestInfo, head: Head): boolean | undefined;
  /** A request ended (the connection's fields and last verdict complete its record). */
  onRecord(c: Conn, rec: RequestRecord): void;
  headerTimeoutMs?: number;
  idleTimeoutMs?: number;
  /** The main thread's unix socket for h2c connections (none: they are closed). */
  relay?: string;
}

const EMPTY = new Uint8Array(0);
const encoder = new TextEncoder();

export class HttpConns {
  readonly maps: ProxyMaps;
  readonly #o: HttpConnsOptions;
  readonly #byFd: (Conn | undefined)[] = [];
  readonly #conns = new Set<Conn>();
  readonly #legs: UpstreamLegs;

  constructor(o: HttpConnsOptions) {
    this.#o = o;
    this.maps = o.maps;
    this.#legs = new UpstreamLegs(o.maps, o.ports);
  }

  /** Marks `fd` as the Worker's in the shared fd map. */
  own(fd: number): void {
    if (fd >= 0 && fd < this.#o.fds.length * 32) Atomics.or(this.#o.fds, fd >>> 5, 1 << (fd & 31));
  }

  /** Unmarks `fd` (before it is closed). */
  release(fd: number): void {
    if (fd >= 0 && fd < this.#o.fds.length * 32) {
      Atomics.and(this.#o.fds, fd >>> 5, ~(1 << (fd & 31)));
    }
  }

  #close(fd: number): void {
    if (fd < 0) return;
    IO.ctl(S.EPOLL_CTL_DEL, fd, 0);
    this.release(fd);
    IO.closeFd(fd);
    this.#byFd[fd] = undefined;
  }

  /** A redirected client connection (its original destination known). */
  add(
    fd: number,
    init: { o: OrigDestination; client: { ip: string; port: number }; gateway: string },
    now: number,
  ): void {
    this.own(fd);
    const c: Conn = {
      m: undefined as unknown as Http1Machine,
      io: undefined as unknown as MachineIo,
      sniff: EMPTY,
      relay: false,
      ...init,
      direction: init.o.dir === DIR_EGRESS ? "egress" : "ingress",
      cookie: init.o.cookie,
      rule: -1,
      hop2: undefined,
      key: `${init.o.epId}/${init.o.dir}/${init.o.srcIdentity}/${init.o.dstIdentity}/` +
        `${init.o.ip}/${init.o.port}\n`,
      cfd: fd,
      up: -1,
      localPort: 0,
      upConnected: false,
      outClient: null,
      outUp: null,
      clientEvents: IN,
      upEvents: 0,
      clientEof: false,
      upEof: false,
      broken: false,
      lastHead: undefined,
      lastKey: "",
      l7Batch: 0,
      l7Ctx: 0,
      l7Cookie: 0,
    };
    c.io = this.#io(c);
    c.m = new Http1Machine(c.io, {
      judge: (req, head) => this.#o.judge(c, req, head),
      onRequest: (rec) => this.#o.onRecord(c, rec),
      now,
      ...(this.#o.headerTimeoutMs !== undefined
        ? { headerTimeoutMs: this.#o.headerTimeoutMs }
        : {}),
      ...(this.#o.idleTimeoutMs !== undefined ? { idleTimeoutMs: this.#o.idleTimeoutMs } : {}),
    });
    this.#byFd[fd] = c;
    this.#conns.add(c);
    if (IO.ctl(S.EPOLL_CTL_ADD, fd, c.clientEvents) !== 0) c.m.close();
  }

  #io(c: Conn): MachineIo {
    return {
      toClient: (b) => {
        if (c.outClient) c.outClient = append(c.outClient, b);
        else {
          const left = IO.writeNow(c.cfd, b);
          if (left === undefined) return void (c.broken = true);
          c.outClient = left;
        }
        if (c.outClient && c.outClient.length > MAX_PENDING) c.broken = true;
      },
      toUpstream: (b) => {
        if (c.up < 0) return;
        if (c.outUp || !c.upConnected) c.outUp = append(c.outUp, b);
        else {
          const left = IO.writeNow(c.up, b);
          if (left === undefined) return; // (the read side sees the error)
          c.outUp = left;
        }
        if (c.outUp && c.outUp.length > MAX_PENDING) c.broken = true;
      },
      connect: () => this.#connect(c),
      closeUpstream: () => {
        this.#close(c.up);
        this.#legs.releaseLater(c);
        c.up = -1, c.outUp = null;
      },
      closeClient: () => {
        this.#close(c.cfd);
        this.#conns.delete(c);
      },
    };
  }

  /** The upstream leg connected (_http_worker_legs.ts), then marked and watched. */
  #connect(c: Conn): string | undefined {
    const failed = this.#legs.connect(c);
    if (failed !== undefined) return failed;
    this.own(c.up);
    c.upEvents = IN | S.EPOLLOUT;
    this.#byFd[c.up] = c;
    if (IO.ctl(S.EPOLL_CTL_ADD, c.up, c.upEvents) !== 0) c.broken = true;
    return undefined;
  }

  /**
   * After each call into a machine: a broken leg closes the connection; each fd is watched for
   * writing while its output waits (or it is still connecting), for reading while it has not
   * ended, the machine wants its bytes and the other leg's queue is below HIGH.
   */
  settle(c: Conn): void {
    if (c.broken) c.m.close();
    if (c.m.closed) return;
    const readC = c.m.wantsClient && !c.clientEof && (c.outUp?.length ?? 0) < HIGH;
    const ev = (readC ? IN : 0) | (c.outClient ? S.EPOLLOUT : 0);
    if (ev !== c.clientEvents) IO.ctl(S.EPOLL_CTL_MOD, c.cfd, ev), c.clientEvents = ev;
    if (c.up < 0) return;
    const readU = !c.upEof && (c.outClient?.length ?? 0) < HIGH;
    const uev = (readU ? IN : 0) | (c.outUp || !c.upConnected ? S.EPOLLOUT : 0);
    if (uev !== c.upEvents) IO.ctl(S.EPOLL_CTL_MOD, c.up, uev), c.upEvents = uev;
  }

  /** An epoll event on a leg's fd. */
  event(fd: number, ev: number, now: number): void {
    const c = this.#byFd[fd];
    if (!c) return;
    this.#handle(c, fd, ev, now);
    this.settle(c);
  }

  #handle(c: Conn, fd: number, ev: number, now: number): void {
    const isUp = fd === c.up;
    if (ev & S.EPOLLOUT) {
      if (isUp) {
        if (!c.upConnected && ev & (S.EPOLLERR | S.EPOLLHUP)) {
          return c.m.upstreamFailed(socketError(fd), now);
        }
        c.upConnected = true;
        if (c.outUp) {
          const left = IO.writeNow(fd, c.outUp);
          if (left === undefined) return c.m.close();
          c.outUp = left;
        }
      } else if (c.outClient) {
        const left = IO.writeNow(fd, c.outClient);
        if (left === undefined) return c.m.close();
        c.outClient = left;
      }
    }
    if (!(ev & (S.EPOLLIN | S.EPOLLRDHUP | S.EPOLLHUP | S.EPOLLERR)) || this.#byFd[fd] !== c) {
      return;
    }
    // (A paused or ended leg still reports HUP/ERR: read it only when its bytes are wanted.)
    if (isUp ? c.upEof : !c.m.wantsClient && !(ev & (S.EPOLLHUP | S.EPOLLERR))) return;
    if (isUp && !c.upConnected) {
      if (ev & (S.EPOLLERR | S.EPOLLHUP)) return c.m.upstreamFailed(socketError(fd), now);
      c.upConnected = true;
    }
    const n = IO.readScratch(fd);
    if (n < 0 && (IO.errno() === S.EAGAIN || IO.errno() === S.EINTR)) return;
    if (c.relay) {
      if (n <= 0) return this.#endRelay(c);
      const b = IO.scratch.subarray(0, n);
      return isUp ? c.io.toClient(b) : c.io.toUpstream(b);
    }
    if (isUp) {
      if (n > 0) return c.m.upstream(IO.scratch.subarray(0, n), now);
      c.upEof = true; // (read no more; the machine drops the leg when it is done with it)
      return c.m.upstreamEnd(now);
    }
    if (n > 0) {
      const b = IO.scratch.subarray(0, n);
      return c.sniff ? this.#sniffed(c, b, now) : c.m.client(b, now);
    }
    if (n < 0) return c.m.close();
    c.clientEof = true;
    if (c.sniff && c.sniff.length > 0) c.m.client(c.sniff, now);
    c.sniff = null;
    c.m.clientEnd(now);
  }

  /** The first bytes: HTTP/1 goes to the machine, the h2c preface to the relay. */
  #sniffed(c: Conn, b: Uint8Array, now: number): void {
    const all = c.sniff!.length > 0 ? concat(c.sniff!, b) : b;
    const st = prefaceState(all);
    if (st === "partial") return void (c.sniff = all.slice());
    c.sniff = null;
    if (st === "no") return c.m.client(all, now);
    const fd = this.#o.relay ? IO.connectUnix(this.#o.relay) : -1;
    if (fd < 0) return c.m.close(); // (no h2 path: closed, never passed unchecked)
    this.own(fd);
    c.relay = true, c.up = fd, c.upConnected = true, c.upEvents = IN;
    this.#byFd[fd] = c;
    if (IO.ctl(S.EPOLL_CTL_ADD, fd, IN) !== 0) return this.#endRelay(c);
    const ctx = encoder.encode(`${JSON.stringify({ o: c.o, client: c.client })}\n`);
    c.io.toUpstream(concat(ctx, all));
  }

  #endRelay(c: Conn): void {
    this.#close(c.up);
    c.up = -1, c.outUp = null;
    c.m.close();
  }

  /** Fires the connections' deadlines and gives back upstream ports whose time came. */
  tick(now: number): void {
    for (const c of this.#conns) {
      if (!c.relay && c.m.deadline <= now) c.m.tick(now), this.settle(c);
    }
    this.#legs.releaseDue(now);
  }

  get size(): number {
    return this.#conns.size;
  }

  /** Closes every connection (the Worker stops) and gives back every upstream port. */
  closeAll(): void {
    for (const c of [...this.#conns]) c.m.close();
    this.tick(Infinity);
  }
}
