// The demo's traffic and how it is told: the flows it sends (with what the policy should make of
// each), the datapath's events read through the agent (`GET /v1/events`: the agent owns the
// perf buffer's one reader) in the background, each
// flow's drop event found by protocol, port and addresses, and the report lines with the drop
// reason and both identities by their labels. It sends packets only between the demo's namespaces.
import { DROP_REASONS } from "../../policy-wasm/mod.ts";
import type { PacketEvent } from "../../agent/datapath/events.ts";
import { eventFromJson, type MonitorLine, readLines } from "../../agent/monitor/mod.ts";
import type { AgentClient } from "../../cli/live_client.ts";

export interface Flow {
  from: string;
  to: string;
  proto: "tcp" | "icmp";
  /** TCP port (ICMP: echo request). */
  port: number;
  expect: "allowed" | "denied";
}

/** What the demo sends; "external" is 203.0.113.10, "node" the node itself. */
export const FLOWS: readonly Flow[] = [
  { from: "frontend", to: "backend", proto: "tcp", port: 8080, expect: "allowed" },
  { from: "frontend", to: "backend", proto: "tcp", port: 9090, expect: "denied" },
  { from: "frontend", to: "backend", proto: "icmp", port: 8, expect: "denied" },
  { from: "backend", to: "db", proto: "tcp", port: 5432, expect: "allowed" },
  { from: "frontend", to: "db", proto: "tcp", port: 5432, expect: "denied" },
  { from: "frontend", to: "external", proto: "tcp", port: 80, expect: "allowed" },
  { from: "frontend", to: "external", proto: "tcp", port: 443, expect: "denied" },
  { from: "backend", to: "external", proto: "tcp", port: 80, expect: "denied" },
  { from: "external", to: "db", proto: "tcp", port: 5432, expect: "denied" },
  { from: "node", to: "db", proto: "icmp", port: 8, expect: "allowed" },
];

/** Ports each place listens on for the flows above. */
export const LISTEN: Readonly<Record<string, number[]>> = {
  backend: [8080, 9090],
  db: [5432],
  external: [80, 443],
};

export interface Outcome {
  flow: Flow;
  allowed: boolean;
  drop?: PacketEvent | undefined;
}

/** Every datapath event since start(), read in the background until stop(). */
export class EventLog {
  readonly events: PacketEvent[] = [];
  #ac = new AbortController();
  #done: Promise<void> | undefined;
  #listeners: ((e: PacketEvent) => void)[] = [];

  /** Starts reading; resolves once the agent streams (so no event of what follows is missed). */
  async start(api: AgentClient): Promise<void> {
    const body = await api.stream("/v1/events", new URLSearchParams(), this.#ac.signal);
    this.#done = (async () => {
      for await (const line of readLines(body)) {
        const m = JSON.parse(line) as MonitorLine;
        if (!("event" in m)) continue;
        const e = eventFromJson(m.event);
        this.events.push(e);
        for (const l of this.#listeners) l(e);
      }
    })().catch(() => {});
  }

  onEvent(l: (e: PacketEvent) => void): void {
    this.#listeners.push(l);
  }

  /**
   * The first drop after index `from` for this protocol, port and (when given) addresses, waiting
   * up to ms (generous: a loaded machine delivers events late, and an earlier flow's late event
   * to the same port must not be taken for this one).
   */
  async dropFor(
    from: number,
    flow: Flow,
    addrs: { src?: string | undefined; dst?: string | undefined } = {},
    ms = 2000,
  ): Promise<PacketEvent | undefined> {
    const proto = flow.proto === "tcp" ? 6 : 1;
    const deadline = performance.now() + ms;
    const ours = (e: PacketEvent) => {
      const a = addresses(e);
      return (addrs.src === undefined || a?.src === addrs.src) &&
        (addrs.dst === undefined || a?.dst === addrs.dst);
    };
    for (;;) {
      const e = this.events.slice(from).find((e) =>
        e.type === "drop" && e.proto === proto && e.dport === flow.port && ours(e)
      );
      if (e || performance.now() > deadline) return e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Policy-verdict events after index `from` that allowed this flow (waits up to ms). */
  async allowsFor(from: number, flow: Flow, ms = 2000): Promise<PacketEvent[]> {
    const proto = flow.proto === "tcp" ? 6 : 1;
    const deadline = performance.now() + ms;
    const found = () =>
      this.events.slice(from).filter((e) =>
        e.type === "policy-verdict" && e.verdict === "allow" && e.proto === proto &&
        e.dport === flow.port
      );
    while (found().length === 0 && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 30)); // the other endpoint's verdict, if any
    return found();
  }

  async stop(): Promise<void> {
    this.#ac.abort();
    // An aborted fetch over the unix socket does not always end a pending body read: bounded.
    let t: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.#done, new Promise((r) => t = setTimeout(r, 1000))]);
    clearTimeout(t);
  }
}

/** Identity numbers → short label text ("app=frontend", "host", "cidr:203.0.113.0/24"). */
export class IdentityNames {
  #names = new Map<number, string>();
  constructor(readonly api: AgentClient) {}

