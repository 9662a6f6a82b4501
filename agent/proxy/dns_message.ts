// DNS messages as the DNS proxy sees them: a query it must judge, the answer it must check before
// anything is learned from it, and the responses it makes itself (REFUSED / NXDOMAIN for a refused
// name, SERVFAIL when the upstream fails, FORMERR for a query it cannot read). Queries and answers
// are read in place on the wire (_dns_wire.ts: every section's structure checked, pointers only
// backwards, names compared label by label) without decoding the whole message: npm `dns-packet`
// did that at about 4.4 KB of garbage and 8–14 µs per query, and the Worker's scavenges showed in its
// tail latency (docs/architecture.md, flow 14). `dns-packet` still makes the proxy's own
// responses and names the record types. It owns no socket and decides nothing: it only reads and
// writes bytes.
//
// Rules (fail closed):
// 1. A query is judged only when it is a standard query (QR 0, opcode QUERY) with exactly one
//    question whose name is made of labels of [-a-zA-Z0-9_] (checked on the wire, so a label that
//    contains a dot cannot pass for two labels), in a message whose every section is well formed.
// 2. An answer is used only when it is a well-formed response with the query's id and the query's
//    question (name compared label by label without case, same type, class IN); anything else is
//    not the answer.
// 3. Only addresses on the answer's CNAME chain from the question name are learned: the chain
//    is followed in the answer section only (the first CNAME of each name), at most 16 steps, and
//    ends at a CNAME of another class than IN or a target with a label outside [-a-zA-Z0-9_];
//    A/AAAA records owned by other names, or of another class than IN, are ignored.

// @ts-types="./_dns_packet.d.ts"
import * as dnsPacket from "dns-packet";
// @ts-types="./_dns_packet_types.d.ts"
import * as dnsTypes from "dns-packet/types.js";
import type { Question } from "./_dns_packet.d.ts";
import { Buffer } from "node:buffer";
import * as W from "./_dns_wire.ts";

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;

export interface DnsQuery {
  id: number;
  /** FQDN form: lower-case with the trailing dot. */
  name: string;
  type: string;
  /** The question's type as a number (`type` names it). */
  typeCode: number;
  /** The query as asked (its question name at offset 12, uncompressed). */
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

/** What makeResponse() reads of dns-packet's decode(). */
interface Decoded {
  flags?: number;
  questions?: Question[];
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
  const w = W.checkMessage(buf);
  if (!w) throw new DnsMessageError("Cannot decode the DNS message: it is malformed or truncated");
  if (w.flags & 0x8000) throw new DnsMessageError("The DNS message is not a query");
  const opcode = (w.flags >> 11) & 0xf;
  if (opcode !== 0) throw new DnsMessageError(`Unsupported DNS opcode ${opcode}`);
  if (w.qdcount !== 1) {
    throw new DnsMessageError(`A DNS query needs exactly one question, it has ${w.qdcount}`);
  }
  if (!W.inPlace(buf, 12)) {
    throw new DnsMessageError("The question name is compressed or malformed");
  }
  if (!W.plainName(buf, 12)) {
    throw new DnsMessageError(
      `The question name has a label that is not a DNS label: "${W.nameText(buf, 12)}"`,
    );
  }
  const typeCode = w.qtype;
  return { id: w.id, name: W.nameText(buf, 12), type: typeName(typeCode), typeCode, raw: buf };
}

/** dns-packet's name of a record type ("A", "AAAA", "UNKNOWN_999"), cached per code. */
const typeNames = new Map<number, string>();
function typeName(code: number): string {
  let t = typeNames.get(code);
  if (t === undefined) {
    t = dnsTypes.toString(code);
    if (typeNames.size < 1024) typeNames.set(code, t);
  }
  return t;
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
  const w = W.checkMessage(buf);
  if (
    !w || !(w.flags & 0x8000) || w.id !== q.id || w.qdcount !== 1 || w.qtype !== q.typeCode ||
    w.qclass !== 1 || !W.sameName(buf, 12, q.raw, 12)
  ) return undefined;
  const rcode = w.flags & 0xf;
  const answer: DnsAnswer = {
    rcode: rcode <= 5 ? rcode : RCODE.SERVFAIL,
    truncated: (w.flags & 0x200) !== 0,
    names: [q.name],
    ips: [],
  };
  chainOf(answer, buf, w.ancount);
  return answer;
}

/** Offsets of the chain's names in the answer (reused; at most 17). */
const chain = new Int32Array(17);

/** Rule 3, over the answer section of the message checkMessage() last read: fills `out`. */
function chainOf(out: DnsAnswer, b: Uint8Array, count: number): void {
  let n = 1;
  chain[0] = 12;
  for (let step = 0; step < 16; step++) {
    let target = -1;
    for (let i = 0; i < count && target < 0; i++) {
      if (
        W.answerType(b, i) === W.TYPE_CNAME && W.sameName(b, W.answerOwner(i), b, chain[n - 1]!)
      ) target = W.answerIsIn(b, i) ? W.answerData(i) : 0; // 0: not IN, the chain ends
    }
    if (target <= 0 || !W.plainName(b, target) || onChain(b, target, n)) break;
    chain[n++] = target;
    out.names.push(W.nameText(b, target));
  }
  for (let i = 0; i < count; i++) {
    const type = W.answerType(b, i);
    if ((type !== W.TYPE_A && type !== W.TYPE_AAAA) || !W.answerIsIn(b, i)) continue;
    if (!onChain(b, W.answerOwner(i), n)) continue;
    const ip = W.addressText(b, W.answerData(i), type === W.TYPE_AAAA);
    out.ips.push({ ip, ttl: W.answerTtl(b, i) });
  }
}

const onChain = (b: Uint8Array, name: number, n: number) => {
  for (let i = 0; i < n; i++) if (W.sameName(b, name, b, chain[i]!)) return true;
  return false;
};
