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
 *
 * Its parts: the policy in force, prepared and committed (_policy_loader.ts), and the kvstore's
 * side, writes undone on failure and echoes of its own writes (_policy_kv.ts).
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
import type { Regenerator, Unrealised } from "../endpoint/regenerator.ts";
import type { LocalCidrIdentities } from "../identity/local_cidr.ts";
import {
  joinDocuments,
  matches,
  POLICIES_PREFIX,
  type PolicyDocument,
  type PolicyFilter,
  type PolicyRef,
  refOf,
} from "./documents.ts";
import { PolicyLoader } from "./_policy_loader.ts";
import { PolicyKv, PolicyTooLargeError, type PolicyWrites } from "./_policy_kv.ts";

export { PolicyTooLargeError };

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

export class PolicyRepository {
  #o: RepositoryOptions;
  /** The policy in force, and how documents become it. */
  readonly #loader: PolicyLoader;
  readonly #kv: PolicyKv;

  constructor(opts: RepositoryOptions) {
    this.#o = opts;
    this.#loader = new PolicyLoader(opts);
    this.#kv = new PolicyKv({
      store: opts.store,
      compiler: this.#loader.compiler,
      log: opts.log,
      maxValueBytes: opts.maxValueBytes,
    });
  }

  /** Stops the compiler's worker. */
  close(): void {
    this.#loader.compiler.close();
  }

  get revision(): number {
    return this.#loader.revision;
  }

  get size(): number {
    return this.#loader.docs.size;
  }

  list(filter: PolicyFilter = {}): PolicyDocument[] {
    return [...this.#loader.docs.values()].filter((d) => matches(d, filter))
      .sort((a, b) => a.key.localeCompare(b.key));
  }

  yaml(filter: PolicyFilter = {}): string {
    return joinDocuments(this.list(filter));
  }

  /** Reads the revision saved by a previous run; call before `follow()`. */
  restoreRevision(): Promise<void> {
    return this.#loader.restoreRevision();
  }

  /** Validates and imports policy sources (YAML or JSON). Throws PolicyValidationError. */
  import(sources: PolicySource[]): Promise<ImportResult> {
    return this.#o.serial.run(async () => {
      const { docs, warnings } = await this.#compileImport(sources);
      const inForce = this.#loader.docs;
      const changed = docs.filter((d) => inForce.get(d.key)?.canonical !== d.canonical);
      const policies = docs.map(refOf);
      if (changed.length === 0) {
        // Nothing new to store; a retry of what is not in force yet is due anyway.
        await this.#o.regen.retryDirty();
        return {
          revision: this.revision,
          changed: false,
          policies,
          warnings,
          ...this.#realisation(),
        };
      }
      const next = new Map(inForce);
      for (const d of docs) next.set(d.key, d);
      const unrealised = await this.#change(next, "import", { puts: changed, deletes: [] });
      return {
        revision: this.revision,
        changed: true,
        policies,
        warnings,
        ...realisation(unrealised),
      };
    });
  }

  /** Step 1 of the module comment: the import on its own, as documents (counted if refused). */
  async #compileImport(
    sources: PolicySource[],
  ): Promise<{ docs: PolicyDocument[]; warnings: ValidationIssue[] }> {
    try {
      const compiled = await this.#loader.compiler.compile(sources, { split: true });
      const docs = compiled.docs ?? [];
      if (docs.length === 0) {
        throw new PolicyValidationError([{ message: "No policy documents to import", path: "" }]);
      }
      this.#kv.checkSizes(docs);
      return { docs, warnings: compiled.warnings };
    } catch (err) {
      this.#o.importErrors?.inc();
      throw err;
    }
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
      const next = new Map(this.#loader.docs);
      for (const d of gone) next.delete(d.key);
      const unrealised = await this.#change(next, "delete", { puts: [], deletes: gone });
      return { revision: this.revision, deleted: gone.map(refOf), ...realisation(unrealised) };
    });
  }

  /**
   * The services changed: when a policy in force uses toServices and the services it was resolved
   * against differ, the same documents are compiled and loaded again (a new revision). A failure
   * keeps the previous policy in force and is logged, as for a kvstore change.
   */
  servicesChanged(): Promise<void> {
    return this.#o.serial.run(async () => {
      const docs = this.#loader.docs;
      if (![...docs.values()].some((d) => d.text.includes("toServices"))) return;
      if (!this.#loader.servicesDiffer) return;
      await this.#apply(new Map(docs), "services change");
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
    writes: PolicyWrites,
  ): Promise<Unrealised[]> {
    const prepared = await this.#loader.prepare(next);
    try {
      await this.#kv.write(writes, this.#loader.docs);
    } catch (err) {
      prepared.abort();
      throw err;
    }
    return await this.#loader.commit(prepared, next, why);
  }

  /** Lists and watches the stored policies; `ready` settles once they are loaded. */
  follow(opts: { signal: AbortSignal }): PrefixWatch {
    return watchPrefix(this.#o.store, POLICIES_PREFIX, {
      snapshot: (entries) => this.#o.serial.run(() => this.#snapshot(entries)),
      event: (e) => this.#o.serial.run(() => this.#event(e)),
    }, { signal: opts.signal, log: this.#o.log });
  }

  async #snapshot(entries: KvEntry[]): Promise<void> {
    this.#kv.clearEchoes();
    const next = await this.#kv.readAll(entries);
    const inForce = this.#loader.docs;
    const same = next.size === inForce.size &&
      [...next].every(([k, d]) => inForce.get(k)?.canonical === d.canonical);
    if (!same || this.revision === 0 || this.#o.regen.revision === 0) {
      await this.#apply(next, "kvstore listing");
    }
  }

  async #event(e: WatchEvent): Promise<void> {
    if (this.#kv.stale(e)) return;
    const next = new Map(this.#loader.docs);
    if (e.type === "delete") {
      if (!next.delete(e.key)) return;
    } else {
      const d = (await this.#kv.readAll([e.entry])).get(e.entry.key);
      if (d === undefined || this.#loader.docs.get(d.key)?.canonical === d.canonical) return;
      next.set(d.key, d);
    }
    await this.#apply(next, "kvstore change");
  }

  async #apply(next: Map<string, PolicyDocument>, why: string): Promise<void> {
    try {
      await this.#loader.load(next, why);
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

function realisation(unrealised: Unrealised[]): Realisation {
  return { realised: unrealised.length === 0, unrealised };
}

function describe(f: PolicyFilter): string {
  const parts = Object.entries(f).filter(([k]) => k !== "labels").map(([k, v]) => `${k} "${v}"`);
  const labels = Object.entries(f.labels ?? {}).map(([k, v]) => `${k}=${v}`);
  if (labels.length > 0) parts.push(`labels "${labels.join(",")}"`);
  return parts.length > 0 ? parts.join(", ") : "the request";
}
