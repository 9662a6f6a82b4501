// The DNS proxy's previous message reader, kept as the reference for tests/fuzz/dns_message_test.ts
// and `bench dns --codec`: the same rules as agent/proxy/dns_message.ts, on a whole-message decode
// by npm `dns-packet`. Test and bench code only: the agent reads messages in place (_dns_wire.ts).
import {
  type DnsAnswer,
  DnsMessageError,
  type DnsQuery,
  fqdnOf,
  type LearnedIp,
} from "../../agent/proxy/dns_message.ts";

/** The codes of the type names parseQueryReference() can see in tests. */
const TYPES: Record<string, number> = {
  A: 1,
  NS: 2,
  CNAME: 5,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  ANY: 255,
};
// @ts-types="../../agent/proxy/_dns_packet.d.ts"
import * as dnsPacket from "dns-packet";
import type { Question } from "../../agent/proxy/_dns_packet.d.ts";
import { Buffer } from "node:buffer";

const RCODE_NAMES: Record<string, number> = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
};

const LABEL = /^[-a-zA-Z0-9_]+$/;
const utf8 = new TextDecoder();

/** Rule 1: the question name's labels on the wire (no compression in a question). */
function checkQuestionName(buf: Uint8Array): void {
  let off = 12;
  for (let n = 0; n < 128; n++) {
    const len = buf[off];
    if (len === undefined) throw new DnsMessageError("The question name runs past the message");
    if (len === 0) return;
    if (len > 63) throw new DnsMessageError("The question name is compressed or malformed");
    const label = utf8.decode(buf.subarray(off + 1, off + 1 + len));
    if (label.length !== len || !LABEL.test(label)) {
      throw new DnsMessageError(
        `The question name has a label that is not a DNS label: "${label}"`,
      );
    }
    off += 1 + len;
  }
  throw new DnsMessageError("The question name has too many labels");
}

/** What dns-packet's decode() returns (its published types leave some fields out). */
interface Decoded {
  id?: number;
  type?: string;
  flags?: number;
  opcode?: string;
  rcode?: string;
  flag_tc?: boolean;
  questions?: Question[];
  answers?: { type: string; name: string; ttl?: number; data?: unknown }[];
}

function decode(buf: Uint8Array): Decoded {
  try {
    return dnsPacket.decode(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)) as Decoded;
  } catch (err) {
    throw new DnsMessageError(`Cannot decode the DNS message: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/** Rule 1. Throws DnsMessageError for anything that is not one standard query. */
export function parseQueryReference(buf: Uint8Array): DnsQuery {
  if (buf.length < 12) throw new DnsMessageError("The DNS message is shorter than its header");
  const p = decode(buf);
  if (p.type !== "query") throw new DnsMessageError("The DNS message is not a query");
  if (p.opcode !== "QUERY") throw new DnsMessageError(`Unsupported DNS opcode "${p.opcode}"`);
  const q = p.questions ?? [];
  if (q.length !== 1) {
    throw new DnsMessageError(`A DNS query needs exactly one question, it has ${q.length}`);
  }
  checkQuestionName(buf);
  const name = fqdnOf(q[0]!.name), type = String(q[0]!.type);
  return { id: p.id ?? 0, name, type, typeCode: TYPES[type] ?? -1, raw: buf };
}

/** Rule 2: is `buf` the answer to `q`? Undefined when not (a stray or forged datagram). */
export function parseAnswerReference(q: DnsQuery, buf: Uint8Array): DnsAnswer | undefined {
  let p: Decoded;
  try {
    p = decode(buf);
  } catch {
    return undefined;
  }
  const question = p.questions?.[0];
  if (
    p.type !== "response" || p.id !== q.id || p.questions?.length !== 1 || !question ||
    fqdnOf(question.name) !== q.name || String(question.type) !== q.type ||
    (question.class ?? "IN") !== "IN"
  ) return undefined;
  const rcode = RCODE_NAMES[String(p.rcode)] ?? 2;
  return { rcode, truncated: p.flag_tc === true, ...chainOf(q.name, p.answers ?? []) };
}

/** Rule 3. */
function chainOf(
  qname: string,
  answers: NonNullable<Decoded["answers"]>,
): Omit<DnsAnswer, "rcode" | "truncated"> {
  const names = [qname];
  const seen = new Set(names);
  for (let step = 0; step < 16; step++) {
    const owner = names[names.length - 1]!;
    const cname = answers.find((a) => a.type === "CNAME" && fqdnOf(a.name) === owner);
    if (!cname || typeof cname.data !== "string") break;
    const target = fqdnOf(cname.data);
    if (seen.has(target)) break;
    seen.add(target);
    names.push(target);
  }
  const ips: LearnedIp[] = [];
  for (const a of answers) {
    if ((a.type !== "A" && a.type !== "AAAA") || !seen.has(fqdnOf(a.name))) continue;
    if (typeof a.data !== "string") continue;
    ips.push({ ip: a.data, ttl: Math.max(0, a.ttl ?? 0) });
  }
  return { names, ips };
}

/** A record for answerWire(): `data` an address (A/AAAA), a name (CNAME, NS) or raw bytes. */
export interface WireRecord {
  name: string;
  type: number;
  ttl?: number;
  data: string | Uint8Array;
}

/**
 * A response as a server writes it: the question, then `answers`, `authority` and `additional`,
 * every name compressed against the names before it (as dnsmasq and BIND do).
 */
export function answerWire(o: {
  id: number;
  qname: string;
  qtype?: number;
  flags?: number;
  answers: WireRecord[];
  authority?: WireRecord[];
  additional?: WireRecord[];
}): Uint8Array {
  const out: number[] = [];
  const u16 = (v: number) => out.push(v >> 8, v & 0xff);
  const seen = new Map<string, number>();
  const name = (n: string) => {
    const labels = n.replace(/\.$/, "").split(".").filter((l) => l !== "");
    for (let i = 0; i < labels.length; i++) {
      const suffix = labels.slice(i).join(".").toLowerCase();
      const at = seen.get(suffix);
      if (at !== undefined) return u16(0xc000 | at);
      if (out.length < 0x3fff) seen.set(suffix, out.length);
      const l = new TextEncoder().encode(labels[i]!);
      out.push(l.length, ...l);
    }
    out.push(0);
  };
  const sections = [o.answers, o.authority ?? [], o.additional ?? []];
  u16(o.id);
  u16(o.flags ?? 0x8180);
  u16(1);
  for (const s of sections) u16(s.length);
  name(o.qname);
  u16(o.qtype ?? 1);
  u16(1);
  for (const r of sections.flat()) {
    name(r.name);
    u16(r.type);
    u16(1);
    const ttl = r.ttl ?? 60;
    out.push(ttl >>> 24, (ttl >> 16) & 0xff, (ttl >> 8) & 0xff, ttl & 0xff);
    const lenAt = out.length;
    u16(0);
    if (r.data instanceof Uint8Array) out.push(...r.data);
    else if (r.type === 1) out.push(...r.data.split(".").map(Number));
    else if (r.type === 28) {
      const [head = "", tail = ""] = r.data.split("::");
      const h = head ? head.split(":") : [], t = tail ? tail.split(":") : [];
      const groups = r.data.includes("::")
        ? [...h, ...Array(8 - h.length - t.length).fill("0"), ...t]
        : h;
      for (const g of groups) u16(parseInt(g, 16));
    } else name(r.data);
    const len = out.length - lenAt - 2;
    out[lenAt] = len >> 8;
    out[lenAt + 1] = len & 0xff;
  }
  return new Uint8Array(out);
}
