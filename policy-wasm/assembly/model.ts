// The engine's in-memory model: interned strings, identities, selectors (with their cached
// identity sets), rules, entries and endpoints. Loaders fill it (load.ts); the selector cache
// (selectors.ts) and resolution (resolve.ts, query.ts) read it. No I/O.

import { Regex } from "./regex/index";

export const OP_IN: u8 = 0;
export const OP_NOT_IN: u8 = 1;
export const OP_EXISTS: u8 = 2;
export const OP_DOES_NOT_EXIST: u8 = 3;

export const SEL_LABELS: u8 = 0;
export const SEL_CIDR: u8 = 1;
export const SEL_ALL: u8 = 2;
export const SEL_NONE: u8 = 3;

// The engine's directions are the policy side's (0 ingress, 1 egress): the wire value and the
// policy map key's egress field, generated with the kernel's constants (not the datapath's DIR_*).
export {
  POLICY_DIR_EGRESS as DIR_EGRESS,
  POLICY_DIR_INGRESS as DIR_INGRESS,
} from "./constants.generated";

export const L7_NONE: u8 = 0;
export const L7_HTTP: u8 = 1;
export const L7_KAFKA: u8 = 2;
export const L7_DNS: u8 = 3;

export const ENFORCE_DEFAULT: u8 = 0;
export const ENFORCE_ALWAYS: u8 = 1;
export const ENFORCE_NEVER: u8 = 2;

export const PROTO_ANY: u8 = 0;
export const PROTO_ICMP: u8 = 1;
export const PROTO_TCP: u8 = 6;
export const PROTO_UDP: u8 = 17;
export const PROTO_ICMPV6: u8 = 58;
export const PROTO_SCTP: u8 = 132;

/** Reserved identity numbers (POLICY-SEMANTICS §10). */
export const ID_HOST: u32 = 1;
export const ID_WORLD: u32 = 2;

// ---- strings --------------------------------------------------------------------------------

const internMap = new Map<string, u32>();
export const internedStrings = new Array<string>();
/**
 * Per interned id: how many identity labels use it, or -1 for a string that policy (selectors,
 * ports) interned, which stays. A string only identities used is dropped when the last of them
 * goes and its id reused, so label values unique to a pod (a name, a hash) do not pile up as pods
 * come and go.
 */
const labelRefs = new Array<i32>();
const freeIds = new Array<u32>();

function newId(s: string): u32 {
  let id: u32;
  if (freeIds.length > 0) {
    id = freeIds.pop();
    internedStrings[id] = s;
    labelRefs[id] = 0;
  } else {
    id = <u32> internedStrings.length;
    internedStrings.push(s);
    labelRefs.push(0);
  }
  internMap.set(s, id);
  return id;
}

/**
 * Interns a string for good (policy's strings); equal strings get equal ids. Id 0 is reserved
 * for "any" (the source).
 */
export function intern(s: string): u32 {
  const id = internMap.has(s) ? internMap.get(s) : newId(s);
  labelRefs[id] = -1;
  return id;
}

/** Interns an identity's label string: one reference, given back by releaseLabels(). */
export function internLabel(s: string): u32 {
  const id = internMap.has(s) ? internMap.get(s) : newId(s);
  if (labelRefs[id] >= 0) labelRefs[id]++;
  return id;
}

/** Gives back the references of internLabel() for each id of `labels`. */
export function releaseLabels(labels: StaticArray<u32>): void {
  for (let i = 0; i < labels.length; i++) {
    const id = unchecked(labels[i]);
    if (labelRefs[id] <= 0 || --labelRefs[id] > 0) continue;
    internMap.delete(internedStrings[id]);
    internedStrings[id] = "";
    freeIds.push(id);
  }
}

/** Interned strings held (tests: label values of gone identities must not stay). */
export function internedCount(): i32 {
  return internMap.size;
}

export const SRC_ANY: u32 = intern("any");

// ---- prefixes -------------------------------------------------------------------------------

