// PolicyEngine: the object that owns one instance of policy.wasm and speaks its message protocol.
// Typed methods in, typed results out; WASM statuses become typed errors. The engine keeps the
// last accepted rules, identities, endpoints and ipcache, so a trap (a broken invariant) is
// recovered by re-instantiating and replaying them: bad input never leaves a dead engine. This
// module is browser compatible.

import { EngineError, PolicyValidationError } from "./errors.ts";
import type { EngineEndpoint, EngineOptions, EntrySpec, IdentitySpec, PolicySpec } from "./ir.ts";
import { DEFAULT_OPTIONS } from "./ir.ts";
import {
  encodeEndpoints,
  encodeEndpointsUpdate,
  encodeIdentities,
  encodeIdentityRemoval,
  encodeIpcache,
  encodeIpLookup,
  encodeRules,
  type IpcacheEntry,
} from "./encode.ts";
import {
  decodeMapState,
  decodeQuery,
  encodeQuery,
  type HttpRequest,
  type MapState,
  type QueryInput,
  type QueryResult,
} from "./query_codec.ts";
import { regexErrorMessage } from "./regex_errors.ts";
import { RegexSet, type RegexSetExports } from "./regex_set.ts";
import { type HttpVerdict, type HttpVerdictExports, HttpVerdictWriter } from "./http_verdict.ts";
import { ByteReader } from "./wire.ts";
import { canonicalPrefix } from "./cidr.ts";
import { loadPolicyWasm } from "./wasm.ts";

/** The number-only exports of policy.wasm (assembly/index.ts). */
export interface EngineExports extends RegexSetExports, HttpVerdictExports {
  memory: WebAssembly.Memory;
  input_reserve(len: number): number;
  output_ptr(): number;
  output_len(): number;
  rules_load(len: number): number;
  identities_upsert(len: number): number;
  identities_remove(len: number): number;
  interned_count(): number;
  endpoints_load(len: number): number;
  endpoints_update(len: number): number;
  endpoints_affected(identity: number): number;
  ipcache_update(len: number): number;
  ip_lookup(len: number): number;
  mapstate_compute(ep: number): number;
  mapstate_for_identity(ep: number, id: number): number;
  query(len: number): number;
  regex_compile(len: number, flags: number): number;
  regex_error_offset(): number;
  regex_release(h: number): void;
  regex_match(h: number, len: number): number;
}

const STATUS: Record<number, string> = {
  [-1]: "bad message header",
  [-2]: "truncated or malformed message",
  [-3]: "a regular expression does not compile",
  [-4]: "unknown endpoint",
  [-5]: "bad value",
  [-6]: "conflicting L7 protocols on one port",
};

/** The embedded module, compiled once per process and shared by every engine instance. */
let embedded: Promise<WebAssembly.Module> | undefined;

export class PolicyEngine {
  #module: WebAssembly.Module;
  #x!: EngineExports;
  #rules?: Uint8Array;
  #entries: { rule: number; entry: EntrySpec }[] = [];
  #spec: PolicySpec = { policies: [], rules: [] };
  #options: EngineOptions = DEFAULT_OPTIONS;
  #identities = new Map<number, IdentitySpec>();
  /** The engine's endpoint list, by id (replayed after a trap); undefined until first set. */
  #endpoints?: Map<number, EngineEndpoint>;
  /** The explicit ipcache as the engine holds it: one identity per canonical prefix. */
  #ipcache = new Map<string, IpcacheEntry>();
  #closed = false;
  #httpVerdict = new HttpVerdictWriter();
  #revision = 0;
  readonly #onChange = new Set<() => void>();

  private constructor(module: WebAssembly.Module) {
    this.#module = module;
    this.#instantiate();
  }

  /** Loads the embedded policy.wasm (or the given module/bytes). */
  static async create(wasm?: WebAssembly.Module | Uint8Array): Promise<PolicyEngine> {
    if (wasm instanceof WebAssembly.Module) return new PolicyEngine(wasm);
    if (wasm) return new PolicyEngine(await WebAssembly.compile(wasm as BufferSource));
    embedded ??= loadPolicyWasm().then((bytes) => WebAssembly.compile(bytes as BufferSource));
    return new PolicyEngine(await embedded);
  }

