// Encoding of verdict queries and decoding of query results and map-states (format:
// policy-wasm/assembly/query.ts and mapstate.ts). This module is browser compatible.

import { ByteReader, ByteWriter, MSG } from "./wire.ts";
import type { Direction, EntrySpec } from "./ir.ts";
import { L7_KIND } from "./encode.ts";
import { POLICY_DIR_EGRESS, POLICY_DIR_INGRESS, VERDICT_NAMES } from "./constants.generated.ts";

export interface HttpRequest {
  method: string;
  path: string;
  host?: string;
  headers?: Record<string, string>;
}

export interface KafkaRequest {
  apiKey: number;
  apiVersion?: number;
  clientID?: string;
  topics?: string[];
}

export interface QueryInput {
  endpoint: number;
  direction: Direction;
  peer: number;
  proto: number;
  port: number;
  http?: HttpRequest;
  kafka?: KafkaRequest;
  dns?: string;
}

export { VERDICT_NAMES };
export type Verdict = (typeof VERDICT_NAMES)[number];

export const DECISIONS = [
  "",
  "enforcement-never",
  "allow-localhost",
  "deny-rule",
  "allow-rule",
  "redirect",
  "default-deny",
  "default-allow",
  "audit-deny-rule",
  "audit-default-deny",
] as const;
export type Decision = (typeof DECISIONS)[number];

export interface QueryResult {
  verdict: Verdict;
  decision: Decision;
  /** Cilium drop reason (133, 181) when denied, or that it would have had for verdict audit, else 0. */
  dropReason: number;
  cookie: number;
  /** Engine index of the deciding entry, or -1. */
  entry: number;
  defaultDeny: boolean;
  /** Only an audit-mode rule would make the direction default-deny (it is not enforced). */
  auditDefaultDeny: boolean;
  /** Rule index that made the direction default-deny (else the audit rule that would), or -1. */
  defaultDenyRule: number;
  selecting: number[];
  denies: number[];
  allows: number[];
  /** Entries that select the peer but not this port. */
  peerOnly: number[];
  l7Entries: number[];
  l7: {
    status: "not-evaluated" | "allowed" | "denied";
    entry: number;
    rule: number;
    detail: number;
  };
  /** Entries whose endpoint selector selects the peer but whose fromRequires/toRequires do not. */
  narrowedByRequires: number[];
}

export function encodeQuery(q: QueryInput): Uint8Array {
  const w = new ByteWriter(MSG.QUERY);
  const dir = q.direction === "ingress" ? POLICY_DIR_INGRESS : POLICY_DIR_EGRESS;
  w.u32(q.endpoint).u8(dir).u32(q.peer).u8(q.proto).u16(q.port);
  if (q.http) {
    w.u8(L7_KIND.http).str(q.http.method).str(q.http.path).str(q.http.host ?? "");
    w.list(Object.entries(q.http.headers ?? {}), ([k, v]) => w.str(k).str(v));
  } else if (q.kafka) {
    w.u8(L7_KIND.kafka).i32(q.kafka.apiKey).i32(q.kafka.apiVersion ?? 0).str(
      q.kafka.clientID ?? "",
    );
    w.list(q.kafka.topics ?? [], (t) => w.str(t));
  } else if (q.dns !== undefined) {
    w.u8(L7_KIND.dns).str(q.dns);
  } else {
    w.u8(L7_KIND.none);
  }
  return w.bytes();
}

export function decodeQuery(bytes: Uint8Array): QueryResult {
  const r = new ByteReader(bytes);
  const verdict = VERDICT_NAMES[r.u8()] ?? "none";
  const decision = DECISIONS[r.u8()] ?? "";
  const dropReason = r.u16();
  const cookie = r.u32();
  const entry = r.i32();
  const defaultDeny = r.u8() === 1;
  const auditDefaultDeny = r.u8() === 1;
  r.u16();
  const defaultDenyRule = r.i32();
  const selecting = r.i32List();
  const denies = r.i32List();
  const allows = r.i32List();
  const peerOnly = r.i32List();
  const l7Entries = r.i32List();
  const status = (["not-evaluated", "allowed", "denied"] as const)[r.u8()] ?? "not-evaluated";
  const l7 = { status, entry: r.i32(), rule: r.i32(), detail: r.i32() };
  const narrowedByRequires = r.i32List();
  return {
    verdict,
    decision,
    dropReason,
    cookie,
    entry,
    defaultDeny,
    auditDefaultDeny,
    defaultDenyRule,
    selecting,
    denies,
    allows,
    peerOnly,
    l7Entries,
    l7,
    narrowedByRequires,
  };
}

export interface MapStateEntry {
  direction: Direction;
  /** 0 = any identity. */
  identity: number;
  /** 0 = any protocol. */
  proto: number;
  portLo: number;
  portHi: number;
  /** audit: passes; an audit-mode policy would drop it (cookie: its deny entry, 0: default-deny). */
  verdict: Exclude<Verdict, "none">;
  cookie: number;
  /** For redirects: the engine indices of the entries whose L7 rules apply. */
  l7Entries?: number[];
  /** For redirects: "http" | "kafka" | "dns". */
  l7?: "http" | "kafka" | "dns";
}

export interface MapState {
  defaultDeny: { ingress: boolean; egress: boolean };
  /**
   * Audit mode per direction: `rules`, an audit-mode policy has rules for it (its drops are
   * reported as AUDIT); `defaultDeny`, only an audit-mode policy would make it default-deny.
   */
  audit: {
    ingress: { rules: boolean; defaultDeny: boolean };
    egress: { rules: boolean; defaultDeny: boolean };
  };
  enforcement: boolean;
  defaultDenyRule: { ingress: number; egress: number };
  selecting: number[];
  entries: MapStateEntry[];
}

export function decodeMapState(
  bytes: Uint8Array,
  entries: readonly { entry: EntrySpec }[],
): MapState {
  const r = new ByteReader(bytes);
  const ddIn = r.u8() === 1;
  const ddEg = r.u8() === 1;
  const off = r.u8() === 1;
  const audit = r.u8();
  const defaultDenyRule = { ingress: r.i32(), egress: r.i32() };
  const selecting = r.i32List();
  const n = r.u32();
  const raw: { e: MapStateEntry; set: number }[] = [];
  for (let i = 0; i < n; i++) {
    const direction = r.u8() === POLICY_DIR_INGRESS ? "ingress" : "egress";
    const proto = r.u8();
    const portLo = r.u16();
    const portHi = r.u16();
    const verdict = VERDICT_NAMES[r.u8()] as MapStateEntry["verdict"];
    r.u8();
    const identity = r.u32();
    const cookie = r.u32();
    const set = r.i32();
    raw.push({ e: { direction, identity, proto, portLo, portHi, verdict, cookie }, set });
  }
  const sets: number[][] = [];
  const ns = r.u32();
  for (let i = 0; i < ns; i++) sets.push(r.i32List());
  const out = raw.map(({ e, set }) => {
    if (set < 0) return e;
    const l7Entries = sets[set]!;
    const kind = entries[l7Entries[0]!]?.entry.l7?.kind;
    return { ...e, l7Entries, ...(kind ? { l7: kind } : {}) };
  });
  return {
    defaultDeny: { ingress: ddIn, egress: ddEg },
    audit: {
      ingress: { rules: (audit & 1) !== 0, defaultDeny: (audit & 4) !== 0 },
      egress: { rules: (audit & 2) !== 0, defaultDeny: (audit & 8) !== 0 },
    },
    enforcement: !off,
    defaultDenyRule,
    selecting,
    entries: out,
  };
}