  async refresh(): Promise<void> {
    const list = await this.api.request<{ id: number; labels: string[] }[]>("GET", "/v1/identity");
    for (const i of list) this.#names.set(i.id, shortLabels(i.labels));
  }

  has(id: number): boolean {
    return this.#names.has(id);
  }

  name(id: number): string {
    const n = this.#names.get(id);
    return n ? `${id} (${n})` : String(id);
  }
}

export function shortLabels(labels: string[]): string {
  const cidr = labels.filter((l) => l.startsWith("cidr:"));
  if (cidr.length > 0) return cidr.join(",");
  const own = labels.filter((l) => !l.startsWith("k8s:io.") && !l.startsWith("reserved:"));
  if (own.length > 0) return own.map((l) => l.replace(/^k8s:/, "")).join(",");
  return labels.map((l) => l.replace(/^reserved:/, "")).join(",");
}

export const reasonText = (code: number) => `${DROP_REASONS.get(code)?.[1] ?? "reason"} (${code})`;

/** Addresses from the captured packet (Ethernet, then IPv4 or IPv6). */
export function addresses(e: PacketEvent): { src: string; dst: string } | undefined {
  const d = e.data;
  if (d.length >= 34 && d[12] === 0x08 && d[13] === 0x00) {
    return { src: d.slice(26, 30).join("."), dst: d.slice(30, 34).join(".") };
  }
  if (d.length >= 54 && d[12] === 0x86 && d[13] === 0xdd) {
    const v6 = (b: Uint8Array) =>
      Array.from({ length: 8 }, (_, i) => ((b[2 * i]! << 8) | b[2 * i + 1]!).toString(16))
        .join(":").replace(/(^|:)0(:0)+(:|$)/, "::");
    return { src: v6(d.slice(22, 38)), dst: v6(d.slice(38, 54)) };
  }
  return undefined;
}

/** "Policy denied (133) at backend ingress: 31234 (app=frontend) → 5678 (app=backend)". */
export function dropLine(e: PacketEvent, ids: IdentityNames, eps: Map<number, string>): string {
  const where = `${eps.get(e.epId) ?? `endpoint ${e.epId}`} ${e.direction}`;
  return `${reasonText(e.subtype)} at ${where}: ${ids.name(e.srcIdentity)} → ${
    ids.name(e.dstIdentity)
  }`;
}

const MATCH = [
  "no policy selects it",
  "L3 rule",
  "L4 rule",
  "L3 rule for any peer",
  "L4 rule for any peer",
];

/** "frontend egress: L3 rule; backend ingress: L4 rule". */
export function allowLine(events: PacketEvent[], eps: Map<number, string>): string {
  const seen = new Set<string>();
  return events.flatMap((e) => {
    const where = `${eps.get(e.epId) ?? `endpoint ${e.epId}`} ${e.direction}`;
    if (seen.has(where)) return [];
    seen.add(where);
    const why = e.srcIdentity === 1 && e.direction === "ingress"
      ? "the host may (allow-localhost)"
      : MATCH[e.match] ?? `match ${e.match}`;
    return [`${where}: ${why}`];
  }).join("; ");
}

export function flowText(f: Flow): string {
  const what = f.proto === "tcp" ? `TCP ${f.port}` : "ping";
  return `${f.from} → ${f.to}`.padEnd(22) + what.padEnd(10);
}
