// DNS messages as the DNS proxy sees them: a query it must judge, the answer it must check before
// anything is learned from it, and the responses it makes itself (REFUSED / NXDOMAIN for a refused
// name, SERVFAIL when the upstream fails, FORMERR for a query it cannot read). Decoding uses the
// npm `dns-packet` library (it refuses forward compression pointers, so pointer loops end in an
// error). It owns no socket and decides nothing: it only reads and writes bytes.
//
// Rules (fail closed):
// 1. A query is judged only when it is a standard query (QR 0, opcode QUERY) with exactly one
//    question whose name is made of labels of [-a-zA-Z0-9_] (checked on the wire, so a label that
//    contains a dot cannot pass for two labels).
// 2. An answer is used only when it is a response with the query's id and the query's question
//    (name compared case-insensitively, same type and class); anything else is not the answer.
// 3. Only addresses on the answer's CNAME chain from the question name are learned: the chain
//    is followed in the answer section only, at most 16 steps, and A/AAAA records owned by
//    other names are ignored.

// @ts-types="./_dns_packet.d.ts"
import * as dnsPacket from "dns-packet";
import type { Question } from "./_dns_packet.d.ts";
import { Buffer } from "node:buffer";

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;
const RCODE_NAMES: Record<string, number> = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
};

export interface DnsQuery {
  id: number;
  /** FQDN form: lower-case with the trailing dot. */
  name: string;
  type: string;
  /** The question as asked (for responses the proxy makes itself). */
  raw: Uint8Array;
}

export interface LearnedIp {
  ip: string;
  ttl: number;
}

export interface DnsAnswer {
  rcode: number;
  truncated: boolean;
  /** The question name and every CNAME target on its chain (FQDN form). */
  names: string[];
  ips: LearnedIp[];
}

export class DnsMessageError extends Error {
  override name = "DnsMessageError";
}

/** FQDN form of a name: lower-case, trailing dot. */
export const fqdnOf = (name: string): string => {
  const n = name.toLowerCase();
  return n.endsWith(".") ? n : n + ".";
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
export function parseQuery(buf: Uint8Array): DnsQuery {
  if (buf.length < 12) throw new DnsMessageError("The DNS message is shorter than its header");
  const p = decode(buf);
  if (p.type !== "query") throw new DnsMessageError("The DNS message is not a query");
  if (p.opcode !== "QUERY") throw new DnsMessageError(`Unsupported DNS opcode "${p.opcode}"`);
  const q = p.questions ?? [];
  if (q.length !== 1) {
    throw new DnsMessageError(`A DNS query needs exactly one question, it has ${q.length}`);
  }
  checkQuestionName(buf);
  return { id: p.id ?? 0, name: fqdnOf(q[0]!.name), type: String(q[0]!.type), raw: buf };
}

/** The query's id, if the message is long enough to have one. */
export const idOf = (buf: Uint8Array): number | undefined =>
  buf.length >= 2 ? (buf[0]! << 8) | buf[1]! : undefined;

/** A response the proxy makes itself: the query's id, question and RD bit, with `rcode`. */
export function makeResponse(query: Uint8Array, rcode: number): Uint8Array {
  let questions: Question[] = [];
  let rd = 0;
  try {
    const p = decode(query);
    questions = p.questions ?? [];
    rd = (p.flags ?? 0) & dnsPacket.RECURSION_DESIRED;
  } catch {
    // FORMERR for a message that does not decode: header only.
  }
  const out = dnsPacket.encode({
    type: "response",
    id: idOf(query) ?? 0,
    flags: rd | dnsPacket.RECURSION_AVAILABLE | (rcode & 0xf),
    questions,
  });
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** Rule 2: is `buf` the answer to `q`? Undefined when not (a stray or forged datagram). */
export function parseAnswer(q: DnsQuery, buf: Uint8Array): DnsAnswer | undefined {
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
