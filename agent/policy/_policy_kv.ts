/**
 * The repository's side of the kvstore (repository.ts decides what to write and when): policy
 * documents written, with the writes already made undone when a later one fails (step 3 of the
 * repository's comment); the echoes of this agent's own writes, so the watch ignores changes older
 * than them; sizes checked against what the store holds; and stored documents read back (one that
 * does not compile is logged and left out). It changes no engine or datapath state.
 */

import type { KvEntry, KvStore, WatchEvent } from "../kvstore/kvstore.ts";
import type { Logger } from "../log.ts";
import type { PolicyCompiler } from "./compiler.ts";
import { type PolicyDocument, readStored } from "./documents.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const DELETED = "deleted";

/** A policy document the kvstore cannot hold. */
export class PolicyTooLargeError extends Error {
  override name = "PolicyTooLargeError";
}

export interface PolicyKvOptions {
  store: KvStore;
  compiler: PolicyCompiler;
  log: Logger;
  /** The largest value the kvstore holds, in bytes (none: no limit checked here). */
  maxValueBytes?: number | undefined;
}

/** Documents to put and to delete in one change. */
export interface PolicyWrites {
  puts: PolicyDocument[];
  deletes: PolicyDocument[];
}

export class PolicyKv {
  readonly #o: PolicyKvOptions;
  /**
   * Keys this agent wrote whose change the watch has not delivered yet: the revision of a put,
   * or "deleted". Until the echo arrives, older changes of the key are stale and ignored.
   */
  readonly #echo = new Map<string, string>();

  constructor(o: PolicyKvOptions) {
    this.#o = o;
  }

  /**
   * Writes to the kvstore (`inForce`: the documents before the change); on a failure undoes the
   * writes already made, then throws.
   */
  async write(w: PolicyWrites, inForce: ReadonlyMap<string, PolicyDocument>): Promise<void> {
    const done: { key: string; before: PolicyDocument | undefined }[] = [];
    try {
      for (const d of w.puts) {
        const before = inForce.get(d.key);
        this.#echo.set(d.key, await this.#o.store.put(d.key, enc.encode(d.text)));
        done.push({ key: d.key, before });
      }
      for (const d of w.deletes) {
        if (await this.#o.store.delete(d.key)) this.#echo.set(d.key, DELETED);
        done.push({ key: d.key, before: d });
      }
    } catch (err) {
      await this.#undo(done);
      throw err;
    }
  }

  /** Puts back what `done` changed, newest first. */
  async #undo(done: { key: string; before: PolicyDocument | undefined }[]): Promise<void> {
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
  }

  /** Deno KV holds at most 64 KiB per value: say so before anything is changed. */
  checkSizes(docs: PolicyDocument[]): void {
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

  /** A full listing came: no echo is awaited any more. */
  clearEchoes(): void {
    this.#echo.clear();
  }

  /**
   * Whether a watched change is stale: a write of this agent's to its key is still to come (the
   * change is older than it), or it is that write's own echo.
   */
  stale(e: WatchEvent): boolean {
    const key = e.type === "put" ? e.entry.key : e.key;
    const echo = this.#echo.get(key);
    if (echo === undefined) return false;
    // Our own write is still to come: this change is older than it (or is it).
    if (echo === (e.type === "put" ? e.entry.revision : DELETED)) this.#echo.delete(key);
    return true;
  }

  /** The stored documents that compile on their own (a bad one is logged and left out). */
  async readAll(entries: KvEntry[]): Promise<Map<string, PolicyDocument>> {
    const out = new Map<string, PolicyDocument>();
    for (const e of entries) {
      const d = readStored(dec.decode(e.value));
      if (d === null || d.key !== e.key) {
        this.#o.log.error("stored policy is not one policy document", { key: e.key });
        continue;
      }
      try {
        await this.#o.compiler.compile([{ text: d.text, file: d.key }]);
        out.set(d.key, d);
      } catch (err) {
        this.#o.log.error("stored policy does not compile: left out", { key: e.key, error: err });
      }
    }
    return out;
  }
}
