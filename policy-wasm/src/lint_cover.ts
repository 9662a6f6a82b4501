// Coverage questions lint asks about the IR — does one selector select every identity another
// does, does one port list cover another — and an index that finds the rules whose subject may
// cover a given subject without comparing every pair (lint over thousands of policies stays
// near-linear). Conservative: "covers" is only said when it is certain. This module is browser
// compatible.

import type { PortSpec, Requirement, RuleSpec, SelectorSpec } from "./ir.ts";
import { parsePrefix, prefixContains } from "./cidr.ts";

const keyCache = new WeakMap<Requirement, string>();

/** A requirement as one comparable string (cached per object). */
export function reqKey(q: Requirement): string {
  let k = keyCache.get(q);
  if (k === undefined) {
    k = JSON.stringify([q.source, q.key, q.op, q.values]);
    keyCache.set(q, k);
  }
  return k;
}

/** True when every identity `inner` selects is also selected by `outer` (conservative). */
export function selectorCovers(outer: SelectorSpec, inner: SelectorSpec): boolean {
  if (outer.kind === "all") return true;
  if (outer.kind === "labels" && inner.kind === "labels") {
    if (outer.requirements.length > inner.requirements.length) return false;
    const have = new Set(inner.requirements.map(reqKey));
    return outer.requirements.every((q) => have.has(reqKey(q)));
  }
  if (outer.kind === "labels" && inner.kind === "cidr") {
    return outer.requirements.length === 1 && outer.requirements[0]!.source === "reserved" &&
      outer.requirements[0]!.key === "world";
  }
  if (outer.kind === "cidr" && inner.kind === "cidr") {
    const o = parsePrefix(outer.cidr);
    const i = parsePrefix(inner.cidr);
    if (!prefixContains(o, i)) return false;
    // Prefixes either nest or are disjoint: an except must not overlap the inner prefix.
    return outer.except.map(parsePrefix).every((ex) =>
      !prefixContains(i, ex) && !prefixContains(ex, i)
    );
  }
  return false;
}

/** Does a port list (empty = every port) include `port` of protocol `proto`? */
export function coversPort(specs: PortSpec[], proto: number, port: number): boolean {
  if (specs.length === 0) return true;
  return specs.some((p) =>
    (p.proto === 0 || p.proto === proto) && p.name === undefined && port >= p.port &&
    port <= p.endPort
  );
}

export function portsCovered(outer: PortSpec[], inner: PortSpec[]): boolean {
  if (outer.length === 0) return true;
  if (inner.length === 0) return false;
  return inner.every((p) =>
    outer.some((o) =>
      (o.proto === 0 ? p.proto !== 1 && p.proto !== 58 : o.proto === p.proto) &&
      (o.name !== undefined
        ? o.name === p.name
        : p.name === undefined && p.port >= o.port && p.endPort <= o.endPort)
    )
  );
}

/**
 * Items keyed by their rule's subject: `candidates(subject)` returns the items whose subject may
 * cover it (a superset; callers still check selectorCovers). A labels subject is filed under its
 * first requirement, so only subjects sharing a requirement with the query are returned, plus the
 * ones with no requirements and the non-label ones.
 */
export class SubjectIndex<T> {
  #byReq = new Map<string, T[]>();
  #always: T[] = [];

  add(subject: SelectorSpec, item: T): void {
    if (subject.kind !== "labels" || subject.requirements.length === 0) {
      this.#always.push(item);
      return;
    }
    const k = reqKey(subject.requirements[0]!);
    const list = this.#byReq.get(k);
    if (list) list.push(item);
    else this.#byReq.set(k, [item]);
  }

  candidates(subject: SelectorSpec): T[] {
    if (subject.kind !== "labels") return [...this.#always, ...[...this.#byReq.values()].flat()];
    const out = [...this.#always];
    for (const k of new Set(subject.requirements.map(reqKey))) {
      out.push(...(this.#byReq.get(k) ?? []));
    }
    return out;
  }
}

/** Rules indexed by subject, each with its index in the spec. */
export function indexRules(
  rules: readonly RuleSpec[],
  keep: (r: RuleSpec) => boolean = () => true,
): SubjectIndex<{ r: RuleSpec; ri: number }> {
  const idx = new SubjectIndex<{ r: RuleSpec; ri: number }>();
  rules.forEach((r, ri) => {
    if (keep(r)) idx.add(r.subject, { r, ri });
  });
  return idx;
}
