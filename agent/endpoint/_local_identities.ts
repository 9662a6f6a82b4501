/**
 * The node-local identities for the Regenerator (the policy's CIDR identities and the DNS proxy's
 * FQDN identities) and the ipcache prefixes they hold: new rules are staged in the engine with
 * the local identities they need, undone when they are not adopted, and a change of local
 * identities yields the ipcache entries to write. It writes nothing to the datapath and resolves
 * no endpoint; separate from the Regenerator because which identity owns a prefix, and how rules
 * and their identities enter and leave the engine together, is its own decision.
 */

import type {
  EngineOptions,
  IdentitySpec,
  IpcacheEntry,
  PolicyEngine,
  PolicySpec,
} from "@cilia/policy-wasm";

export interface IpcacheChange {
  upserts: IpcacheEntry[];
  deletes: IpcacheEntry[];
}

/** New rules and their local identities in the engine, not adopted yet. */
export interface StagedRules {
  /** Puts the previous rules and local identities back into the engine. */
  undo(): void;
  /** Adopts the new local identities; their ipcache changes, to write. */
  adopt(): IpcacheChange;
}

export const sameIdentity = (a: IdentitySpec | undefined, b: IdentitySpec) =>
  a !== undefined && a.cidr === b.cidr && JSON.stringify(a.labels) === JSON.stringify(b.labels);

export class LocalIdentities {
  #engine: PolicyEngine;
  #local = new Map<number, IdentitySpec>();

  constructor(engine: PolicyEngine) {
    this.#engine = engine;
  }

  /**
   * Loads new rules with the local identities they need into the engine (rule 1 of
   * regenerator.ts: throws and changes nothing when the engine refuses them).
   */
  stage(spec: PolicySpec, local: readonly IdentitySpec[], options: EngineOptions): StagedRules {
    const e = this.#engine;
    const prevSpec = e.spec;
    const prevLocal = this.#local;
    const next = new Map(local.map((i) => [i.id, i]));
    const added = local.filter((i) => !sameIdentity(prevLocal.get(i.id), i));
    const removed = [...prevLocal.values()].filter((i) => !next.has(i.id));
    const undo = () => {
      e.upsertIdentities(removed);
      e.removeIdentities(added.filter((i) => !prevLocal.has(i.id)).map((i) => i.id));
      e.upsertIdentities(added.map((i) => prevLocal.get(i.id)!).filter((i) => i !== undefined));
      e.setPolicy(prevSpec, options);
    };
    e.upsertIdentities(added);
    try {
      e.setPolicy(spec, options);
      e.removeIdentities(removed.map((i) => i.id));
    } catch (err) {
      undo();
      throw err;
    }
    const adopt = () => {
      this.#local = next;
      // An id reused for another prefix (toCIDR or toServices backends changed) must also let
      // go of its old prefix, or the old address keeps the id's allow entries.
      const moved = added.flatMap((i) => {
        const before = prevLocal.get(i.id);
        return before?.cidr !== undefined && before.cidr !== i.cidr ? [before] : [];
      });
      return localIpcache(prevLocal, next, [...added, ...removed, ...moved]);
    };
    return { undo, adopt };
  }

  /**
   * Records local identities that change between policy loads (kept for the next `stage()`);
   * the returned function gives their ipcache changes once the engine has the new identities.
   */
  change(
    upserts: readonly IdentitySpec[],
    removes: readonly IdentitySpec[],
  ): () => IpcacheChange {
    const prev = new Map(this.#local);
    for (const i of removes) this.#local.delete(i.id);
    for (const i of upserts) this.#local.set(i.id, i);
    const stale = upserts.flatMap((i) => {
      const before = this.#engine.identity(i.id);
      return before?.cidr !== undefined && before.cidr !== i.cidr ? [before] : [];
    });
    return () => localIpcache(prev, this.#local, [...upserts, ...removes, ...stale]);
  }
}

/**
 * The ipcache changes for the prefixes of `changed` local identities. Several local identities
 * can name one prefix (a learned /32 that a toCIDR rule names too: its FQDN identity and its CIDR
 * identity, both with the prefix's CIDR labels); the highest id holds the prefix (FQDN over
 * CIDR), and when it goes the prefix is handed back to the next one, not deleted.
 */
function localIpcache(
  prev: ReadonlyMap<number, IdentitySpec>,
  next: ReadonlyMap<number, IdentitySpec>,
  changed: readonly IdentitySpec[],
): IpcacheChange {
  const prefixes = new Set(changed.flatMap((i) => i.cidr === undefined ? [] : [i.cidr]));
  const owners = (m: ReadonlyMap<number, IdentitySpec>) => {
    const out = new Map<string, number>();
    for (const i of m.values()) {
      if (i.cidr === undefined || !prefixes.has(i.cidr)) continue;
      if ((out.get(i.cidr) ?? -1) < i.id) out.set(i.cidr, i.id);
    }
    return out;
  };
  const before = owners(prev), after = owners(next);
  const upserts: IpcacheEntry[] = [], deletes: IpcacheEntry[] = [];
  for (const prefix of prefixes) {
    const a = before.get(prefix), b = after.get(prefix);
    if (b !== undefined) upserts.push({ prefix, identity: b });
    else if (a !== undefined) deletes.push({ prefix, identity: a });
  }
  return { upserts, deletes };
}
