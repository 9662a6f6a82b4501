// Decoders for the host's messages: rules (with their selector table), identities, endpoints.
// A message is applied only when it decoded completely, so a malformed message leaves the
// previous state in force. The encoder is policy-wasm/src/wire.ts.

import {
  DIR_EGRESS,
  DnsRule,
  Endpoint,
  endpoints,
  endpointsByIdentity,
  Entry,
  HeaderMatch,
  HeaderRule,
  HttpRule,
  identities,
  Identity,
  identityIndex,
  indexEndpoint,
  intern,
  internLabel,
  KafkaRule,
  L7_DNS,
  L7_HTTP,
  L7_KAFKA,
  NamedPort,
  Options,
  PortSpec,
  Prefix,
  rebuildNamedPorts,
  rebuildNamedPortsOf,
  releaseLabels,
  Requirement,
  Rule,
  SEL_ALL,
  SEL_CIDR,
  SEL_LABELS,
  Selector,
  unindexEndpoint,
} from "./model";
import * as model from "./model";
import { cacheRebuild, cacheUpdateIdentity } from "./selectors";
import { dropContext, invalidateContexts, invalidateContextsOf } from "./resolve";
import { compileRegexString, lastRegexError, lastRegexErrorOffset, Regex } from "./regex/index";
import { dnsPatternRegex } from "./dns";
import { ipcacheRemoveIdentityPrefix, ipcacheSetIdentityPrefix } from "./ipcache";
import {
  MSG_ENDPOINTS,
  MSG_ENDPOINTS_UPDATE,
  MSG_IDENTITIES,
  MSG_IDENTITIES_REMOVE,
  MSG_RULES,
  readPrefix,
} from "./messages";
import {
  Reader,
  ST_BAD_HEADER,
  ST_BAD_REGEX,
  ST_BAD_VALUE,
  ST_OK,
  ST_TRUNCATED,
  Writer,
} from "./wire";

// ---- regex errors are reported with their location ------------------------------------------

let regexFailed = false;
let regexEntry: i32 = -1;
let regexRule: i32 = -1;
let regexField: i32 = 0;
let regexCode: i32 = 0;
let regexOffset: i32 = 0;
let curEntry: i32 = 0;
let curRule: i32 = 0;

// Compiled regexes by flags and pattern: a rules message often repeats a pattern (one L7 rule in
// many policies), and a reload repeats the last message's. A Regex is immutable but for its lazily
// built DFA, so sharing one is safe. Only the patterns of the last two messages are kept.
let regexCache = new Map<string, Regex>();
let regexCachePrev = new Map<string, Regex>();

function regex(pattern: string | null, field: i32, flags: i32 = 0): Regex | null {
  if (pattern === null) return null;
  const key = flags.toString() + ":" + pattern;
  if (regexCache.has(key)) return regexCache.get(key);
  if (regexCachePrev.has(key)) {
    const known = regexCachePrev.get(key);
    regexCache.set(key, known);
    return known;
  }
  const re = compileRegexString(pattern, flags);
  if (re !== null) regexCache.set(key, re);
  if (re === null && !regexFailed) {
    regexFailed = true;
    regexEntry = curEntry;
    regexRule = curRule;
    regexField = field;
    regexCode = lastRegexError();
    regexOffset = lastRegexErrorOffset();
  }
  return re;
}

/** Field codes in a regex error: 1 method, 2 path, 3 host, 4 header value, 5 DNS pattern. */
function writeRegexError(): void {
  const w = new Writer();
  w.i32(regexEntry);
  w.i32(regexRule);
  w.i32(regexField);
  w.i32(regexCode);
  w.i32(regexOffset);
  w.flush();
}

// ---- rules ----------------------------------------------------------------------------------

function readSelector(r: Reader): Selector {
  const s = new Selector();
  s.kind = r.u8();
  if (s.kind == SEL_LABELS) {
    const n = r.count(10);
    for (let i = 0; i < n; i++) {
      const q = new Requirement();
      q.src = intern(r.strOrEmpty());
      q.key = intern(r.strOrEmpty());
      q.op = r.u8();
      const nv = r.count(4);
      for (let j = 0; j < nv; j++) q.values.push(intern(r.strOrEmpty()));
      s.reqs.push(q);
    }
  } else if (s.kind == SEL_CIDR) {
    s.cidr = readPrefix(r);
    const n = r.count(18);
    for (let i = 0; i < n; i++) s.excepts.push(readPrefix(r));
  }
  return s;
}

