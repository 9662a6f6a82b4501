// The proxies' records → L7 flows, for the monitor (monitor.ts owns the ring, followers and
// counters this writes to): a request the L7 proxy judged (HTTP, gRPC, Kafka) or a query the DNS
// proxy judged, one at a time or in batches. In a batch both sides and the policy are looked up
// once per connection context (or run of like DNS records), and a flow object is made only when
// someone follows flows, else when a query first reads it (the ring keeps a maker). It decides
// nothing: the proxies did.

import {
  buildDnsFlow,
  buildL7Flow,
  type DnsInput,
  type Flow,
  type FlowContext,
  type L7Input,
} from "./flow.ts";
import { bump, type MonitorParts, publish } from "./_parts.ts";

/** The fields an L7 record's connection fixes (and the cookie of the verdict that decided). */
export interface L7ContextInput {
  client: { ip: string; port: number };
  server: { ip: string; port: number };
  epId: number;
  direction: "ingress" | "egress";
  srcIdentity: number;
  dstIdentity: number;
  cookie: number;
}

/** A batch of L7 records read in place (the HTTP Worker's, agent/proxy/l7_batch.ts). */
export interface L7Records {
  readonly size: number;
  readonly contexts: number;
  context(j: number): L7ContextInput;
  /** The context of record i. */
  contextOf(i: number): number;
  allowed(i: number): boolean;
  /** When record i's request ended (ms since the epoch): its flow's time. */
  timeMs(i: number): number;
  record(i: number): L7Input;
}

/** A record's endpoint, both identities and the cookie of the verdict that decided. */
export interface L7Identities {
  epId: number;
  srcIdentity: number;
  dstIdentity: number;
  cookie: number;
}

/** What a DNS record's sides and policy come from. */
export interface DnsSideInput extends L7Identities {
  server: { ip: string };
}

type L7Sides = Pick<FlowContext, "source" | "destination" | "policy">;

export class L7Flows {
  readonly #p: MonitorParts;

  constructor(parts: MonitorParts) {
    this.#p = parts;
  }

  /** One DNS query → a flow; its time is `r.at` if given (see Monitor.ingestDns). */
  dns(
    r: DnsInput & L7Identities & { at?: number },
    now = r.at !== undefined ? new Date(r.at) : new Date(),
  ): void {
    const index = this.#p.endpoints;
    index.refresh();
    const policy = this.#p.attribution.byCookie(r.cookie, false);
    const flow = buildDnsFlow(r, {
      nodeName: this.#p.nodeName,
      now,
      source: index.side(r.srcIdentity, index.byId(r.epId)),
      destination: index.side(r.dstIdentity, index.byIp(r.server.ip)),
      policy,
    });
    bump(this.#p.counters.processed, `l7/${flow.verdict}`);
    publish(this.#p, flow);
  }

  /** A batch of DNS records, as dns() takes each (sides looked up once for a run alike). */
  dnsBatch(rs: readonly (DnsInput & DnsSideInput & { at: number })[]): void {
    const n = rs.length;
    if (n === 0) return;
    const index = this.#p.endpoints;
    index.refresh();
    const sides: L7Sides[] = [];
    let last: DnsSideInput | undefined, side: L7Sides | undefined, forwarded = 0;
    for (const r of rs) {
      if (r.allowed) forwarded++;
      if (
        !last || r.epId !== last.epId || r.srcIdentity !== last.srcIdentity ||
        r.dstIdentity !== last.dstIdentity || r.cookie !== last.cookie ||
        r.server.ip !== last.server.ip
      ) {
        last = r;
        side = {
          source: index.side(r.srcIdentity, index.byId(r.epId)),
          destination: index.side(r.dstIdentity, index.byIp(r.server.ip)),
          policy: this.#p.attribution.byCookie(r.cookie, false),
        };
      }
      sides.push(side!);
    }
    this.#countBatch(n, forwarded);
    const nodeName = this.#p.nodeName;
    const make = (i: number) =>
      buildDnsFlow(rs[i]!, { ...sides[i]!, nodeName, now: new Date(rs[i]!.at) });
    this.#pushMade(n, make);
  }

  /** One request the L7 proxy judged → an L7 flow. */
  l7(
    r: L7Input & L7Identities,
    now = new Date(),
  ): void {
    this.#p.endpoints.refresh();
    const flow = buildL7Flow(r, { ...this.#sides(r), nodeName: this.#p.nodeName, now });
    bump(this.#p.counters.processed, `l7/${flow.verdict}`);
    publish(this.#p, flow);
  }

  /** A batch of L7 records, as l7() takes each (sides looked up once per context). */
  l7Batch(b: L7Records): void {
    const n = b.size;
    if (n === 0) return;
    this.#p.endpoints.refresh();
    const sides: L7Sides[] = [];
    for (let j = 0; j < b.contexts; j++) sides.push(this.#sides(b.context(j)));
    let forwarded = 0;
    for (let i = 0; i < n; i++) if (b.allowed(i)) forwarded++;
    this.#countBatch(n, forwarded);
    const nodeName = this.#p.nodeName;
    const make = (i: number) =>
      buildL7Flow(b.record(i), {
        ...sides[b.contextOf(i)]!,
        nodeName,
        now: new Date(b.timeMs(i)),
      });
    this.#pushMade(n, make);
  }

  /** A batch's N flows counted: `forwarded` of them FORWARDED, the others DROPPED. */
  #countBatch(n: number, forwarded: number): void {
    if (forwarded > 0) bump(this.#p.counters.processed, "l7/FORWARDED", forwarded);
    if (forwarded < n) bump(this.#p.counters.processed, "l7/DROPPED", n - forwarded);
  }

  /** N flows of a batch: made now for followers, else kept as makers until a query reads them. */
  #pushMade(n: number, make: (i: number) => Flow): void {
    const followers = this.#p.followers;
    if (!followers.wantFlows) return this.#p.ring.pushMade(n, make);
    for (let i = 0; i < n; i++) {
      const flow = make(i);
      this.#p.ring.push(flow);
      followers.flow(flow);
    }
    followers.flush();
  }

  /** Both sides of an L7 record's connection and the policy its cookie names. */
  #sides(c: L7ContextInput): L7Sides {
    const index = this.#p.endpoints;
    const self = index.byId(c.epId);
    const other = index.byIp(c.direction === "egress" ? c.server.ip : c.client.ip);
    const src = c.direction === "egress" ? self : other;
    const dst = c.direction === "egress" ? other : self;
    return {
      source: index.side(c.srcIdentity, src),
      destination: index.side(c.dstIdentity, dst),
      policy: this.#p.attribution.byCookie(c.cookie, false),
    };
  }
}
