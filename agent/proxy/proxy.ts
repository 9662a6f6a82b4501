// The node's L7 proxy, inside the agent process: one TCP listener per (endpoint, direction, port)
// that L7 rules redirect, on a port the proxy allocates (the kernel DNATs redirected connections
// to it, bpf/lib/proxy.h). For each accepted connection it reads the original destination and
// both identities from the kernel (ProxyMaps), judges every HTTP request with the policy engine
// (the one evaluator), and makes the upstream connection from a port it picks after writing the
// proxy-NAT entry, so the kernel gives that leg the client's address and identity. Each request
// becomes an L7 record (for flows) and metrics. It owns its listeners and sockets, not policy.

import net from "node:net";
import type { PolicyEngine } from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { Counter, Histogram, Metrics } from "../metrics.ts";
import type { OrigDestination, ProxyMaps } from "../datapath/proxy_maps.ts";
import { DIR_EGRESS, DIR_INGRESS } from "../datapath/codecs.ts";
import { type RequestRecord, serveHttpConnection, type Stream } from "./http_conn.ts";

export type Direction = "ingress" | "egress";

/** One judged request with where it came from and went. */
export interface L7Record extends RequestRecord {
  client: { ip: string; port: number };
  server: { ip: string; port: number };
  epId: number;
  direction: Direction;
  srcIdentity: number;
  dstIdentity: number;
  /** The deciding entry's cookie (the redirecting entry's for a denial), and its L7 rule index. */
  cookie: number;
  rule: number;
}

export interface L7ProxyOptions {
  engine: PolicyEngine;
  /** The kernel's proxy maps; without them no connection can be matched (all are closed). */
  maps: ProxyMaps | undefined;
  log: Logger;
  metrics: Metrics;
  /** Listener ports are taken from here upwards (default 15001). */
  basePort?: number;
  /** Upstream local ports, outside the kernel's ephemeral range (default 61000–65535). */
  upstreamPorts?: [number, number];
  headerTimeoutMs?: number;
  idleTimeoutMs?: number;
  onRecord?: (r: L7Record) => void;
}

interface Listener {
  port: number;
  listener: Deno.Listener;
  epId: number;
}

export { DIR_EGRESS, DIR_INGRESS };

/** A Deno TCP connection as the proxy's Stream. */
export function denoStream(conn: Deno.Conn): Stream {
  return {
    read: async () => {
      const b = new Uint8Array(65536);
      const n = await conn.read(b).catch(() => null);
      return n === null ? null : b.subarray(0, n);
    },
    write: async (b) => {
      for (let off = 0; off < b.length;) off += await conn.write(b.subarray(off));
    },
    close: () => {
      try {
        conn.close();
      } catch { /* closed */ }
    },
  };
}

function nodeStream(sock: net.Socket): Stream {
  const it = sock[Symbol.asyncIterator]();
  return {
    read: async () => {
      try {
        const r = await it.next();
        if (r.done) return null;
        const v = r.value as Uint8Array;
        return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
      } catch {
        return null;
      }
    },
    write: (b) =>
      new Promise<void>((resolve, reject) => sock.write(b, (err) => err ? reject(err) : resolve())),
    close: () => sock.destroy(),
  };
}

export class L7Proxy {
  readonly #o: L7ProxyOptions;
  readonly #listeners = new Map<string, Listener>();
  readonly #pending = new Map<string, Promise<number>>();
  readonly #requests: Counter;
  readonly #latency: Histogram;
  #gateway = "";
  #nextUpstream: number;
  readonly #busyUpstream = new Set<number>();
  #closed = false;
  onRecord: ((r: L7Record) => void) | undefined;