function readIndexList(r: Reader, out: Array<i32>): void {
  const n = r.count(4);
  for (let i = 0; i < n; i++) out.push(r.i32());
}

function readHttp(r: Reader): HttpRule {
  const h = new HttpRule();
  h.method = regex(r.str(), 1);
  h.path = regex(r.str(), 2);
  h.host = regex(r.str(), 3);
  const nh = r.count(8);
  for (let i = 0; i < nh; i++) {
    const hr = new HeaderRule();
    hr.name = r.strOrEmpty();
    hr.value = regex(r.str(), 4);
    h.headers.push(hr);
  }
  const nm = r.count(10);
  for (let i = 0; i < nm; i++) {
    const m = new HeaderMatch();
    m.name = r.strOrEmpty();
    m.value = r.str();
    m.secret = r.u8() != 0;
    m.mismatch = r.u8();
    h.headerMatches.push(m);
  }
  return h;
}

function readKafka(r: Reader): KafkaRule {
  const k = new KafkaRule();
  const n = r.count(2);
  for (let i = 0; i < n; i++) k.apiKeys.push(<i32> r.u16());
  k.apiVersion = r.i32();
  k.clientID = r.str();
  k.topic = r.str();
  return k;
}

function readDns(r: Reader): DnsRule {
  const d = new DnsRule();
  const name = r.str();
  const pattern = r.str();
  if (name !== null) d.name = name.toLowerCase();
  if (pattern !== null) d.pattern = regex(dnsPatternRegex(pattern), 5);
  return d;
}

function readEntry(r: Reader, sels: Array<Selector>): Entry {
  const e = new Entry();
  e.rule = r.i32();
  e.cookie = r.u32();
  e.dir = r.u8();
  e.deny = r.u8() != 0;
  r.u16();
  const np = r.count(5);
  for (let i = 0; i < np; i++) {
    const s = r.i32();
    e.peers.push(s);
    e.peerRequires.push(r.u8() != 0);
    if (s >= 0 && s < sels.length && sels[s].kind == SEL_ALL) e.wildcard = true;
  }
  const nports = r.count(9);
  for (let i = 0; i < nports; i++) {
    const p = new PortSpec();
    p.proto = r.u8();
    p.port = r.u16();
    p.endPort = r.u16();
    const name = r.str();
    p.name = name === null ? -1 : <i32> intern(name);
    if (p.name >= 0 && e.dir == DIR_EGRESS) e.egressNamed = true;
    e.ports.push(p);
  }
  e.l7 = r.u8();
  const nl7 = r.count(4);
  for (let i = 0; i < nl7; i++) {
    curRule = i;
    if (e.l7 == L7_HTTP) e.http.push(readHttp(r));
    else if (e.l7 == L7_KAFKA) e.kafka.push(readKafka(r));
    else if (e.l7 == L7_DNS) e.dns.push(readDns(r));
  }
  return e;
}

function indexList(list: Array<i32>, n: i32): bool {
  for (let i = 0; i < list.length; i++) if (list[i] < 0 || list[i] >= n) return false;
  return true;
}

/**
 * Every selector index of a rules message (subjects, requires, peers) names a selector of its
 * table: the selector cache is read without bounds checks.
 */
function indicesValid(rules: Array<Rule>, list: Array<Entry>, nsel: i32): bool {
  for (let i = 0; i < rules.length; i++) {
    const rule = rules[i];
    if (rule.subject < 0 || rule.subject >= nsel) return false;
    if (!indexList(rule.requiresIngress, nsel) || !indexList(rule.requiresEgress, nsel)) {
      return false;
    }
    if (!indexList(rule.requiresIngressDeny, nsel) || !indexList(rule.requiresEgressDeny, nsel)) {
      return false;
    }
  }
  for (let i = 0; i < list.length; i++) if (!indexList(list[i].peers, nsel)) return false;
  return true;
}

