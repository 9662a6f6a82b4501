/**
 * Node reachability, the node half of Cilium's cilium-health: each agent echoes UDP probes on
 * its node IP at the health port (`--cluster-health-port`, default `HEALTH_PORT`) and probes
 * every other node it knows (discovery's list) at that same port over the underlay once per
 * interval, so `cilia node list` says whether a node answers, not only whether
 * its lease is kept: an agent can renew its lease through etcd while the underlay between two
 * nodes is cut. It decides nothing about traffic (the datapath never reads it) and writes no
 * records. A node is reachable when its latest probe was answered within the timeout; until
 * the first probe of a node has its answer or its timeout, its reachability is unknown. The port
 * is one per cluster, as in Cilium: node records do not carry it, so a node that listens on
 * another port than its peers probe is unreachable for them, and they for it.
 */

import type { Logger } from "../log.ts";

/** Cilium's default health port (cilium-health listens on TCP 4240); here UDP echoes. */
export const HEALTH_PORT = 4240;
/** "cilh", a probe or an answer, then the probe's sequence number (u32, big endian). */
const MAGIC = 0x63696c68;
const PROBE = 1, ANSWER = 2;

export interface Reachability {
  reachable: boolean;
  /** Round trip of the latest answered probe, ms. */
  rttMs?: number;
  checkedAt: string;
}

export interface NodeHealthOptions {
  /** This node's IP: probes and answers use it (never a pod gateway). */
  ip: string;
  /** The nodes to probe, asked again at every interval. */
  peers: () => { name: string; ip?: string | undefined }[];
  log: Logger;
  /** Where this node answers and where it probes the others (default `HEALTH_PORT`). */
  port?: number;
  intervalMs?: number;
  timeoutMs?: number;
}

export class NodeHealth {
  #o: Required<Omit<NodeHealthOptions, "log" | "peers">> & NodeHealthOptions;
  #sock: Deno.DatagramConn;
  #timer: ReturnType<typeof setInterval>;
  #seq = 0;
  #pending = new Map<
    number,
    { name: string; sent: number; timer: ReturnType<typeof setTimeout> }
  >();
  #state = new Map<string, Reachability>();
  #closed = false;
  #received: Promise<void>;

  /** Binds `ip:port` (throws when it cannot) and starts probing. */
  constructor(opts: NodeHealthOptions) {
    this.#o = { port: HEALTH_PORT, intervalMs: 3000, timeoutMs: 1000, ...opts };
    this.#sock = Deno.listenDatagram({ transport: "udp", hostname: opts.ip, port: this.#o.port });
    this.#received = this.#receive();
    this.#timer = setInterval(() => this.#probe(), this.#o.intervalMs);
    this.#probe();
  }

  /** What the latest probe of `name` found; undefined before the first one ended. */
  of(name: string): Reachability | undefined {
    return this.#state.get(name);
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    for (const p of this.#pending.values()) clearTimeout(p.timer);
    this.#pending.clear();
    this.#sock.close();
    await this.#received;
  }

  #probe(): void {
    const peers = this.#o.peers().filter((p) => p.ip !== undefined && p.ip !== this.#o.ip);
    const names = new Set(peers.map((p) => p.name));
    for (const name of this.#state.keys()) if (!names.has(name)) this.#state.delete(name);
    for (const p of peers) {
      const seq = this.#seq = (this.#seq + 1) >>> 0;
      const timer = setTimeout(() => {
        if (!this.#pending.delete(seq)) return;
        this.#state.set(p.name, { reachable: false, checkedAt: new Date().toISOString() });
      }, this.#o.timeoutMs);
      this.#pending.set(seq, { name: p.name, sent: performance.now(), timer });
      const to = { transport: "udp" as const, hostname: p.ip!, port: this.#o.port };
      // A send that fails (no route, an unreachable next hop) is a probe without an answer.
      this.#sock.send(datagram(PROBE, seq), to).catch(() => {});
    }
  }

  async #receive(): Promise<void> {
    const buf = new Uint8Array(64);
    while (!this.#closed) {
      let got: [Uint8Array, Deno.Addr];
      try {
        got = await this.#sock.receive(buf);
      } catch (err) {
        if (!this.#closed) this.#o.log.warn("node health probes stopped", { error: String(err) });
        return;
      }
      const [data, from] = got;
      if (data.length !== 9) continue;
      const v = new DataView(data.buffer, data.byteOffset, data.length);
      if (v.getUint32(0) !== MAGIC) continue;
      const seq = v.getUint32(5);
      if (data[4] === PROBE) {
        this.#sock.send(datagram(ANSWER, seq), from).catch(() => {});
      } else if (data[4] === ANSWER) {
        const p = this.#pending.get(seq);
        if (p === undefined) continue; // late: its timeout already said unreachable
        this.#pending.delete(seq);
        clearTimeout(p.timer);
        this.#state.set(p.name, {
          reachable: true,
          rttMs: Math.round((performance.now() - p.sent) * 1000) / 1000,
          checkedAt: new Date().toISOString(),
        });
      }
    }
  }
}

function datagram(kind: number, seq: number): Uint8Array {
  const d = new Uint8Array(9);
  const v = new DataView(d.buffer);
  v.setUint32(0, MAGIC);
  d[4] = kind;
  v.setUint32(5, seq);
  return d;
}
