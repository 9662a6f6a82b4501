// What the DNS proxy's UDP Worker (dns_udp_worker.ts) derives from bytes that repeat from query to
// query: a pod asks the same question again and again from the same address, and the server gives
// the same answer, so the parsed query and answer, the client's address and the cache keys made
// from them are kept from the last datagram with the same bytes and reused instead of made anew
// per query. They were most of the Worker's garbage, and its scavenges stalled queries by
// milliseconds (V8 --trace-gc-nvp over `bench dns`). A memo is used only when the bytes are equal
// (the DNS id apart, which the caller handles), so it returns what the parser would; it decides
// nothing and holds no verdict.

import type { OrigDestination } from "../datapath/proxy_maps.ts";
import * as S from "../sys/sockets_ffi.ts";
import { type DnsAnswer, type DnsQuery, parseAnswer, parseQuery } from "./dns_message.ts";

/** The value last made from bytes equal to `b` from offset `from` on (same length), if any. */
export class BytesMemo<T> {
  readonly #bytes: Uint8Array;
  readonly #from: number;
  #len = -1;
  #value: T | undefined;
  /** Moves whenever the memo takes new bytes: equal versions mean equal bytes. */
  version = 0;

  constructor(maxBytes: number, from = 0) {
    this.#bytes = new Uint8Array(maxBytes);
    this.#from = from;
  }

  get(b: Uint8Array): T | undefined {
    const len = b.length, m = this.#bytes;
    if (len !== this.#len) return undefined;
    for (let i = this.#from; i < len; i++) if (b[i] !== m[i]) return undefined;
    return this.#value;
  }

  set(b: Uint8Array, v: T): void {
    this.version++;
    if (b.length > this.#bytes.length) {
      this.#len = -1;
      this.#value = undefined;
      return;
    }
    this.#bytes.set(b);
    this.#len = b.length;
    this.#value = v;
  }
}

const idOf = (b: Uint8Array) => (b[0]! << 8) | b[1]!;

export class DnsUdpMemo {
  readonly #queries = new BytesMemo<DnsQuery>(512, 2);
  readonly #answers = new BytesMemo<DnsAnswer>(4096, 2);
  /** The query memo's version the memoised answer was parsed for. */
  #answerFor = -1;
  readonly #addrs = new BytesMemo<{ ip: string; port: number }>(S.SOCKADDR_SIZE);
  #verdict: { o: OrigDestination | undefined; name: string; key: string } = {
    o: undefined,
    name: "",
    key: "",
  };
  #known: { epId: number; answer: DnsAnswer | undefined; key: string } = {
    epId: -1,
    answer: undefined,
    key: "",
  };

  /**
   * parseQuery(msg) (throws as it does), and the query memo's version, which answerOf() takes:
   * the same version means the same question.
   */
  queryOf(msg: Uint8Array): { q: DnsQuery; version: number } {
    const q = { id: 0, name: "", type: "", typeCode: 0, raw: msg };
    return { q, version: this.queryInto(msg, q) };
  }

  /** queryOf() without an object per query: fills `into` (its raw: msg), returns the version. */
  queryInto(msg: Uint8Array, into: DnsQuery): number {
    const m = this.#queries.get(msg) ?? this.#parsed(msg);
    into.id = idOf(msg);
    into.name = m.name;
    into.type = m.type;
    into.typeCode = m.typeCode;
    into.raw = msg;
    return this.#queries.version;
  }

  #parsed(msg: Uint8Array): DnsQuery {
    const q = parseQuery(msg);
    this.#queries.set(msg, q);
    return q;
  }

  /** parseAnswer(q, bytes) for q from queryOf() at `version` (the answer may be a shared object). */
  answerOf(q: DnsQuery, version: number, bytes: Uint8Array): DnsAnswer | undefined {
    if (version === this.#answerFor && bytes.length >= 2 && idOf(bytes) === q.id) {
      const m = this.#answers.get(bytes);
      if (m) return m;
    }
    const a = parseAnswer(q, bytes);
    if (a) {
      this.#answers.set(bytes, a);
      this.#answerFor = version;
    }
    return a;
  }

  /** decodeSockaddr(sa), shared while the address repeats. */
  addrOf(sa: Uint8Array): { ip: string; port: number } {
    const m = this.#addrs.get(sa);
    if (m) return m;
    const a = S.decodeSockaddr(sa);
    this.#addrs.set(sa, a);
    return a;
  }

  /** The verdict cache's key for (o, name). */
  verdictKey(o: OrigDestination, name: string): string {
    const v = this.#verdict;
    if (v.o === o && v.name === name) return v.key;
    const key = `${o.epId}/${o.dstIdentity}/${o.port}/${name}`;
    this.#verdict = { o, name, key };
    return key;
  }

  /** The learned-address cache's key for an endpoint and an answer. */
  knownKey(epId: number, a: DnsAnswer): string {
    const k = this.#known;
    if (k.epId === epId && k.answer === a) return k.key;
    const key = `${epId}|${a.names.join(" ")}|${a.ips.map((i) => i.ip).join(" ")}`;
    this.#known = { epId, answer: a, key };
    return key;
  }
}