  #instantiate(): void {
    const instance = new WebAssembly.Instance(this.#module, {});
    this.#x = instance.exports as unknown as EngineExports;
  }

  /** Re-instantiates and replays the accepted state after a trap. */
  #recover(): void {
    this.#instantiate();
    if (this.#identities.size > 0) {
      this.#send(encodeIdentities([...this.#identities.values()]), "identities_upsert", false);
    }
    if (this.#rules) this.#send(this.#rules, "rules_load", false);
    if (this.#endpoints) {
      this.#send(encodeEndpoints([...this.#endpoints.values()]), "endpoints_load", false);
    }
    if (this.#ipcache.size > 0) {
      this.#send(encodeIpcache([...this.#ipcache.values()], []), "ipcache_update", false);
    }
  }

  #write(bytes: Uint8Array): void {
    const ptr = this.#x.input_reserve(bytes.length);
    new Uint8Array(this.#x.memory.buffer, ptr, bytes.length).set(bytes);
  }

  #output(): Uint8Array {
    const ptr = this.#x.output_ptr();
    const len = this.#x.output_len();
    return new Uint8Array(this.#x.memory.buffer, ptr, len).slice();
  }

  #call<T>(fn: () => T, what: string, recover = true): T {
    if (this.#closed) throw new EngineError(`Cannot ${what}: the policy engine is closed`, -100);
    try {
      return fn();
    } catch (cause) {
      if (recover) this.#recover();
      throw new EngineError(`The policy engine trapped while trying to ${what}`, -99, { cause });
    }
  }

