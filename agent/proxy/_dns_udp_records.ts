// The flow records of the DNS proxy's UDP Worker, packed for the trip to the main thread
// (dns_udp_worker.ts → dns_udp_path.ts): the queries of a batch mostly differ only in the client's
// port, the latency and the time, so a record is a row of those numbers and the index of a
// template that holds the rest (shared by consecutive records with the same parts: the Worker
// reuses its parsed queries and answers, _dns_udp_memo.ts). The rows go as one transferred
// Float64Array; per query the Worker then makes no record object and no JSON (they were a third of
// its garbage). recordsOf() makes the DnsRecord objects again on the main thread. It decides
// nothing.

import type { OrigDestination } from "../datapath/proxy_maps.ts";
import type { DnsAnswer } from "./dns_message.ts";
import type { DnsRecord } from "./_dns_proxy_options.ts";

/** A record without the client's port, its latency and time. */
export type RecordTemplate = Omit<DnsRecord, "client" | "latencyMs" | "at"> & { clientIp: string };

export interface RecordsWire {
  templates: RecordTemplate[];
  /** Per record ROW numbers: template index, client port, latency (ms), time (epoch ms). */
  rows: Float64Array;
}

const ROW = 4;

/** What a record is made of, as the Worker holds it. */
export interface RecordParts {
  o: OrigDestination;
  client: { ip: string; port: number };
  cookie: number;
  query: string;
  qtype: string;
  allowed: boolean;
  rcode: number;
  answer: DnsAnswer | undefined;
  error: string | undefined;
}

export class RecordBatcher {
  #templates: RecordTemplate[] = [];
  /**
   * The parts the last template was made of (compared by identity, then value), copied: the
   * caller may pass the same object every time.
   */
  readonly #last: RecordParts = blankParts(undefined as unknown as OrigDestination);
  #hasLast = false;
  #rows: Float64Array;
  #n = 0;

  constructor(capacity = 256) {
    this.#rows = new Float64Array(capacity * ROW);
  }

  get length(): number {
    return this.#n;
  }

  add(p: RecordParts, latencyMs: number, at: number): void {
    if (!this.#hasLast || !sameParts(this.#last, p)) {
      this.#templates.push(templateOf(p));
      const l = this.#last;
      l.o = p.o;
      l.client = p.client;
      l.cookie = p.cookie;
      l.query = p.query;
      l.qtype = p.qtype;
      l.allowed = p.allowed;
      l.rcode = p.rcode;
      l.answer = p.answer;
      l.error = p.error;
      this.#hasLast = true;
    }
    if ((this.#n + 1) * ROW > this.#rows.length) {
      const grown = new Float64Array(this.#rows.length * 2);
      grown.set(this.#rows);
      this.#rows = grown;
    }
    const r = this.#n++ * ROW, rows = this.#rows;
    rows[r] = this.#templates.length - 1;
    rows[r + 1] = p.client.port;
    rows[r + 2] = latencyMs;
    rows[r + 3] = at;
  }

  /** The batch so far (its rows a copy, to be transferred), and a fresh start. */
  take(): RecordsWire {
    const wire = { templates: this.#templates, rows: this.#rows.slice(0, this.#n * ROW) };
    this.#templates = [];
    this.#hasLast = false;
    this.#n = 0;
    return wire;
  }
}

/** Parts with nothing in them yet: a holder that is filled in place per record. */
export function blankParts(o: OrigDestination): RecordParts {
  return {
    o,
    client: { ip: "", port: 0 },
    cookie: 0,
    query: "",
    qtype: "",
    allowed: false,
    rcode: 0,
    answer: undefined,
    error: undefined,
  };
}

const sameParts = (a: RecordParts, b: RecordParts) =>
  a.o === b.o && a.client.ip === b.client.ip && a.cookie === b.cookie && a.query === b.query &&
  a.qtype === b.qtype && a.allowed === b.allowed && a.rcode === b.rcode &&
  a.answer === b.answer && a.error === b.error;

function templateOf(p: RecordParts): RecordTemplate {
  const a = p.answer;
  return {
    epId: p.o.epId,
    clientIp: p.client.ip,
    server: { ip: p.o.ip, port: p.o.port },
    srcIdentity: p.o.srcIdentity,
    dstIdentity: p.o.dstIdentity,
    cookie: p.cookie,
    query: p.query,
    qtype: p.qtype,
    allowed: p.allowed,
    rcode: p.rcode,
    cnames: a ? a.names.slice(1) : [],
    ips: a ? a.ips.map((i) => i.ip) : [],
    ...(p.error !== undefined ? { error: p.error } : {}),
  };
}

/** The DnsRecords of a batch (main thread). */
export function recordsOf(w: RecordsWire): DnsRecord[] {
  const out: DnsRecord[] = [];
  for (let r = 0; r + ROW <= w.rows.length; r += ROW) {
    const t = w.templates[w.rows[r]!];
    if (!t) continue;
    const { clientIp, server, cnames, ips, ...rest } = t;
    out.push({
      ...rest,
      client: { ip: clientIp, port: w.rows[r + 1]! },
      server: { ...server },
      cnames: [...cnames],
      ips: [...ips],
      latencyMs: w.rows[r + 2]!,
      at: w.rows[r + 3]!,
    });
  }
  return out;
}