export class Prefix {
  family: u8 = 0; // 4, 6, or 0 for "either family, length 0" (reserved:world)
  len: u8 = 0;
  addr: StaticArray<u8> = new StaticArray<u8>(16);

  /** True when `other` lies inside this prefix (same family, longer or equal, same leading bits). */
  contains(other: Prefix): bool {
    if (this.family == 0) return this.len == 0;
    if (other.family == 0) return this.len == 0 && other.len == 0;
    if (other.family != this.family || other.len < this.len) return false;
    return leadingBitsEqual(this.addr, other.addr, this.len);
  }
}

export function leadingBitsEqual(a: StaticArray<u8>, b: StaticArray<u8>, bits: i32): bool {
  let i = 0;
  for (; i + 8 <= bits; i += 8) {
    if (a[i >> 3] != b[i >> 3]) return false;
  }
  const rest = bits - i;
  if (rest == 0) return true;
  const mask = <u8> (0xff << <u8> (8 - rest));
  return (a[i >> 3] & mask) == (b[i >> 3] & mask);
}

// ---- identities -----------------------------------------------------------------------------

export class Identity {
  id: u32 = 0;
  alive: bool = true;
  /**
   * Label triples (source, key, value) as interned ids, flat: one object per identity keeps
   * the heap the garbage collector walks small at 100k identities.
   */
  labels: StaticArray<u32> = new StaticArray<u32>(0);
  cidr: Prefix | null = null;
}

export const identities = new Array<Identity>();
export const identityIndex = new Map<u32, i32>();

// ---- selectors ------------------------------------------------------------------------------

export class Requirement {
  src: u32 = 0;
  key: u32 = 0;
  op: u8 = 0;
  values: Array<u32> = new Array<u32>();
}

export class Selector {
  kind: u8 = SEL_LABELS;
  reqs: Array<Requirement> = new Array<Requirement>();
  cidr: Prefix = new Prefix();
  excepts: Array<Prefix> = new Array<Prefix>();
  /** Selector cache (selectors.ts): sorted identity slots, or one bit per slot when `dense`. */
  slots: Array<i32> = new Array<i32>();
  bits: Array<u32> = new Array<u32>();
  dense: bool = false;
  /** The In requirement the selector index files it under (selectors.ts), or -1. */
  narrow: i32 = -1;
}

export const selectors = new Array<Selector>();

// ---- rules and entries ----------------------------------------------------------------------

export class PortSpec {
  proto: u8 = 0;
  port: u16 = 0;
  endPort: u16 = 0;
  /** Interned named port, or -1. */
  name: i32 = -1;
}

export class HeaderRule {
  name: string = "";
  value: Regex | null = null;
}

export class HeaderMatch {
  name: string = "";
  value: string | null = null;
  secret: bool = false;
  mismatch: u8 = 0;
}

export class HttpRule {
  method: Regex | null = null;
  path: Regex | null = null;
  host: Regex | null = null;
  headers: Array<HeaderRule> = new Array<HeaderRule>();
  headerMatches: Array<HeaderMatch> = new Array<HeaderMatch>();
}

export class KafkaRule {
  apiKeys: Array<i32> = new Array<i32>();
  apiVersion: i32 = -1;
  clientID: string | null = null;
  topic: string | null = null;
}

export class DnsRule {
  name: string | null = null;
  pattern: Regex | null = null;
}

export class Entry {
  rule: i32 = 0;
  cookie: u32 = 0;
  dir: u8 = 0;
  deny: bool = false;
  peers: Array<i32> = new Array<i32>();
  peerRequires: Array<bool> = new Array<bool>();
  /** True when one peer selector selects every identity (L4-only rules, `all`). */
  wildcard: bool = false;
  ports: Array<PortSpec> = new Array<PortSpec>();
  /** An egress entry with a named port: its ports depend on the peer (resolved on the peer pod). */
  egressNamed: bool = false;
  l7: u8 = L7_NONE;
  http: Array<HttpRule> = new Array<HttpRule>();
  kafka: Array<KafkaRule> = new Array<KafkaRule>();
  dns: Array<DnsRule> = new Array<DnsRule>();
}

