/**
 * Node-local CIDR identities (from 2^24, POLICY-SEMANTICS §10) for the prefixes that the loaded
 * policies name. Not in the kvstore: each node numbers them itself. A prefix keeps its number
 * while policies name it; numbers of prefixes no longer named are reused lowest first. The
 * assignment is saved to a file in the state dir so that a restart gives the same numbers.
 */

import {
  cidrIdentityLabels,
  type IdentitySpec,
  LOCAL_IDENTITY_BASE,
  type PolicySpec,
} from "@cilia/policy-wasm";
// Not re-exported by policy-wasm/mod.ts (yet): the prefixes a spec's CIDR selectors name.
import { cidrPrefixesOf } from "@cilia/policy-wasm";

export interface LocalIdentityChange {
  added: IdentitySpec[];
  removed: number[];
}

export class LocalCidrIdentities {
  #byPrefix = new Map<string, number>();
  #path: string | undefined;

  /** `path`: where the assignment is kept across restarts (none: memory only). */
  constructor(path?: string) {
    this.#path = path;
  }

  async load(): Promise<void> {
    if (this.#path === undefined) return;
    try {
      const saved = JSON.parse(await Deno.readTextFile(this.#path)) as Record<string, number>;
      for (const [prefix, id] of Object.entries(saved)) {
        if (Number.isInteger(id) && id > LOCAL_IDENTITY_BASE) this.#byPrefix.set(prefix, id);
      }
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }

  /**
   * The identities if policies named exactly `spec`'s prefixes, and what would change (nothing
   * is changed until `commit(next)`).
   */
  plan(
    spec: PolicySpec,
  ): { next: Map<string, number>; identities: IdentitySpec[]; change: LocalIdentityChange } {
    const wanted = cidrPrefixesOf(spec);
    const next = new Map<string, number>();
    const taken = new Set<number>();
    for (const p of wanted) {
      const id = this.#byPrefix.get(p);
      if (id !== undefined) {
        next.set(p, id);
        taken.add(id);
      }
    }
    let candidate = LOCAL_IDENTITY_BASE + 1;
    const added: IdentitySpec[] = [];
    for (const p of wanted) {
      if (next.has(p)) continue;
      while (taken.has(candidate)) candidate++;
      next.set(p, candidate);
      taken.add(candidate);
      added.push({ id: candidate, labels: cidrIdentityLabels(p), cidr: p });
    }
    const removed = [...this.#byPrefix].filter(([p]) => !next.has(p)).map(([, id]) => id);
    const identities = [...next].map(([p, id]) => ({ id, labels: cidrIdentityLabels(p), cidr: p }))
      .sort((a, b) => a.id - b.id);
    return { next, identities, change: { added, removed } };
  }

  /** Adopts a planned assignment and saves it. */
  async commit(next: Map<string, number>): Promise<void> {
    this.#byPrefix = next;
    if (this.#path === undefined) return;
    const tmp = `${this.#path}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(Object.fromEntries(next), null, 1));
    await Deno.rename(tmp, this.#path);
  }

  all(): IdentitySpec[] {
    return [...this.#byPrefix].map(([p, id]) => ({ id, labels: cidrIdentityLabels(p), cidr: p }))
      .sort((a, b) => a.id - b.id);
  }

  get size(): number {
    return this.#byPrefix.size;
  }
}
