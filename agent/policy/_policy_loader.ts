/**
 * The policy in force and how a set of documents becomes it, for the repository (repository.ts,
 * which decides what to load and stores it): steps 2 and 4 of its module comment. `prepare`
 * compiles the documents and resolves them in the engine for every endpoint (with the node-local
 * CIDR and FQDN identities they need), writing nothing; `commit` writes them to the datapath and
 * adopts them, with a new revision kept in the state dir (the same documents as before a restart
 * keep theirs). It reads and writes no kvstore.
 */

import type { PreparedPolicy, Unrealised } from "../endpoint/regenerator.ts";
import type { LocalCidrIdentities } from "../identity/local_cidr.ts";
import { PolicyCompiler } from "./compiler.ts";
import type { PolicyDocument } from "./documents.ts";
import type { FqdnIdentitySource, RepositoryOptions } from "./repository.ts";

/** Documents prepared in the engine, to commit or abort. */
export type Prepared = PreparedPolicy & {
  plan: ReturnType<LocalCidrIdentities["plan"]>;
  fqdn?: ReturnType<FqdnIdentitySource["prepare"]>;
  revision: number;
  digest: string;
  /** The services it was resolved against (JSON). */
  services: string;
};

export class PolicyLoader {
  readonly #o: RepositoryOptions;
  #docs = new Map<string, PolicyDocument>();
  #revision = 0;
  /** What the previous run saved: its revision and the digest of its documents. */
  #saved: { revision: number; digest: string } | undefined;
  /** Compiles big policies off the event loop. */
  readonly compiler: PolicyCompiler;
  /** The services the policy in force was resolved against (JSON), for servicesDiffer. */
  #servicesSeen = "";

  constructor(opts: RepositoryOptions) {
    this.#o = opts;
    const engine = opts.regen.engine;
    this.compiler = new PolicyCompiler({
      clusterName: opts.clusterName,
      regexCheck: (p) => engine.checkRegex(p),
      ...(opts.workerMinBytes !== undefined ? { workerMinBytes: opts.workerMinBytes } : {}),
      ...(opts.services ? { services: opts.services } : {}),
    });
  }

  /** The documents in force, by key. */
  get docs(): ReadonlyMap<string, PolicyDocument> {
    return this.#docs;
  }

  get revision(): number {
    return this.#revision;
  }

  /** Whether the services differ from those the policy in force was resolved against. */
  get servicesDiffer(): boolean {
    return JSON.stringify(this.#o.services?.() ?? []) !== this.#servicesSeen;
  }

  /** Reads the revision saved by a previous run. */
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

  /** Compiles `docs` and resolves them for every endpoint, writing nothing. */
  async prepare(docs: Map<string, PolicyDocument>): Promise<Prepared> {
    const list = [...docs.values()].sort((a, b) => a.key.localeCompare(b.key));
    const services = JSON.stringify(this.#o.services?.() ?? []);
    const { spec } = await this.compiler.compile(
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
  async commit(
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

  /** Prepares and commits `docs`. */
  async load(docs: Map<string, PolicyDocument>, why: string): Promise<void> {
    await this.commit(await this.prepare(docs), docs, why);
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
}

/** A digest of a set of documents (FNV-1a over keys and canonical text): equal sets, equal. */
function digestOf(docs: Map<string, PolicyDocument>): string {
  let h = 0x811c9dc5;
  for (const key of [...docs.keys()].sort()) {
    const text = `${key}\n${docs.get(key)!.canonical}\n`;
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  }
  return `${docs.size}-${(h >>> 0).toString(16)}`;
}