/** MSG_RULES: options, selector table, rules, entries. Replaces all rules atomically. */
export function loadRules(len: i32): i32 {
  const r = Reader.fromInput(len);
  if (!r.header(MSG_RULES)) return ST_BAD_HEADER;
  regexFailed = false;
  regexCachePrev = regexCache;
  regexCache = new Map<string, Regex>();
  const opts = new Options();
  opts.enforcement = r.u8();
  opts.allowLocalhost = r.u8() != 0;
  r.u16();
  const sels = new Array<Selector>();
  const ns = r.count(1);
  for (let i = 0; i < ns && !r.failed; i++) sels.push(readSelector(r));
  const newRules = new Array<Rule>();
  const nr = r.count(8);
  for (let i = 0; i < nr && !r.failed; i++) {
    const rule = new Rule();
    rule.subject = r.i32();
    rule.nodeSubject = r.u8() != 0;
    rule.ddIngress = r.u8() != 0;
    rule.ddEgress = r.u8() != 0;
    rule.audit = r.u8() != 0;
    readIndexList(r, rule.requiresIngress);
    readIndexList(r, rule.requiresEgress);
    readIndexList(r, rule.requiresIngressDeny);
    readIndexList(r, rule.requiresEgressDeny);
    newRules.push(rule);
  }
  const newEntries = new Array<Entry>();
  const ne = r.count(16);
  for (let i = 0; i < ne && !r.failed; i++) {
    curEntry = i;
    const e = readEntry(r, sels);
    if (e.rule >= 0 && e.rule < newRules.length) newRules[e.rule].entries.push(i);
    newEntries.push(e);
  }
  if (r.failed) return ST_TRUNCATED;
  if (!indicesValid(newRules, newEntries, sels.length)) return ST_BAD_VALUE;
  if (regexFailed) {
    writeRegexError();
    return ST_BAD_REGEX;
  }
  model.options = opts;
  model.rules = newRules;
  model.entries = newEntries;
  model.selectors.length = 0;
  for (let i = 0; i < sels.length; i++) model.selectors.push(sels[i]);
  cacheRebuild();
  invalidateContexts();
  return ST_OK;
}

// ---- identities -----------------------------------------------------------------------------

const freeSlots = new Array<i32>();

function readIdentity(r: Reader): Identity {
  const id = new Identity();
  id.id = r.u32();
  if (r.u8() != 0) id.cidr = readPrefix(r);
  const n = r.count(12);
  const labels = new StaticArray<u32>(n * 3);
  for (let i = 0; i < n * 3; i++) labels[i] = internLabel(r.strOrEmpty());
  id.labels = labels;
  return id;
}

function placeIdentity(id: Identity): void {
  let slot: i32;
  let old: Identity | null = null;
  if (identityIndex.has(id.id)) {
    slot = identityIndex.get(id.id);
    old = identities[slot];
    if (old.cidr !== null) ipcacheRemoveIdentityPrefix(old.cidr!, old.id);
    identities[slot] = id;
  } else if (freeSlots.length > 0) {
    slot = freeSlots.pop();
    identities[slot] = id;
  } else {
    slot = identities.length;
    identities.push(id);
  }
  identityIndex.set(id.id, slot);
  if (id.cidr !== null) ipcacheSetIdentityPrefix(id.cidr!, id.id);
  cacheUpdateIdentity(slot, old);
  if (old !== null) releaseLabels(old.labels);
  invalidateContextsOf(id.id);
}

/** MSG_IDENTITIES: adds or replaces identities; output: the slot of each, in order. */
export function upsertIdentities(len: i32): i32 {
  const r = Reader.fromInput(len);
  if (!r.header(MSG_IDENTITIES)) return ST_BAD_HEADER;
  const list = new Array<Identity>();
  const n = r.count(9);
  for (let i = 0; i < n && !r.failed; i++) list.push(readIdentity(r));
  if (r.failed) {
    for (let i = 0; i < list.length; i++) releaseLabels(list[i].labels);
    return ST_TRUNCATED;
  }
  for (let i = 0; i < list.length; i++) placeIdentity(list[i]);
  return ST_OK;
}

