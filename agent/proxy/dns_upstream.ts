// The DNS proxy's upstream legs: how an allowed query reaches the server the pod asked and how
// its answer is found again. UDP: one socket per (client pod, identity, judged endpoint and
// direction, server), bound once on the pod gateway with one proxy-NAT entry written before its
// first datagram (so a server pod sees the client's address, as in Cilium), reused by every later
// query and closed after it idled; no socket, subprocess or map write per query. TCP: one
// connection per client TCP connection, opened on its first allowed query (through the L7 proxy's
// upstream connect, which writes the proxy-NAT entry first), pipelined, 2-byte length framing.
// It judges nothing and learns nothing (dns_proxy.ts does).
//
// Rules (fail closed):
// 1. Each query in flight on a leg gets an id of the proxy's choosing (random, unique on that
//    leg); an answer is taken only when it comes from that leg's server, carries such an id and
//    passes parseAnswer() against the query (dns_message.ts rule 2); the pod gets it back with its
//    own id, otherwise unchanged. Anything else is ignored.
// 2. A query not answered within the timeout, or whose leg fails, resolves to an error string
//    (the proxy answers SERVFAIL); a leg never outlives close().

import type net from "node:net";
import type { Buffer } from "node:buffer";
import type { OrigDestination } from "../datapath/proxy_maps.ts";
import { type DnsAnswer, type DnsQuery, parseAnswer } from "./dns_message.ts";
import type { DnsProxyMaps } from "./_dns_proxy_options.ts";
import { raiseReceiveBuffer } from "../sys/sock_buf.ts";

export type Forwarded = { answer: DnsAnswer; bytes: Uint8Array } | string;

/** A node Buffer's bytes as a Uint8Array (no copy). */
export const u8 = (b: Buffer) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);

interface Waiter {
  q: DnsQuery;
  resolve: (r: Forwarded) => void;
  deadline: number;
  what: string;
  timeoutMs: number;
}

/**
 * Queries in flight on one leg, by the id the proxy gave them (rule 1). Timeouts: one sweep
 * timer while anything is in flight, not one timer per query (the hot path); the Map keeps
 * insertion order and every query on a leg has the same timeout, so the sweep stops at the
 * first query that is not due.
 */
export class InFlight {
  readonly #byId = new Map<number, Waiter>();
  #sweep: ReturnType<typeof setInterval> | undefined;

  get size(): number {
    return this.#byId.size;
  }

  /** The query's bytes with a fresh id, and its outcome. */
  add(
    q: DnsQuery,
    timeoutMs: number,
    what: string,
  ): { bytes: Uint8Array; done: Promise<Forwarded> } {
    if (this.#byId.size >= 0x8000) {
      return {
        bytes: new Uint8Array(),
        done: Promise.resolve(`too many queries in flight to ${what}`),
      };
    }
    let id = (Math.random() * 0x10000) | 0;
    while (this.#byId.has(id)) id = (id + 1) & 0xffff;
    const bytes = q.raw.slice();
    bytes[0] = id >> 8;
    bytes[1] = id & 0xff;
    const done = new Promise<Forwarded>((resolve) => {
      const deadline = performance.now() + timeoutMs;
      this.#byId.set(id, { q: { ...q, id }, resolve, deadline, what, timeoutMs });
    });
    this.#sweep ??= setInterval(() => this.#expire(), Math.min(100, timeoutMs / 4));
    return { bytes, done };
  }

  #expire(now = performance.now()): void {
    for (const [id, w] of this.#byId) {
      if (w.deadline > now) break;
      this.#byId.delete(id);
      w.resolve(`no answer from ${w.what} in ${w.timeoutMs} ms`);
    }
    this.#stopWhenIdle();
  }