  constructor(o: L7ProxyOptions) {
    this.#o = o;
    this.onRecord = o.onRecord;
    this.#nextUpstream = (o.upstreamPorts ?? [61000, 65535])[0];
    this.#requests = o.metrics.counter(
      "cilia_l7_requests_total",
      "L7 requests judged by the proxy, by protocol and verdict (forwarded, denied, error)",
    );
    this.#latency = o.metrics.histogram(
      "cilia_l7_request_duration_seconds",
      "time from a request's head to its response's head through the L7 proxy",
      [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    );
  }

  /** The address upstream connections are made from (the pod gateway on cilia_host). */
  set gateway(ip: string) {
    this.#gateway = ip;
  }

  /** The proxy port for redirects of (endpoint, direction, port): listening before it returns. */
  listen(epId: number, direction: Direction, port: number): Promise<number> {
    const key = `${epId}/${direction}/${port}`;
    const have = this.#listeners.get(key);
    if (have) return Promise.resolve(have.port);
    let p = this.#pending.get(key);
    if (!p) {
      p = this.#open(key, epId).finally(() => this.#pending.delete(key));
      this.#pending.set(key, p);
    }
    return p;
  }

  // deno-lint-ignore require-await
  async #open(key: string, epId: number): Promise<number> {
    if (this.#closed) throw new Error("The L7 proxy is closed");
    const used = new Set([...this.#listeners.values()].map((l) => l.port));
    for (let port = this.#o.basePort ?? 15001; port < 30000; port++) {
      if (used.has(port)) continue;
      let listener: Deno.Listener;
      try {
        listener = Deno.listen({ hostname: "0.0.0.0", port, transport: "tcp" });
      } catch (err) {
        if (err instanceof Deno.errors.AddrInUse) continue;
        throw err;
      }
      const l = { port, listener, epId };
      this.#listeners.set(key, l);
      this.#accept(l);
      this.#o.log.info("L7 proxy listening", { listener: key, port });
      return port;
    }
    throw new Error(`No free port for the L7 proxy listener "${key}"`);
  }

  /** Closes the listeners of an endpoint that is gone. */
  closeEndpoint(epId: number): void {
    for (const [key, l] of this.#listeners) {
      if (l.epId !== epId) continue;
      this.#listeners.delete(key);
      l.listener.close();
    }
  }

  get ports(): { key: string; port: number }[] {
    return [...this.#listeners].map(([key, l]) => ({ key, port: l.port }));
  }

  async #accept(l: Listener): Promise<void> {
    try {
      for await (const conn of l.listener) this.#handle(conn, l.port).catch(() => {});
    } catch {
      // listener closed
    }
  }

  async #handle(conn: Deno.Conn, proxyPort: number): Promise<void> {
    const remote = conn.remoteAddr as Deno.NetAddr;
    let orig: OrigDestination | undefined;
    try {
      orig = this.#o.maps?.original(remote.hostname, remote.port, proxyPort);
    } catch {
      orig = undefined;
    }
    if (!orig) { // not redirected by the kernel: nothing to judge it by (fail closed)
      conn.close();
      return;
    }
    const o = orig;
    const direction: Direction = o.dir === DIR_EGRESS ? "egress" : "ingress";
    const client = { ip: remote.hostname, port: remote.port };
    let last = { cookie: o.cookie, rule: -1 };
    await serveHttpConnection(denoStream(conn), {
      connect: () => this.#connect(o, client.ip),
      judge: (req) => {
        const r = this.#o.engine.query({
          endpoint: o.epId,
          direction,
          peer: direction === "ingress" ? o.srcIdentity : o.dstIdentity,
          proto: 6,
          port: o.port,
          http: { method: req.method, path: req.path, host: req.host, headers: req.headers },
        });
        last = { cookie: r.cookie || o.cookie, rule: r.l7.rule };
        return r.verdict === "allow" || r.verdict === "audit" ||
          (r.verdict === "redirect" && r.l7.status === "allowed");
      },
      onRequest: (rec) => {
        const verdict = rec.error !== undefined && rec.code !== 403
          ? "error"
          : rec.allowed
          ? "forwarded"
          : "denied";
        this.#requests.inc({ protocol: "http", verdict });
        this.#latency.observe(rec.latencyMs / 1000);
        this.onRecord?.({
          ...rec,
          client,
          server: { ip: o.ip, port: o.port },
          epId: o.epId,
          direction,
          srcIdentity: o.srcIdentity,
          dstIdentity: o.dstIdentity,
          cookie: last.cookie,
          rule: rec.allowed ? last.rule : -1,
        });
      },
      ...(this.#o.headerTimeoutMs !== undefined
        ? { headerTimeoutMs: this.#o.headerTimeoutMs }
        : {}),
      ...(this.#o.idleTimeoutMs !== undefined ? { idleTimeoutMs: this.#o.idleTimeoutMs } : {}),
    });
  }

  #takeUpstreamPort(): number {
    const [lo, hi] = this.#o.upstreamPorts ?? [61000, 65535];
    for (let i = 0; i <= hi - lo; i++) {
      const p = this.#nextUpstream;
      this.#nextUpstream = p >= hi ? lo : p + 1;
      if (!this.#busyUpstream.has(p)) {
        this.#busyUpstream.add(p);
        return p;
      }
    }
    throw new Error("No free upstream port");
  }

  /** The upstream leg: the proxy-NAT entry first, then the connect from that very port. */
  async #connect(o: OrigDestination, clientIp: string, attempt = 0): Promise<Stream> {
    const localPort = this.#takeUpstreamPort();
    const server = { ip: o.ip, port: o.port };
    const release = () => {
      setTimeout(() => {
        try {
          this.#o.maps?.deleteNat({ server, localPort });
        } catch { /* maps closed */ }
        this.#busyUpstream.delete(localPort);
      }, 2000);
    };
    this.#o.maps?.writeNat({
      server,
      localPort,
      clientIp,
      identity: o.srcIdentity,
      epId: o.epId,
      dir: o.dir,
    });
    try {
      const sock = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({
          host: o.ip,
          port: o.port,
          ...(this.#gateway ? { localAddress: this.#gateway } : {}),
          localPort,
        });
        s.setNoDelay(true);
        s.once("connect", () => resolve(s));
        s.once("error", reject);
      });
      sock.on("error", () => {});
      sock.once("close", release);
      return nodeStream(sock);
    } catch (err) {
      release();
      if ((err as { code?: string }).code === "EADDRINUSE" && attempt < 16) {
        return this.#connect(o, clientIp, attempt + 1);
      }
      throw err;
    }
  }

  close(): void {
    this.#closed = true;
    for (const l of this.#listeners.values()) {
      try {
        l.listener.close();
      } catch { /* closed */ }
    }
    this.#listeners.clear();
  }
}
