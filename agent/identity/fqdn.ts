/**
 * Node-local identities for the addresses the DNS proxy learned (Cilium's FQDN identities): an
 * address that some loaded `toFQDNs` selector matches (by one of the names it was learned under)
 * gets an identity of its own, numbered from FQDN_IDENTITY_BASE (the upper half of the
 * node-local range, so LocalCidrIdentities never collides with it), labelled
 * `fqdn:<selector>` for every matching selector plus the CIDR labels of its /32 (/128), so
 * `toCIDR` selectors and the `world` entity still select it once the ipcache names it. Pure: the
 * agent writes what `plan*()` returns through the regenerator, and only then `commit()`s.
 *
 * Invariants:
 * 1. Only addresses a selector matches get an identity; every other learned address stays
 *    what the ipcache said before (world or its CIDR identity).
 * 2. An address keeps its number while it has an identity; numbers are reused lowest first.
 * 3. Selector matching is Cilium's (POLICY-SEMANTICS §9.3): matchName exact; matchPattern
 *    label by label, `*` within one label, `**` whole labels, a lone `*` everything, names with
 *    an empty label never.
 */

import {
  cidrIdentityLabels,
  type IdentitySpec,
  LOCAL_IDENTITY_BASE,
  type PolicySpec,
} from "@cilia/policy-wasm";

export const FQDN_IDENTITY_BASE = LOCAL_IDENTITY_BASE + (1 << 23);

const LABEL_CHARS = "[-a-zA-Z0-9_]";

/** Invariant 3: the full-match regex of a selector key (see fqdnSelectorKey in policy-wasm). */
export function fqdnKeyRegex(key: string): RegExp {
  if (key === "*" || key === "**") return new RegExp(`^(?:(?:${LABEL_CHARS}+\\.)+|\\.)$`);
  const labels = key.split(".").slice(0, -1);
  let re = "";
  for (const label of labels) {
    if (label === "**") {
      re += `(?:${LABEL_CHARS}+\\.)+`;
      continue;
    }
    for (const c of label) {
      re += c === "*" ? `${LABEL_CHARS}*` : /[-_a-z0-9]/.test(c) ? c : `\\${c}`;
    }
    re += "\\.";
  }
  return new RegExp(`^${re}$`);
}

const emptyLabel = (name: string) => name !== "." && (name.startsWith(".") || name.includes(".."));

/** The `fqdn` label keys that the spec's toFQDNs selectors use. */
export function fqdnKeysOf(spec: PolicySpec): string[] {
  const out = new Set<string>();
  for (const r of spec.rules) {
    for (const e of r.entries) {
      for (const p of e.peers) {
        if (p.selector.kind !== "labels") continue;
        for (const q of p.selector.requirements) if (q.source === "fqdn") out.add(q.key);
      }
    }
  }
  return [...out].sort();
}

const hostPrefix = (ip: string) => ip.includes(":") ? `${ip}/128` : `${ip}/32`;

export class FqdnIdentities {
  #matchers: { key: string; re: RegExp }[] = [];
  #byIp = new Map<string, IdentitySpec>();

  /** The selector keys in force (from the loaded policy). */
  setKeys(keys: readonly string[]): void {
    this.#matchers = keys.map((key) => ({ key, re: fqdnKeyRegex(key) }));
  }

  get keys(): string[] {
    return this.#matchers.map((m) => m.key);
  }

  /** The `fqdn:` labels an address known under `names` gets (invariants 1, 3). */
  labelsFor(names: Iterable<string>): string[] {
    const keys = new Set<string>();
    for (const name of names) {
      if (emptyLabel(name)) continue;
      for (const m of this.#matchers) if (m.re.test(name)) keys.add(`fqdn:${m.key}`);
    }
    return [...keys].sort();
  }

  /**
   * What the identities of `ips` should be, given the names each is known under: the
   * identities to upsert and to remove; nothing changes until `commit()`.
   */
  plan(known: Map<string, Set<string>>, ips: Iterable<string>): FqdnPlan {
    const next = new Map(this.#byIp);
    const upserts: IdentitySpec[] = [];
    const removes: IdentitySpec[] = [];
    const taken = new Set([...next.values()].map((i) => i.id));
    let candidate = FQDN_IDENTITY_BASE + 1;
    for (const ip of ips) {
      const have = next.get(ip);
      const fqdn = this.labelsFor(known.get(ip) ?? []);
      if (fqdn.length === 0) {
        if (have) {
          next.delete(ip);
          removes.push(have);
        }
        continue;
      }
      const prefix = hostPrefix(ip);
      const labels = [...fqdn, ...cidrIdentityLabels(prefix)];
      if (have && JSON.stringify(have.labels) === JSON.stringify(labels)) continue;
      let id = have?.id;
      if (id === undefined) {
        while (taken.has(candidate)) candidate++;
        id = candidate;
        taken.add(id);
      }
      const spec = { id, labels, cidr: prefix };
      next.set(ip, spec);
      upserts.push(spec);
    }
    return { next, upserts, removes };
  }

  /** plan() for every address that has or should have an identity (after a policy change). */
  planAll(known: Map<string, Set<string>>): FqdnPlan {
    return this.plan(known, new Set([...known.keys(), ...this.#byIp.keys()]));
  }

  commit(p: FqdnPlan): void {
    this.#byIp = p.next;
  }

  all(): IdentitySpec[] {
    return [...this.#byIp.values()].sort((a, b) => a.id - b.id);
  }

  identityOf(ip: string): number | undefined {
    return this.#byIp.get(ip)?.id;
  }
}

export interface FqdnPlan {
  next: Map<string, IdentitySpec>;
  upserts: IdentitySpec[];
  removes: IdentitySpec[];
}
