/**
 * The policy repository: the policy documents in force, each stored at
 * `cilia/policies/<kind>/<ns>/<name>`, compiled together into one engine snapshot with a local
 * revision number. An import is validated on its own first (issues located in the request),
 * then with everything else, loaded into the engine and resolved for every endpoint, and only
 * then stored; anything that fails leaves the previous policy in force and nothing stored. It
 * follows `cilia/policies/` so that a policy imported on any agent applies on every agent.
 */

import {
  compilePolicies,
  type PolicySource,
  PolicyValidationError,
  type ValidationIssue,
} from "@cilia/policy-wasm";
import type { KvEntry, KvStore, WatchEvent } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import type { Counter } from "../metrics.ts";
import type { Serial } from "../_serial.ts";
import { type PrefixWatch, watchPrefix } from "../_watch.ts";
import type { Regenerator } from "../endpoint/regenerator.ts";
import type { LocalCidrIdentities } from "../identity/local_cidr.ts";
import {
  joinDocuments,
  matches,
  POLICIES_PREFIX,
  type PolicyDocument,
  type PolicyFilter,
  type PolicyRef,
  readStored,
  refOf,
  splitDocuments,
} from "./documents.ts";

export class PolicyNotFoundError extends Error {
  override name = "PolicyNotFoundError";
}

export interface ImportResult {
  revision: number;
  changed: boolean;
  policies: PolicyRef[];
  warnings: ValidationIssue[];
}

export interface RepositoryOptions {
  store: KvStore;
  regen: Regenerator;
  local: LocalCidrIdentities;
  serial: Serial;
  clusterName: string;
  log: Logger;
  importErrors?: Counter;
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const DELETED = "deleted";

export class PolicyRepository {
  #o: RepositoryOptions;
  #docs = new Map<string, PolicyDocument>();
  #revision = 0;
  /**
   * Keys this agent wrote whose change the watch has not delivered yet: the revision of a put,
   * or "deleted". Until the echo arrives, older changes of the key are stale and ignored.
   */
  #echo = new Map<string, string>();

  constructor(opts: RepositoryOptions) {
    this.#o = opts;
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

  /** Validates and imports policy sources (YAML or JSON). Throws PolicyValidationError. */
  import(sources: PolicySource[]): Promise<ImportResult> {
    return this.#o.serial.run(async () => {
      let warnings: ValidationIssue[];
      try {
        warnings = this.#compile(sources).warnings;
      } catch (err) {
        this.#o.importErrors?.inc();
        throw err;
      }
      const docs = sources.flatMap((s) => splitDocuments(s.text));
      if (docs.length === 0) {
        this.#o.importErrors?.inc();
        throw new PolicyValidationError([{ message: "No policy documents to import", path: "" }]);
      }
      const changed = docs.filter((d) => this.#docs.get(d.key)?.canonical !== d.canonical);
      const policies = docs.map(refOf);
      if (changed.length === 0) {
        return { revision: this.#revision, changed: false, policies, warnings };
      }
      const prev = this.#docs;
      const next = new Map(prev);
      for (const d of docs) next.set(d.key, d);
      await this.#load(next, "import");
      try {
        for (const d of changed) {
          this.#echo.set(d.key, await this.#o.store.put(d.key, enc.encode(d.text)));
        }
      } catch (err) {
        await this.#load(prev, "rollback").catch(() => {});
        throw err;
      }
      return { revision: this.#revision, changed: true, policies, warnings };
    });
  }

  /** Deletes the policies that match; throws PolicyNotFoundError when none does. */
  delete(filter: PolicyFilter): Promise<{ revision: number; deleted: PolicyRef[] }> {
    return this.#o.serial.run(async () => {
      const gone = this.list(filter);
      if (gone.length === 0) {
        throw new PolicyNotFoundError(`No policy matches ${describe(filter)}`);
      }
      const prev = this.#docs;
      const next = new Map(prev);
      for (const d of gone) next.delete(d.key);
      await this.#load(next, "delete");
      try {
        for (const d of gone) {
          if (await this.#o.store.delete(d.key)) this.#echo.set(d.key, DELETED);
        }
      } catch (err) {
        await this.#load(prev, "rollback").catch(() => {});
        throw err;
      }
      return { revision: this.#revision, deleted: gone.map(refOf) };
    });
  }

  /** Lists and watches the stored policies; `ready` settles once they are loaded. */
  follow(opts: { signal: AbortSignal }): PrefixWatch {
    return watchPrefix(this.#o.store, POLICIES_PREFIX, {
      snapshot: (entries) => this.#o.serial.run(() => this.#snapshot(entries)),
      event: (e) => this.#o.serial.run(() => this.#event(e)),
    }, { signal: opts.signal, log: this.#o.log });
  }

  #compile(sources: PolicySource[]) {
    const engine = this.#o.regen.engine;
    return compilePolicies(sources, {
      clusterName: this.#o.clusterName,
      regexCheck: (p) => engine.checkRegex(p),
    });
  }

  /** Compiles `docs`, loads them into the engine, resolves every endpoint; then adopts them. */
  async #load(docs: Map<string, PolicyDocument>, why: string): Promise<void> {
    const list = [...docs.values()].sort((a, b) => a.key.localeCompare(b.key));
    const { spec } = this.#compile(list.map((d) => ({ text: d.text, file: d.key })));
    const plan = this.#o.local.plan(spec);
    await this.#o.regen.loadPolicy(spec, plan.identities, this.#revision + 1);
    this.#revision++;
    this.#docs = docs;
    try {
      await this.#o.local.commit(plan.next);
    } catch (err) {
      this.#o.log.warn("cannot save local CIDR identities", { error: err });
    }
    this.#o.log.info("policy loaded", { revision: this.#revision, policies: docs.size, why });
  }

  /** The stored documents that compile on their own (a bad one is logged and left out). */
  #readAll(entries: KvEntry[]): Map<string, PolicyDocument> {
    const out = new Map<string, PolicyDocument>();
    for (const e of entries) {
      const d = readStored(dec.decode(e.value));
      if (d === null || d.key !== e.key) {
        this.#o.log.error("stored policy is not one policy document", { key: e.key });
        continue;
      }
      try {
        this.#compile([{ text: d.text, file: d.key }]);
        out.set(d.key, d);
      } catch (err) {
        this.#o.log.error("stored policy does not compile: left out", { key: e.key, error: err });
      }
    }
    return out;
  }

  async #snapshot(entries: KvEntry[]): Promise<void> {
    this.#echo.clear();
    const next = this.#readAll(entries);
    const same = next.size === this.#docs.size &&
      [...next].every(([k, d]) => this.#docs.get(k)?.canonical === d.canonical);
    if (!same || this.#revision === 0) await this.#apply(next, "kvstore listing");
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
      const d = this.#readAll([e.entry]).get(e.entry.key);
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

function describe(f: PolicyFilter): string {
  const parts = Object.entries(f).filter(([k]) => k !== "labels").map(([k, v]) => `${k} "${v}"`);
  const labels = Object.entries(f.labels ?? {}).map(([k, v]) => `${k}=${v}`);
  if (labels.length > 0) parts.push(`labels "${labels.join(",")}"`);
  return parts.length > 0 ? parts.join(", ") : "the request";
}