/** MSG_IDENTITIES_REMOVE: ids to drop from the cache. Unknown ids are ignored. */
export function removeIdentities(len: i32): i32 {
  const r = Reader.fromInput(len);
  if (!r.header(MSG_IDENTITIES_REMOVE)) return ST_BAD_HEADER;
  const n = r.count(4);
  const ids = new Array<u32>();
  for (let i = 0; i < n; i++) ids.push(r.u32());
  if (r.failed) return ST_TRUNCATED;
  for (let i = 0; i < ids.length; i++) {
    if (!identityIndex.has(ids[i])) continue;
    const slot = identityIndex.get(ids[i]);
    const old = identities[slot];
    if (old.cidr !== null) ipcacheRemoveIdentityPrefix(old.cidr!, old.id);
    old.alive = false;
    identityIndex.delete(ids[i]);
    cacheUpdateIdentity(slot, old);
    releaseLabels(old.labels);
    invalidateContextsOf(ids[i]);
    freeSlots.push(slot);
  }
  return ST_OK;
}

// ---- endpoints ------------------------------------------------------------------------------

function readEndpoint(r: Reader): Endpoint {
  const ep = new Endpoint();
  ep.id = r.u32();
  ep.identity = r.u32();
  const np = r.count(7);
  for (let j = 0; j < np; j++) {
    const p = new NamedPort();
    p.name = intern(r.strOrEmpty());
    p.port = r.u16();
    p.proto = r.u8();
    ep.namedPorts.push(p);
  }
  return ep;
}

/** MSG_ENDPOINTS: replaces the set of local endpoints (id, identity, named ports). */
export function loadEndpoints(len: i32): i32 {
  const r = Reader.fromInput(len);
  if (!r.header(MSG_ENDPOINTS)) return ST_BAD_HEADER;
  const list = new Array<Endpoint>();
  const n = r.count(12);
  for (let i = 0; i < n && !r.failed; i++) list.push(readEndpoint(r));
  if (r.failed) return ST_TRUNCATED;
  endpoints.clear();
  endpointsByIdentity.clear();
  for (let i = 0; i < list.length; i++) {
    if (endpoints.has(list[i].id)) unindexEndpoint(endpoints.get(list[i].id));
    endpoints.set(list[i].id, list[i]);
    indexEndpoint(list[i]);
  }
  rebuildNamedPorts();
  invalidateContexts();
  return ST_OK;
}

/**
 * MSG_ENDPOINTS_UPDATE: endpoints to add or replace (as MSG_ENDPOINTS), then ids to remove; the
 * other endpoints stay, with their cached contexts. Costs in proportion to the message, not to
 * the endpoints already there (only an identity whose endpoints have named ports gets them rebuilt).
 */
export function updateEndpoints(len: i32): i32 {
  const r = Reader.fromInput(len);
  if (!r.header(MSG_ENDPOINTS_UPDATE)) return ST_BAD_HEADER;
  const list = new Array<Endpoint>();
  const n = r.count(12);
  for (let i = 0; i < n && !r.failed; i++) list.push(readEndpoint(r));
  const nr = r.count(4);
  const removes = new Array<u32>();
  for (let i = 0; i < nr && !r.failed; i++) removes.push(r.u32());
  if (r.failed) return ST_TRUNCATED;
  const touched = new Array<u32>();
  for (let i = 0; i < removes.length; i++) {
    if (!endpoints.has(removes[i])) continue;
    const old = endpoints.get(removes[i]);
    if (old.namedPorts.length > 0) touched.push(old.identity);
    unindexEndpoint(old);
    endpoints.delete(removes[i]);
    dropContext(removes[i]);
  }
  for (let i = 0; i < list.length; i++) {
    const ep = list[i];
    if (endpoints.has(ep.id)) {
      const old = endpoints.get(ep.id);
      if (old.namedPorts.length > 0) touched.push(old.identity);
      unindexEndpoint(old);
    }
    if (ep.namedPorts.length > 0) touched.push(ep.identity);
    endpoints.set(ep.id, ep);
    indexEndpoint(ep);
    dropContext(ep.id);
  }
  for (let i = 0; i < touched.length; i++) rebuildNamedPortsOf(touched[i]);
  return ST_OK;
}
