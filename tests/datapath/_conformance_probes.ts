// The probes of the kernel conformance lab (_conformance_lab.ts): listeners at the probes'
// destinations, one probe as real packets from the prober of its source place (TCP connect + echo,
// UDP request + reply, ICMP/ICMPv6 echo seen by the destination's prober), a timeout retried once
// unless the node's drop events say that very packet was dropped, and the AUDIT policy-verdict
// events of the node. It computes no verdict: the packet's fate is the outcome.
import { EventReader, type PacketEvent } from "../../agent/datapath/events.ts";
import type { Place } from "./_conformance_netns.ts";
import type { Prober } from "./_prober_client.ts";
import type { ProbeResult } from "./_prober.ts";

export interface Probe {
  proto: "tcp" | "udp" | "icmp";
  from: Place;
  to: Place;
  src: string;
  dst: string;
  /** TCP/UDP port, or the ICMP type. */
  port: number;
}

const TIMEOUT_MS = 400;
const token = () =>
  Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0"))
    .join("");

export class LabProbes {
  /** The prober at a place of the lab. */
  readonly #prober: (p: Place) => Prober;
  /** The node's pinned events map (read from the first takeAudits() on). */
  readonly #eventsMap: string;
  #reader: EventReader | undefined;
  #audits: PacketEvent[] = [];
  #drops: PacketEvent[] = [];
  #lost = 0;

  constructor(prober: (p: Place) => Prober, eventsMap: string) {
    this.#prober = prober;
    this.#eventsMap = eventsMap;
  }

  /** Starts the listeners the probes need at their destinations. */
  async listen(probes: readonly Probe[]): Promise<void> {
    const done = new Set<string>();
    await Promise.all(probes.flatMap((p) => {
      if (p.proto === "icmp") return [];
      const dst = this.#prober(p.to);
      const key = `${dst.netns}|${p.proto}|${p.proto === "udp" ? p.dst : ""}|${p.port}`;
      if (done.has(key)) return [];
      done.add(key);
      return [dst.listen(p.proto, p.port, p.proto === "udp" ? p.dst : undefined)];
    }));
  }

  /** One attempt: "ok" when the packet (and for TCP, UDP and echo its reply) got through. */
  async #once(p: Probe): Promise<ProbeResult> {
    const from = this.#prober(p.from);
    const base = { src: p.src, dst: p.dst, timeoutMs: TIMEOUT_MS };
    if (p.proto !== "icmp") return await from.call({ op: p.proto, port: p.port, ...base });
    const t = token();
    const sent = await from.call({ op: "icmp", type: p.port, token: t, ...base });
    if (sent !== "sent") return sent;
    return await this.#prober(p.to).call({
      op: "seen",
      type: p.port,
      token: t,
      timeoutMs: TIMEOUT_MS,
    });
  }

  /** KernelLab.takeAudits(). */
  takeAudits(): PacketEvent[] {
    this.#poll();
    const out = this.#audits;
    this.#audits = [];
    this.#drops = [];
    return out;
  }

  #poll(): void {
    this.#reader ??= new EventReader(this.#eventsMap, {
      onEvent: (e) => {
        if (e.type === "policy-verdict" && e.verdict === "audit") this.#audits.push(e);
        if (e.type === "drop") this.#drops.push(e);
      },
      onLost: (_cpu, n) => this.#lost += n,
    });
    this.#reader.poll();
    if (this.#lost > 0) throw new Error(`The lab lost ${this.#lost} datapath events`);
  }

  /** KernelLab.probe(). */
  async probe(
    p: Probe,
    isDrop?: (drops: readonly PacketEvent[]) => boolean,
  ): Promise<{ allowed: boolean; attempts: string[] }> {
    const attempts: string[] = [];
    for (let i = 0; i < 2; i++) {
      const r = await this.#once(p);
      attempts.push(r);
      if (r === "ok") return { allowed: true, attempts };
      if (r === "timeout" && isDrop) {
        this.#poll();
        if (isDrop(this.#drops)) return { allowed: false, attempts: [...attempts, "drop event"] };
      }
      if (r !== "timeout") {
        throw new Error(
          `Probe ${p.proto} ${p.src} -> ${p.dst}:${p.port} failed: ${r} (a lab problem, not a drop)`,
        );
      }
    }
    return { allowed: false, attempts };
  }

  close(): void {
    this.#reader?.close();
  }
}