export class Rule {
  subject: i32 = 0;
  nodeSubject: bool = false;
  ddIngress: bool = false;
  ddEgress: bool = false;
  /** Audit mode (`cilia.io/policy-mode: audit`): the rule decides nothing, its drops are reported. */
  audit: bool = false;
  /** fromRequires/toRequires of allow rules: they narrow allow entries only. */
  requiresIngress: Array<i32> = new Array<i32>();
  requiresEgress: Array<i32> = new Array<i32>();
  /** fromRequires/toRequires of deny rules: they narrow deny entries only (Cilium keeps the two apart). */
  requiresIngressDeny: Array<i32> = new Array<i32>();
  requiresEgressDeny: Array<i32> = new Array<i32>();
  entries: Array<i32> = new Array<i32>();
}

export class Options {
  enforcement: u8 = ENFORCE_DEFAULT;
  allowLocalhost: bool = true;
}

export let options = new Options();
export let rules = new Array<Rule>();
export let entries = new Array<Entry>();

export function resetRules(): void {
  options = new Options();
  rules = new Array<Rule>();
  entries = new Array<Entry>();
  selectors.length = 0;
}

// ---- endpoints ------------------------------------------------------------------------------

export class NamedPort {
  name: u32 = 0;
  port: u16 = 0;
  proto: u8 = 0;
}

export class Endpoint {
  id: u32 = 0;
  identity: u32 = 0;
  namedPorts: Array<NamedPort> = new Array<NamedPort>();
}

export const endpoints = new Map<u32, Endpoint>();

/** The ids of the local endpoints of each identity (kept by the endpoint loaders, load.ts). */
export const endpointsByIdentity = new Map<u32, Array<u32>>();

export function indexEndpoint(ep: Endpoint): void {
  if (!endpointsByIdentity.has(ep.identity)) endpointsByIdentity.set(ep.identity, new Array<u32>());
  endpointsByIdentity.get(ep.identity).push(ep.id);
}

export function unindexEndpoint(ep: Endpoint): void {
  if (!endpointsByIdentity.has(ep.identity)) return;
  const list = endpointsByIdentity.get(ep.identity);
  const at = list.indexOf(ep.id);
  if (at >= 0) {
    list[at] = list[list.length - 1];
    list.pop();
  }
  if (list.length == 0) endpointsByIdentity.delete(ep.identity);
}

/** Named ports of every endpoint, grouped by the endpoint's identity (egress named ports). */
export let namedPortsByIdentity = new Map<u32, Array<NamedPort>>();

export function rebuildNamedPorts(): void {
  namedPortsByIdentity = new Map<u32, Array<NamedPort>>();
  const all = endpoints.values();
  for (let i = 0; i < all.length; i++) {
    const ep = all[i];
    if (ep.namedPorts.length == 0) continue;
    if (!namedPortsByIdentity.has(ep.identity)) {
      namedPortsByIdentity.set(ep.identity, new Array<NamedPort>());
    }
    const list = namedPortsByIdentity.get(ep.identity);
    for (let j = 0; j < ep.namedPorts.length; j++) list.push(ep.namedPorts[j]);
  }
}

/**
 * Rebuilds the named ports of one identity from the endpoints that have it (after an endpoint
 * of that identity was added, replaced or removed): the same list rebuildNamedPorts() makes.
 */
export function rebuildNamedPortsOf(identity: u32): void {
  const list = new Array<NamedPort>();
  const all = endpoints.values();
  for (let i = 0; i < all.length; i++) {
    const ep = all[i];
    if (ep.identity != identity) continue;
    for (let j = 0; j < ep.namedPorts.length; j++) list.push(ep.namedPorts[j]);
  }
  if (list.length > 0) namedPortsByIdentity.set(identity, list);
  else if (namedPortsByIdentity.has(identity)) namedPortsByIdentity.delete(identity);
}