  #send(
    bytes: Uint8Array,
    fn:
      | "rules_load"
      | "identities_upsert"
      | "identities_remove"
      | "endpoints_load"
      | "endpoints_update"
      | "ipcache_update"
      | "ip_lookup"
      | "query",
    recover = true,
  ): number {
    return this.#call(
      () => {
        this.#write(bytes);
        return this.#x[fn](bytes.length);
      },
      fn.replace("_", " "),
      recover,
    );
  }

  #check(status: number, what: string): void {
    if (status < 0) {
      throw new EngineError(`Cannot ${what}: ${STATUS[status] ?? `status ${status}`}`, status);
    }
  }

  /**
   * Counts the changes to what the engine judges by (rules, identities, endpoints, ipcache): a
   * verdict cached at one revision holds only while the revision is unchanged.
   */
  get revision(): number {
    return this.#revision;
  }

  /** Calls `fn` (synchronously) on every change of the revision; returns the unsubscribe. */
  onChange(fn: () => void): () => void {
    this.#onChange.add(fn);
    return () => this.#onChange.delete(fn);
  }

  /** Called before each change is made: a verdict cached from then on waits for it. */
  #changed(): void {
    this.#revision++;
    for (const fn of this.#onChange) fn();
  }

  /** Replaces the rules. On any error the previous rules stay in force. */
  setPolicy(spec: PolicySpec, options: EngineOptions = DEFAULT_OPTIONS): void {
    this.#changed();
    const { bytes, entries } = encodeRules(spec, options);
    const st = this.#send(bytes, "rules_load");
    if (st === -3) throw this.#regexLoadError(entries, spec);
    this.#check(st, "load the rules");
    this.#rules = bytes;
    this.#entries = entries;
    this.#spec = spec;
    this.#options = options;
  }

  #regexLoadError(
    entries: { rule: number; entry: EntrySpec }[],
    spec: PolicySpec,
  ): PolicyValidationError {
    const r = new ByteReader(this.#output());
    const [ei, rule, field, code, offset] = [r.i32(), r.i32(), r.i32(), r.i32(), r.i32()];
    const e = entries[ei];
    const fieldName = ["", "method", "path", "host", "headers", "matchPattern"][field] ?? "regex";
    const policy = e ? spec.policies[spec.rules[e.rule]!.policy] : undefined;
    return new PolicyValidationError([{
      message: `Invalid ${fieldName} regex: ${regexErrorMessage(code, offset)}`,
      path: e ? `${e.entry.path}.rules[${rule}].${fieldName}` : "",
      ...(policy?.file ? { file: policy.file } : {}),
      ...(policy ? { policy: policy.name } : {}),
    }]);
  }

  /**
   * Strings the engine holds interned: policy's, and the label strings of the identities it
   * holds (those go with the last identity that has them).
   */
  get internedStrings(): number {
    return this.#x.interned_count();
  }

  /** The size of the engine's linear memory in bytes (it grows, never shrinks). */
  get memoryBytes(): number {
    return this.#x.memory.buffer.byteLength;
  }

  get spec(): PolicySpec {
    return this.#spec;
  }

  get options(): EngineOptions {
    return this.#options;
  }

  /** The entry behind an engine entry index (for explanations). */
  entry(index: number): { rule: number; entry: EntrySpec } | undefined {
    return this.#entries[index];
  }

  upsertIdentities(list: readonly IdentitySpec[]): void {
    if (list.length === 0) return;
    this.#changed();
    this.#check(this.#send(encodeIdentities(list), "identities_upsert"), "add identities");
    for (const id of list) this.#identities.set(id.id, id);
  }

  removeIdentities(ids: readonly number[]): void {
    if (ids.length === 0) return;
    this.#changed();
    this.#check(this.#send(encodeIdentityRemoval(ids), "identities_remove"), "remove identities");
    for (const id of ids) this.#identities.delete(id);
  }

  identity(id: number): IdentitySpec | undefined {
    return this.#identities.get(id);
  }

  get identities(): IdentitySpec[] {
    return [...this.#identities.values()];
  }

  setEndpoints(list: readonly EngineEndpoint[]): void {
    this.#changed();
    const bytes = encodeEndpoints(list);
    this.#check(this.#send(bytes, "endpoints_load"), "load endpoints");
    this.#endpoints = new Map(list.map((ep) => [ep.id, ep]));
  }

  /**
   * Adds or replaces `upserts` and removes `removes` (ids) from the endpoint list, leaving the
   * others as they are: costs in proportion to the change, not to the endpoints already there.
   * Ends as setEndpoints() with the resulting list would.
   */
  updateEndpoints(upserts: readonly EngineEndpoint[], removes: readonly number[] = []): void {
    if (upserts.length === 0 && removes.length === 0) return;
    const bytes = encodeEndpointsUpdate(upserts, removes);
    this.#changed();
    this.#check(this.#send(bytes, "endpoints_update"), "update endpoints");
    this.#endpoints ??= new Map();
    for (const id of removes) this.#endpoints.delete(id);
    for (const ep of upserts) this.#endpoints.set(ep.id, ep);
  }

  /**
   * The endpoints whose map-state has entries keyed by `identity` (those a newly added identity
   * changes), found from the selectors that select it; other endpoints are not looked at.
   */
  endpointsAffected(identity: number): number[] {
    const st = this.#call(
      () => this.#x.endpoints_affected(identity),
      `find the endpoints identity ${identity} affects`,
    );
    this.#check(st, `find the endpoints identity ${identity} affects`);
    const r = new ByteReader(this.#output());
    const n = r.u32();
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(r.u32());
    return out;
  }

  updateIpcache(upserts: readonly IpcacheEntry[], deletes: readonly IpcacheEntry[] = []): void {
    this.#changed();
    this.#check(
      this.#send(encodeIpcache(upserts, deletes), "ipcache_update"),
      "update the ipcache",
    );
    // Mirror the engine (ipcache.ts): deletes first, each only if the prefix still maps to that
    // identity; an upsert replaces the prefix's identity. Keyed by the canonical prefix, so that
    // "10.0.0.1" and "10.0.0.1/32" are one entry, as they are in the engine.
    for (const d of deletes) {
      const key = canonicalPrefix(d.prefix);
      if (this.#ipcache.get(key)?.identity === d.identity) this.#ipcache.delete(key);
    }
    for (const u of upserts) this.#ipcache.set(canonicalPrefix(u.prefix), u);
  }

  /** IP → identity by longest-prefix match (reserved:world, 2, when nothing covers it). */
  lookupIp(ip: string): number {
    this.#check(this.#send(encodeIpLookup(ip), "ip_lookup"), `look up "${ip}"`);
    return new ByteReader(this.#output()).u32();
  }

  computeMapState(endpointId: number): MapState {
    return this.#mapState(
      () => this.#x.mapstate_compute(endpointId),
      `compute the map-state of endpoint ${endpointId}`,
    );
  }

  /** Only the entries keyed by `identity` (after an identity was added). */
  mapStateForIdentity(endpointId: number, identity: number): MapState {
    return this.#mapState(
      () => this.#x.mapstate_for_identity(endpointId, identity),
      `compute the map-state of endpoint ${endpointId}`,
    );
  }

  #mapState(fn: () => number, what: string): MapState {
    const st = this.#call(fn, what);
    if (st === -6) {
      const r = new ByteReader(this.#output());
      const a = this.#entries[r.i32()]?.entry.path ?? "?";
      const b = this.#entries[r.i32()]?.entry.path ?? "?";
      throw new EngineError(
        `Cannot ${what}: conflicting L7 protocols on one port for the same peers: "${a}" and "${b}"`,
        st,
      );
    }
    this.#check(st, what);
    return decodeMapState(this.#output(), this.#entries);
  }

  query(q: QueryInput): QueryResult {
    const st = this.#send(encodeQuery(q), "query");
    this.#check(st, `evaluate a query for endpoint ${q.endpoint}`);
    return decodeQuery(this.#output());
  }

  /**
   * The verdict of an HTTP request, for the L7 proxy's per-request path: query()'s verdict, cookie
   * and L7 outcome without the explanation, written and read in place.
   */
  judgeHttp(q: QueryInput & { http: HttpRequest }): HttpVerdict {
    const st = this.#call(
      () => this.#x.query_verdict(this.#httpVerdict.write(this.#x, q)),
      "judge an HTTP request",
    );
    this.#check(st, `evaluate a query for endpoint ${q.endpoint}`);
    return this.#httpVerdict.read(this.#x);
  }

  /** The verdict of a DNS query (the DNS proxy's per-query path), as judgeHttp() does it. */
  judgeDns(q: QueryInput & { dns: string }): HttpVerdict {
    const st = this.#call(
      () => this.#x.query_verdict(this.#httpVerdict.writeDns(this.#x, q)),
      "judge a DNS query",
    );
    this.#check(st, `evaluate a query for endpoint ${q.endpoint}`);
    return this.#httpVerdict.read(this.#x);
  }

  /** Compiles a regex with the engine's RE2 engine; returns an error message, or undefined. */
  checkRegex(pattern: string): string | undefined {
    const bytes = new TextEncoder().encode(pattern);
    const h = this.#call(() => {
      this.#write(bytes);
      return this.#x.regex_compile(bytes.length, 0);
    }, "compile a regex");
    if (h >= 0) {
      this.#x.regex_release(h);
      return undefined;
    }
    return regexErrorMessage(-h, this.#x.regex_error_offset());
  }

  /** Full-match of `input` against `pattern` with the engine's regex engine (tests, benches). */
  regexMatcher(pattern: string): { match(input: string): boolean; release(): void } {
    const enc = new TextEncoder();
    const bytes = enc.encode(pattern);
    const h = this.#call(() => {
      this.#write(bytes);
      return this.#x.regex_compile(bytes.length, 0);
    }, "compile a regex");
    if (h < 0) {
      throw new SyntaxError(
        `Invalid regex "${pattern}": ${regexErrorMessage(-h, this.#x.regex_error_offset())}`,
      );
    }
    let view = new Uint8Array(0);
    let at = -1;
    return {
      match: (input: string) => {
        // Encode straight into the engine's input buffer (no intermediate copy); the buffer may
        // have moved since the last call, so ask for it every time.
        const need = Math.max(input.length * 3, 4096);
        const ptr = this.#call(() => this.#x.input_reserve(need), "reserve input");
        if (ptr !== at || view.byteLength < need || view.buffer !== this.#x.memory.buffer) {
          view = new Uint8Array(this.#x.memory.buffer, ptr, need);
          at = ptr;
        }
        const { written } = enc.encodeInto(input, view);
        return this.#call(() => this.#x.regex_match(h, written), "match a regex") === 1;
      },
      release: () => this.#call(() => (this.#x.regex_release(h), 0), "release a regex"),
    };
  }

  /**
   * Up to 31 patterns matched together in one pass (full match, as HTTP rules): `match()` and
   * `matchBatch()` return masks, bit i for pattern i. Throws SyntaxError for a bad pattern.
   */
  regexSet(patterns: readonly string[]): RegexSet {
    return new RegexSet(patterns, (fn, what) => this.#call(() => fn(this.#x), what));
  }

  close(): void {
    this.#closed = true;
  }
}
