/**
 * The policy repository: the policy documents in force, each stored at
 * `cilia/policies/<kind>/<ns>/<name>`, compiled together into one engine snapshot with a local
 * revision number (kept in the state dir, so it never goes back after a restart). It follows
 * `cilia/policies/` so that a policy imported on any agent applies on every agent.
 *
 * Order of a change (nothing is enforced that was not stored, nothing stored that was refused):
 * 1. validate the import on its own (issues located in the request), then with everything else;
 * 2. resolve it in the engine for every endpoint, without writing (`preparePolicy`);
 * 3. store it; a store failure puts the engine back and undoes what was stored;
 * 4. write it to the datapath. An endpoint whose write fails is dropped by the kernel until a
 *    retry succeeds, and the result names it (`realised: false`, `unrealised`).
 */

import {
  type IdentitySpec,
  type PolicySource,
  type PolicySpec,
  PolicyValidationError,
  type ServiceRef,
  type ValidationIssue,
} from "@cilia/policy-wasm";
import type { KvEntry, KvStore, WatchEvent } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import type { Counter } from "../metrics.ts";
import type { Serial } from "../_serial.ts";
import { type PrefixWatch, watchPrefix } from "../_watch.ts";
import type { PreparedPolicy, Regenerator, Unrealised } from "../endpoint/regenerator.ts";
import type { LocalCidrIdentities } from "../identity/local_cidr.ts";
import { PolicyCompiler } from "./compiler.ts";
import {
  joinDocuments,
  matches,
  POLICIES_PREFIX,
  type PolicyDocument,
  type PolicyFilter,
  type PolicyRef,
  readStored,
  refOf,
} from "./documents.ts";

export class PolicyNotFoundError extends Error {
  override name = "PolicyNotFoundError";
}

/** Whether the change is in force on every endpoint, and which ones it is not yet. */
export interface Realisation {
  realised: boolean;
  unrealised: Unrealised[];
}

export interface ImportResult extends Realisation {
  revision: number;
  changed: boolean;
  policies: PolicyRef[];
  warnings: ValidationIssue[];
}

/** A policy document the kvstore cannot hold. */
export class PolicyTooLargeError extends Error {
  override name = "PolicyTooLargeError";
}

/** Node-local identities that depend on the policy's toFQDNs selectors. */
export interface FqdnIdentitySource {
  prepare(spec: PolicySpec): { identities: IdentitySpec[]; commit(): void; abort(): void };
}

export interface RepositoryOptions {
  store: KvStore;
  regen: Regenerator;
  local: LocalCidrIdentities;
  /** The DNS proxy's FQDN identities, relabelled for each policy load (agent/identity/fqdn_state). */
  fqdn?: FqdnIdentitySource;
  serial: Serial;
  clusterName: string;
  log: Logger;
  importErrors?: Counter;
  /** Where the revision is kept across restarts (none: it starts at 0). */
  revisionFile?: string;
  /** The largest value the kvstore holds, in bytes (none: no limit checked here). */
  maxValueBytes?: number;
  /** Sources at least this large are compiled in a worker (see compiler.ts). */
  workerMinBytes?: number;
  /** The cluster's services, which toServices resolves against (agent/service/policy_refs.ts). */
  services?: () => ServiceRef[];
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const DELETED = "deleted";

export class PolicyRepository {
  #o: RepositoryOptions;
  #docs = new Map<string, PolicyDocument>();
  #revision = 0;
  /** What the previous run saved: its revision and the digest of its documents. */
  #saved: { revision: number; digest: string } | undefined;
  /**
   * Keys this agent wrote whose change the watch has not delivered yet: the revision of a put,
   * or "deleted". Until the echo arrives, older changes of the key are stale and ignored.
   */
  #echo = new Map<string, string>();
  /** Compiles big policies off the event loop. */
  #compiler: PolicyCompiler;
  /** The services the policy in force was resolved against (JSON), for servicesChanged(). */
  #servicesSeen = "";

