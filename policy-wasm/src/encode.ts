// Encoders for the engine's messages (format: policy-wasm/assembly/load.ts, query.ts): the rules
// of a PolicySpec with a de-duplicated selector table, identities, endpoints, ipcache updates and
// queries. Deterministic: the same spec gives the same bytes. This module is browser compatible.

import { ByteWriter, MSG } from "./wire.ts";
import { POLICY_DIR_EGRESS, POLICY_DIR_INGRESS } from "./constants.generated.ts";
import { parsePrefix, WORLD_PREFIX } from "./cidr.ts";
import type {
  EngineEndpoint,
  EngineOptions,
  EntrySpec,
  IdentitySpec,
  L7Spec,
  PolicySpec,
  SelectorSpec,
} from "./ir.ts";

const OPS = { In: 0, NotIn: 1, Exists: 2, DoesNotExist: 3 } as const;
const SEL_KIND = { labels: 0, cidr: 1, all: 2, none: 3 } as const;
const ENFORCEMENT = { default: 0, always: 1, never: 2 } as const;
const MISMATCH = { LOG: 1, ADD: 2, DELETE: 3, REPLACE: 4 } as const;
export const L7_KIND = { none: 0, http: 1, kafka: 2, dns: 3 } as const;

class SelectorTable {
  readonly list: SelectorSpec[] = [];
  #index = new Map<string, number>();

  id(s: SelectorSpec): number {
    const key = JSON.stringify(s.kind === "none" ? { kind: "none" } : s);
    let i = this.#index.get(key);
    if (i === undefined) {
      i = this.list.length;
      this.list.push(s);
      this.#index.set(key, i);
    }
    return i;
  }
}

function writeSelector(w: ByteWriter, s: SelectorSpec): void {
  w.u8(SEL_KIND[s.kind]);
  if (s.kind === "labels") {
    w.list(s.requirements, (r) => {
      w.str(r.source).str(r.key).u8(OPS[r.op]);
      w.list(r.values, (v) => w.str(v));
    });
  } else if (s.kind === "cidr") {
    w.prefix(parsePrefix(s.cidr));
    w.list(s.except, (e) => w.prefix(parsePrefix(e)));
  }
}

function writeL7(w: ByteWriter, l7: L7Spec | undefined): void {
  if (!l7) {
    w.u8(L7_KIND.none).u32(0);
    return;
  }
  w.u8(L7_KIND[l7.kind]);
  if (l7.kind === "http") {
    w.list(l7.rules, (r) => {
      w.str(r.method).str(r.path).str(r.host);
      w.list(r.headers, (h) => w.str(h.name).str(h.value));
      w.list(r.headerMatches, (m) => {
        w.str(m.name).str(m.value).u8(m.secret ? 1 : 0).u8(m.mismatch ? MISMATCH[m.mismatch] : 0);
      });
    });
  } else if (l7.kind === "kafka") {
    w.list(l7.rules, (r) => {
      w.list(r.apiKeys, (k) => w.u16(k));
      w.i32(r.apiVersion ?? -1).str(r.clientID).str(r.topic);
    });
  } else {
    w.list(l7.rules, (r) => w.str(r.matchName).str(r.matchPattern));
  }
}

function writeEntry(w: ByteWriter, e: EntrySpec, rule: number, sels: SelectorTable): void {
  const dir = e.direction === "ingress" ? POLICY_DIR_INGRESS : POLICY_DIR_EGRESS;
  w.i32(rule).u32(e.cookie).u8(dir).u8(e.deny ? 1 : 0).u16(0);
  w.list(e.peers, (p) => w.i32(sels.id(p.selector)).u8(p.requiresApply ? 1 : 0));
  w.list(e.ports, (p) => w.u8(p.proto).u16(p.port).u16(p.endPort).str(p.name));
  writeL7(w, e.l7);
}