  #stopWhenIdle(): void {
    if (this.#byId.size > 0) return;
    clearInterval(this.#sweep);
    this.#sweep = undefined;
  }

  /** Rule 1: settles the query this datagram answers, if it is one. */
  take(bytes: Uint8Array): void {
    if (bytes.length < 12) return;
    const id = (bytes[0]! << 8) | bytes[1]!;
    const w = this.#byId.get(id);
    if (!w) return;
    const answer = parseAnswer(w.q, bytes);
    if (!answer) return;
    this.#byId.delete(id); // the sweep stops at its next tick when nothing is left
    const out = bytes.slice();
    const orig = w.q.raw;
    out[0] = orig[0]!;
    out[1] = orig[1]!;
    w.resolve({ answer, bytes: out });
  }

  failAll(reason: string): void {
    for (const w of this.#byId.values()) w.resolve(reason);
    this.#byId.clear();
    this.#stopWhenIdle();
  }
}

interface UdpLeg {
  sock: Deno.DatagramConn;
  localPort: number;
  server: { ip: string; port: number };
  /** The server as a send() address and as text (made once per leg, not per query). */
  addr: Deno.NetAddr;
  what: string;
  inflight: InFlight;
  lastUsed: number;
}

export interface UdpUpstreamsOptions {
  maps: DnsProxyMaps | undefined;
  timeoutMs: number;
  /** A leg with nothing in flight for this long is closed (default 30 s). */
  idleMs?: number;
  /** Each leg's UDP receive buffer (bytes; 0 or none: the system's). Best effort. */
  receiveBuffer?: number;
}

/** The UDP legs, pooled per (client, identity, endpoint, direction, server). */
export class UdpUpstreams {
  readonly #o: UdpUpstreamsOptions;
  readonly #legs = new Map<string, UdpLeg | Promise<UdpLeg>>();
  #gateway = "0.0.0.0";
  #gateway6 = "";
  #sweeper: ReturnType<typeof setInterval> | undefined;

  constructor(o: UdpUpstreamsOptions) {
    this.#o = o;
  }

  set gateway(ip: string) {
    this.#gateway = ip;
  }

  /** The IPv6 pod gateway ("" = none: legs to IPv6 servers bind "::"). */
  set gateway6(ip: string) {
    this.#gateway6 = ip;
  }

  get size(): number {
    return this.#legs.size;
  }

  forward(q: DnsQuery, o: OrigDestination, clientIp: string): Promise<Forwarded> {
    const key = `${clientIp}/${o.srcIdentity}/${o.epId}/${o.dir}/${o.ip}:${o.port}`;
    const got = this.#legs.get(key);
    // The hot path: the leg is open, no await before the query is on its way.
    if (got !== undefined && !(got instanceof Promise)) return this.#send(key, got, q);
    return this.#forwardOpening(key, got, q, o, clientIp);
  }

  async #forwardOpening(
    key: string,
    pending: Promise<UdpLeg> | undefined,
    q: DnsQuery,
    o: OrigDestination,
    clientIp: string,
  ): Promise<Forwarded> {
    const got = pending ?? this.#open(key, o, clientIp);
    if (!pending) this.#legs.set(key, got);
    let leg: UdpLeg;
    try {
      leg = await got;
    } catch (err) {
      if (this.#legs.get(key) === got) this.#legs.delete(key);
      return `upstream error: ${(err as Error).message}`;
    }
    return this.#send(key, leg, q);
  }

  #send(key: string, leg: UdpLeg, q: DnsQuery): Promise<Forwarded> {
    leg.lastUsed = performance.now();
    const { bytes, done } = leg.inflight.add(q, this.#o.timeoutMs, leg.what);
    if (bytes.length > 0) {
      leg.sock.send(bytes, leg.addr).catch((err) =>
        this.#drop(key, leg, `upstream error: ${(err as Error).message}`)
      );
    }
    return done;
  }

  // deno-lint-ignore require-await
  async #open(key: string, o: OrigDestination, clientIp: string): Promise<UdpLeg> {
    const hostname = o.ip.includes(":") ? this.#gateway6 || "::" : this.#gateway;
    const sock = Deno.listenDatagram({ transport: "udp", hostname, port: 0 });
    const server = { ip: o.ip, port: o.port };
    const localPort = (sock.addr as Deno.NetAddr).port;
    if (this.#o.receiveBuffer) {
      raiseReceiveBuffer(localPort, o.ip.includes(":") ? 6 : 4, this.#o.receiveBuffer);
    }
    const leg: UdpLeg = {
      sock,
      localPort,
      server,
      addr: { transport: "udp", hostname: o.ip, port: o.port },
      what: `${o.ip}:${o.port}`,
      inflight: new InFlight(),
      lastUsed: performance.now(),
    };
    try {
      this.#o.maps?.writeNat({
        server,
        localPort: leg.localPort,
        clientIp,
        identity: o.srcIdentity,
        epId: o.epId,
        dir: o.dir,
      });
    } catch (err) {
      sock.close();
      throw err;
    }
    this.#legs.set(key, leg);
    (async () => {
      // One buffer, reused (take() copies what it keeps before the next receive).
      const buf = new Uint8Array(65536);
      for (;;) {
        const [m, from] = await sock.receive(buf);
        const f = from as Deno.NetAddr;
        if (f.hostname !== server.ip || f.port !== server.port) continue; // 1.
        leg.inflight.take(m);
      }
    })().catch((err) => this.#drop(key, leg, `upstream error: ${(err as Error).message}`));
    this.#sweeper ??= setInterval(
      () => this.sweep(),
      Math.max(100, (this.#o.idleMs ?? 30_000) / 2),
    );
    return leg;
  }

  #drop(key: string, leg: UdpLeg, reason: string): void {
    if (this.#legs.get(key) === leg) this.#legs.delete(key);
    leg.inflight.failAll(reason);
    try {
      leg.sock.close();
    } catch { /* closed */ }
    try {
      this.#o.maps?.deleteNat({ server: leg.server, localPort: leg.localPort });
    } catch { /* maps closed */ }
  }

  /** Closes legs that idled (nothing in flight) longer than idleMs. */
  sweep(now = performance.now()): void {
    const idle = this.#o.idleMs ?? 30_000;
    for (const [key, leg] of this.#legs) {
      if (leg instanceof Promise) continue;
      if (leg.inflight.size === 0 && now - leg.lastUsed >= idle) this.#drop(key, leg, "closed");
    }
    if (this.#legs.size === 0) {
      clearInterval(this.#sweeper);
      this.#sweeper = undefined;
    }
  }

  close(): void {
    clearInterval(this.#sweeper);
    this.#sweeper = undefined;
    for (const [key, leg] of this.#legs) {
      if (leg instanceof Promise) {
        leg.then((l) => this.#drop(key, l, "the DNS proxy is closed"), () => {});
      } else this.#drop(key, leg, "the DNS proxy is closed");
    }
    this.#legs.clear();
  }
}

/** Connects the TCP leg for a client connection (the L7 proxy's, NAT entry first). */
export type TcpConnect = (o: OrigDestination, clientIp: string) => Promise<net.Socket>;

/** Splits a byte stream into 2-byte length-prefixed DNS messages. */
export class Frames {
  #buf = new Uint8Array(0);

  /** The complete messages so far; a zero length frame is an error (malformed). */
  push(chunk: Uint8Array): Uint8Array[] | "malformed" {
    const all = new Uint8Array(this.#buf.length + chunk.length);
    all.set(this.#buf);
    all.set(chunk, this.#buf.length);
    const out: Uint8Array[] = [];
    let at = 0;
    while (all.length - at >= 2) {
      const len = (all[at]! << 8) | all[at + 1]!;
      if (len < 12) return "malformed";
      if (all.length - at - 2 < len) break;
      out.push(all.slice(at + 2, at + 2 + len));
      at += 2 + len;
    }
    this.#buf = all.slice(at);
    return out;
  }

  get pending(): number {
    return this.#buf.length;
  }
}

export const frame = (msg: Uint8Array): Uint8Array => {
  const out = new Uint8Array(msg.length + 2);
  out[0] = msg.length >> 8;
  out[1] = msg.length & 0xff;
  out.set(msg, 2);
  return out;
};

/** The TCP leg of one client connection: opened on first use, pipelined (rule 1). */
export class TcpUpstream {
  readonly #connect: TcpConnect;
  readonly #timeoutMs: number;
  readonly #inflight = new InFlight();
  #sock: Promise<net.Socket> | undefined;
  #closed = false;

  constructor(connect: TcpConnect, timeoutMs: number) {
    this.#connect = connect;
    this.#timeoutMs = timeoutMs;
  }

  async forward(q: DnsQuery, o: OrigDestination, clientIp: string): Promise<Forwarded> {
    if (this.#closed) return "the client connection is closed";
    this.#sock ??= this.#open(o, clientIp);
    let sock: net.Socket;
    try {
      sock = await this.#sock;
    } catch (err) {
      return `upstream error: ${(err as Error).message}`;
    }
    const { bytes, done } = this.#inflight.add(q, this.#timeoutMs, `${o.ip}:${o.port} (TCP)`);
    if (bytes.length > 0) sock.write(frame(bytes));
    return await done;
  }

  async #open(o: OrigDestination, clientIp: string): Promise<net.Socket> {
    const sock = await this.#connect(o, clientIp);
    const frames = new Frames();
    sock.on("data", (chunk: Buffer) => {
      const msgs = frames.push(u8(chunk));
      if (msgs === "malformed") {
        this.#inflight.failAll(`malformed TCP frame from ${o.ip}:${o.port}`);
        sock.destroy();
        return;
      }
      for (const m of msgs) this.#inflight.take(m);
    });
    sock.on("error", () => {});
    sock.on("close", () => {
      this.#inflight.failAll(`${o.ip}:${o.port} closed the TCP connection`);
      this.#sock = undefined;
    });
    if (this.#closed) sock.destroy();
    return sock;
  }

  close(): void {
    this.#closed = true;
    this.#inflight.failAll("the client connection is closed");
    this.#sock?.then((s) => s.destroy(), () => {});
  }
}