  constructor(opts: RepositoryOptions) {
    this.#o = opts;
    const engine = opts.regen.engine;
    this.#compiler = new PolicyCompiler({
      clusterName: opts.clusterName,
      regexCheck: (p) => engine.checkRegex(p),
      ...(opts.workerMinBytes !== undefined ? { workerMinBytes: opts.workerMinBytes } : {}),
      ...(opts.services ? { services: opts.services } : {}),
    });
  }

  /** Stops the compiler's worker. */
  close(): void {
    this.#compiler.close();
  }

  get revision(): number {
    return this.#revision;
  }

  get size(): number {
    return this.#docs.size;
  }

  list(filter: PolicyFilter = {}): PolicyDocument[] {
    return [...this.#docs.values()].filter((d) => matches(d, filter))
      .sort((a, b) => a.key.localeCompare(b.key));
  }

  yaml(filter: PolicyFilter = {}): string {
    return joinDocuments(this.list(filter));
  }

  /** Reads the revision saved by a previous run; call before `follow()`. */
  async restoreRevision(): Promise<void> {
    if (this.#o.revisionFile === undefined) return;
    try {
      const saved = JSON.parse(await Deno.readTextFile(this.#o.revisionFile)) as {
        revision?: unknown;
        digest?: unknown;
      };
      if (Number.isSafeInteger(saved.revision) && (saved.revision as number) > this.#revision) {
        this.#revision = saved.revision as number;
        if (typeof saved.digest === "string") {
          this.#saved = { revision: this.#revision, digest: saved.digest };
        }
      }
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) {
        this.#o.log.warn("cannot read the saved policy revision", { error: err });
      }
    }
  }

  /** Validates and imports policy sources (YAML or JSON). Throws PolicyValidationError. */
  import(sources: PolicySource[]): Promise<ImportResult> {
    return this.#o.serial.run(async () => {
      let warnings: ValidationIssue[];
      let docs: PolicyDocument[];
      try {
        const compiled = await this.#compiler.compile(sources, { split: true });
        warnings = compiled.warnings;
        docs = compiled.docs ?? [];
        if (docs.length === 0) {
          throw new PolicyValidationError([{ message: "No policy documents to import", path: "" }]);
        }
        this.#checkSizes(docs);
      } catch (err) {
        this.#o.importErrors?.inc();
        throw err;
      }
      const changed = docs.filter((d) => this.#docs.get(d.key)?.canonical !== d.canonical);
      const policies = docs.map(refOf);
      if (changed.length === 0) {
        // Nothing new to store; a retry of what is not in force yet is due anyway.
        await this.#o.regen.retryDirty();
        return {
          revision: this.#revision,
          changed: false,
          policies,
          warnings,
          ...this.#realisation(),
        };
      }
      const next = new Map(this.#docs);
      for (const d of docs) next.set(d.key, d);
      const unrealised = await this.#change(next, "import", {
        puts: changed,
        deletes: [],
      });
      return {
        revision: this.#revision,
        changed: true,
        policies,
        warnings,
        ...realisation(unrealised),
      };
    });
  }

  /** Deletes the policies that match; throws PolicyNotFoundError when none does. */
  delete(
    filter: PolicyFilter,
  ): Promise<{ revision: number; deleted: PolicyRef[] } & Realisation> {
    return this.#o.serial.run(async () => {
      const gone = this.list(filter);
      if (gone.length === 0) {
        throw new PolicyNotFoundError(`No policy matches ${describe(filter)}`);
      }
      const next = new Map(this.#docs);
      for (const d of gone) next.delete(d.key);
      const unrealised = await this.#change(next, "delete", { puts: [], deletes: gone });
      return { revision: this.#revision, deleted: gone.map(refOf), ...realisation(unrealised) };
    });
  }

  /**
   * The services changed: when a policy in force uses toServices and the services it was resolved
   * against differ, the same documents are compiled and loaded again (a new revision). A failure
   * keeps the previous policy in force and is logged, as for a kvstore change.
   */
  servicesChanged(): Promise<void> {
    return this.#o.serial.run(async () => {
      if (![...this.#docs.values()].some((d) => d.text.includes("toServices"))) return;
      if (JSON.stringify(this.#o.services?.() ?? []) === this.#servicesSeen) return;
      await this.#apply(new Map(this.#docs), "services change");
    });
  }

  /** Endpoints the policy in force is not written to yet. */
  #realisation(): Realisation {
    return realisation(this.#o.regen.unrealised());
  }

  /** Steps 2–4 of the module comment for an import or a delete. */
  async #change(
    next: Map<string, PolicyDocument>,
    why: string,
    writes: { puts: PolicyDocument[]; deletes: PolicyDocument[] },
  ): Promise<Unrealised[]> {
    const prepared = await this.#prepare(next);
    try {
      await this.#store(writes);
    } catch (err) {
      prepared.abort();
      throw err;
    }
    return await this.#commit(prepared, next, why);
  }

  /** Writes to the kvstore; on a failure undoes the writes already made, then throws. */
  async #store(w: { puts: PolicyDocument[]; deletes: PolicyDocument[] }): Promise<void> {
    const done: { key: string; before: PolicyDocument | undefined }[] = [];
    try {
      for (const d of w.puts) {
        const before = this.#docs.get(d.key);
        this.#echo.set(d.key, await this.#o.store.put(d.key, enc.encode(d.text)));
        done.push({ key: d.key, before });
      }
      for (const d of w.deletes) {
        if (await this.#o.store.delete(d.key)) this.#echo.set(d.key, DELETED);
        done.push({ key: d.key, before: d });
      }
    } catch (err) {
      for (const { key, before } of done.reverse()) {
        try {
          if (before) this.#echo.set(key, await this.#o.store.put(key, enc.encode(before.text)));
          else if (await this.#o.store.delete(key)) this.#echo.set(key, DELETED);
        } catch (undoErr) {
          // The store holds a change the engine does not: let the watch bring it in.
          this.#echo.delete(key);
          this.#o.log.error("cannot undo a policy write after a kvstore failure", {
            key,
            error: undoErr,
          });
        }
      }
      throw err;
    }
  }

  /** Deno KV holds at most 64 KiB per value: say so before anything is changed. */
  #checkSizes(docs: PolicyDocument[]): void {
    const max = this.#o.maxValueBytes;
    if (max === undefined) return;
    for (const d of docs) {
      const size = enc.encode(d.text).length;
      if (size <= max) continue;
      throw new PolicyTooLargeError(
        `Policy "${d.namespace ? d.namespace + "/" : ""}${d.name}" is ${size} bytes: the ` +
          `kvstore ${this.#o.store.name} holds at most ${max} bytes per policy document; split ` +
          `its rules into several policies, or run the agent on etcd (--kvstore etcd://…)`,
      );
    }
  }

  /** Lists and watches the stored policies; `ready` settles once they are loaded. */
  follow(opts: { signal: AbortSignal }): PrefixWatch {
    return watchPrefix(this.#o.store, POLICIES_PREFIX, {
      snapshot: (entries) => this.#o.serial.run(() => this.#snapshot(entries)),
      event: (e) => this.#o.serial.run(() => this.#event(e)),
    }, { signal: opts.signal, log: this.#o.log });
  }

  /** Compiles `docs` and resolves them for every endpoint, writing nothing. */
  async #prepare(docs: Map<string, PolicyDocument>): Promise<Prepared> {
    const list = [...docs.values()].sort((a, b) => a.key.localeCompare(b.key));
    const services = JSON.stringify(this.#o.services?.() ?? []);
    const { spec } = await this.#compiler.compile(
      list.map((d) => ({ text: d.text, file: d.key })),
    );
    const plan = this.#o.local.plan(spec);
    const fqdn = this.#o.fqdn?.prepare(spec);
    const digest = digestOf(docs);
    // The same documents as before a restart keep their revision; anything else is a new one.
    const revision = this.#saved?.digest === digest && this.#docs.size === 0 &&
        this.#saved.revision === this.#revision
      ? this.#revision
      : this.#revision + 1;
    let prepared: PreparedPolicy;
    try {
      prepared = await this.#o.regen.preparePolicy(
        spec,
        [...plan.identities, ...(fqdn?.identities ?? [])],
        revision,
      );
    } catch (err) {
      fqdn?.abort();
      throw err;
    }
    return {
      ...prepared,
      services,
      abort: () => {
        prepared.abort();
        fqdn?.abort();
      },
      plan,
      ...(fqdn ? { fqdn } : {}),
      revision,
      digest,
    };
  }

  /** Writes prepared rules to the datapath and adopts `docs` as the policy in force. */
  async #commit(
    prepared: Prepared,
    docs: Map<string, PolicyDocument>,
    why: string,
  ): Promise<Unrealised[]> {
    const unrealised = await prepared.commit();
    prepared.fqdn?.commit();
    this.#revision = prepared.revision;
    this.#servicesSeen = prepared.services;
    this.#saved = undefined;
    this.#docs = docs;
    try {
      await this.#o.local.commit(prepared.plan.next);
    } catch (err) {
      this.#o.log.warn("cannot save local CIDR identities", { error: err });
    }
    await this.#saveRevision(prepared.digest);
    this.#o.log.info("policy loaded", {
      revision: this.#revision,
      policies: docs.size,
      why,
      ...(unrealised.length > 0 ? { unrealised } : {}),
    });
    return unrealised;
  }

  async #load(docs: Map<string, PolicyDocument>, why: string): Promise<void> {
    await this.#commit(await this.#prepare(docs), docs, why);
  }

  async #saveRevision(digest: string): Promise<void> {
    if (this.#o.revisionFile === undefined) return;
    const tmp = `${this.#o.revisionFile}.tmp`;
    try {
      const saved = { revision: this.#revision, digest };
      await Deno.writeTextFile(tmp, JSON.stringify(saved) + "\n");
      await Deno.rename(tmp, this.#o.revisionFile);
    } catch (err) {
      this.#o.log.warn("cannot save the policy revision", { error: err });
    }
  }

  /** The stored documents that compile on their own (a bad one is logged and left out). */
  async #readAll(entries: KvEntry[]): Promise<Map<string, PolicyDocument>> {
    const out = new Map<string, PolicyDocument>();
    for (const e of entries) {
      const d = readStored(dec.decode(e.value));
      if (d === null || d.key !== e.key) {
        this.#o.log.error("stored policy is not one policy document", { key: e.key });
        continue;
      }
      try {
        await this.#compiler.compile([{ text: d.text, file: d.key }]);
        out.set(d.key, d);
      } catch (err) {
        this.#o.log.error("stored policy does not compile: left out", { key: e.key, error: err });
      }
    }
    return out;
  }

  async #snapshot(entries: KvEntry[]): Promise<void> {
    this.#echo.clear();
    const next = await this.#readAll(entries);
    const same = next.size === this.#docs.size &&
      [...next].every(([k, d]) => this.#docs.get(k)?.canonical === d.canonical);
    if (!same || this.#revision === 0 || this.#o.regen.revision === 0) {
      await this.#apply(next, "kvstore listing");
    }
  }

  async #event(e: WatchEvent): Promise<void> {
    const key = e.type === "put" ? e.entry.key : e.key;
    const echo = this.#echo.get(key);
    if (echo !== undefined) {
      // Our own write is still to come: this change is older than it (or is it).
      if (echo === (e.type === "put" ? e.entry.revision : DELETED)) this.#echo.delete(key);
      return;
    }
    const next = new Map(this.#docs);
    if (e.type === "delete") {
      if (!next.delete(e.key)) return;
    } else {
      const d = (await this.#readAll([e.entry])).get(e.entry.key);
      if (d === undefined || this.#docs.get(d.key)?.canonical === d.canonical) return;
      next.set(d.key, d);
    }
    await this.#apply(next, "kvstore change");
  }

  async #apply(next: Map<string, PolicyDocument>, why: string): Promise<void> {
    try {
      await this.#load(next, why);
    } catch (err) {
      this.#o.importErrors?.inc();
      const issues = err instanceof PolicyValidationError ? err.issues : undefined;
      this.#o.log.error("cannot load policies from the kvstore: previous policy stays in force", {
        error: err,
        ...(issues ? { issues } : {}),
      });
    }
  }
}

type Prepared = PreparedPolicy & {
  plan: ReturnType<LocalCidrIdentities["plan"]>;
  fqdn?: ReturnType<FqdnIdentitySource["prepare"]>;
  revision: number;
  digest: string;
  /** The services it was resolved against (JSON). */
  services: string;
};

/** A digest of a set of documents (FNV-1a over keys and canonical text): equal sets, equal. */
function digestOf(docs: Map<string, PolicyDocument>): string {
  let h = 0x811c9dc5;
  for (const key of [...docs.keys()].sort()) {
    const text = `${key}\n${docs.get(key)!.canonical}\n`;
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  }
  return `${docs.size}-${(h >>> 0).toString(16)}`;
}

function realisation(unrealised: Unrealised[]): Realisation {
  return { realised: unrealised.length === 0, unrealised };
}

function describe(f: PolicyFilter): string {
  const parts = Object.entries(f).filter(([k]) => k !== "labels").map(([k, v]) => `${k} "${v}"`);
  const labels = Object.entries(f.labels ?? {}).map(([k, v]) => `${k}=${v}`);
  if (labels.length > 0) parts.push(`labels "${labels.join(",")}"`);
  return parts.length > 0 ? parts.join(", ") : "the request";
}