/** MSG_RULES for a spec; also returns the flattened entries (index = engine entry index). */
export function encodeRules(
  spec: PolicySpec,
  opts: EngineOptions,
): { bytes: Uint8Array; entries: { rule: number; entry: EntrySpec }[] } {
  const sels = new SelectorTable();
  const rules = spec.rules.map((r) => ({
    subject: sels.id(r.subject),
    reqIn: r.requires.ingress.map((s) => sels.id(s)),
    reqEg: r.requires.egress.map((s) => sels.id(s)),
    reqInDeny: (r.requires.ingressDeny ?? []).map((s) => sels.id(s)),
    reqEgDeny: (r.requires.egressDeny ?? []).map((s) => sels.id(s)),
  }));
  const entries = spec.rules.flatMap((r, rule) => r.entries.map((entry) => ({ rule, entry })));
  for (const { entry } of entries) for (const p of entry.peers) sels.id(p.selector);
  const body = new ByteWriter();
  for (const { rule, entry } of entries) writeEntry(body, entry, rule, sels);
  const w = new ByteWriter(MSG.RULES);
  w.u8(ENFORCEMENT[opts.enforcement]).u8(opts.allowLocalhost ? 1 : 0).u16(0);
  w.list(sels.list, (s) => writeSelector(w, s));
  w.u32(spec.rules.length);
  spec.rules.forEach((r, i) => {
    const e = rules[i]!;
    w.i32(e.subject).u8(r.subjectKind === "node" ? 1 : 0);
    w.u8(r.defaultDeny.ingress ? 1 : 0).u8(r.defaultDeny.egress ? 1 : 0);
    w.u8(spec.policies[r.policy]?.mode === "audit" ? 1 : 0);
    w.list(e.reqIn, (x) => w.i32(x));
    w.list(e.reqEg, (x) => w.i32(x));
    w.list(e.reqInDeny, (x) => w.i32(x));
    w.list(e.reqEgDeny, (x) => w.i32(x));
  });
  w.u32(entries.length);
  const head = w.bytes();
  const tail = body.bytes();
  const bytes = new Uint8Array(head.length + tail.length);
  bytes.set(head);
  bytes.set(tail, head.length);
  return { bytes, entries };
}

/** `source:key=value` → [source, key, value]; a label without source is `unspec`. */
export function splitLabel(label: string): [string, string, string] {
  const colon = label.indexOf(":");
  const eq = label.indexOf("=", colon + 1);
  const source = colon > 0 && (eq < 0 || colon < eq) ? label.slice(0, colon) : "unspec";
  const rest = source === "unspec" && !label.startsWith("unspec:") ? label : label.slice(colon + 1);
  const e = rest.indexOf("=");
  return e < 0 ? [source, rest, ""] : [source, rest.slice(0, e), rest.slice(e + 1)];
}

export function encodeIdentities(list: readonly IdentitySpec[]): Uint8Array {
  const w = new ByteWriter(MSG.IDENTITIES);
  w.list(list, (id) => {
    w.u32(id.id);
    if (id.cidr !== undefined) {
      w.u8(1).prefix(id.cidr === "world" ? WORLD_PREFIX : parsePrefix(id.cidr));
    } else w.u8(0);
    w.list(id.labels, (l) => {
      const [s, k, v] = splitLabel(l);
      w.str(s).str(k).str(v);
    });
  });
  return w.bytes();
}

export function encodeIdentityRemoval(ids: readonly number[]): Uint8Array {
  const w = new ByteWriter(MSG.IDENTITIES_REMOVE);
  w.list(ids, (id) => w.u32(id));
  return w.bytes();
}

const PORT_PROTO = { TCP: 6, UDP: 17, SCTP: 132 } as const;

export function encodeEndpoints(list: readonly EngineEndpoint[]): Uint8Array {
  const w = new ByteWriter(MSG.ENDPOINTS);
  w.list(list, (ep) => _writeEndpoint(w, ep));
  return w.bytes();
}

/** MSG_ENDPOINTS_UPDATE: endpoints to add or replace, then ids to remove; the others stay. */
export function encodeEndpointsUpdate(
  upserts: readonly EngineEndpoint[],
  removes: readonly number[],
): Uint8Array {
  const w = new ByteWriter(MSG.ENDPOINTS_UPDATE);
  w.list(upserts, (ep) => _writeEndpoint(w, ep));
  w.list(removes, (id) => w.u32(id));
  return w.bytes();
}

function _writeEndpoint(w: ByteWriter, ep: EngineEndpoint): void {
  w.u32(ep.id).u32(ep.identity);
  w.list(ep.namedPorts, (p) => w.str(p.name).u16(p.port).u8(PORT_PROTO[p.protocol]));
}

export interface IpcacheEntry {
  prefix: string;
  identity: number;
}

export function encodeIpcache(
  upserts: readonly IpcacheEntry[],
  deletes: readonly IpcacheEntry[],
): Uint8Array {
  const w = new ByteWriter(MSG.IPCACHE);
  w.list(upserts, (e) => w.prefixText(e.prefix).u32(e.identity));
  w.list(deletes, (e) => w.prefixText(e.prefix).u32(e.identity));
  return w.bytes();
}

export function encodeIpLookup(ip: string): Uint8Array {
  return new ByteWriter(MSG.IP_LOOKUP).prefixText(ip).bytes();
}
