// Conflicting L7 parsers (POLICY-SEMANTICS §2.2, §9): two allow entries with different L7
// families (HTTP, Kafka, DNS) on an overlapping port for peers that may be the same, in rules
// whose subjects may be the same endpoint, cannot be enforced by one proxy; Cilium rejects them
// ("cannot merge conflicting L7 parsers"). This check runs on the whole PolicySpec, so it sees
// conflicts across rules and across policies without any identity. It decides by the selectors
// alone:
//
//  1. Two selectors may select one identity unless they contradict each other: a `none`
//     selector; `In` sets without a common value; `In` or `Exists` against `DoesNotExist`; `In`
//     whose values the other's `NotIn` all excludes; label selectors that require pod labels
//     against a CIDR; CIDRs that do not overlap. Anything else counts as overlapping.
//  2. Ports overlap when the protocols agree (0 = any of TCP/UDP/SCTP) and the ranges meet, or
//     when both name the same port. What a port name resolves to depends on the endpoint, so a
//     name against a number is left to the engine (3).
//  3. Whatever this check cannot see (fromRequires/toRequires, which only narrow peers; named
//     ports) the engine still reports per point when it computes an endpoint's map-state.
//
// The conflict is reported at the later entry and its message names both entries with their
// policies, so a policy that conflicts with one already in force fails naming that policy,
// whichever comes first. This module is browser compatible.

import type { EntrySpec, PolicySpec, PortSpec, Requirement, SelectorSpec } from "./ir.ts";
import { parsePrefix, prefixContains } from "./cidr.ts";
import { protocolName } from "./protocols.ts";
import { policyName } from "./explain.ts";

export interface L7Conflict {
  /** Index into PolicySpec.policies of the later entry's policy. */
  policy: number;
  /** Path of the later entry in its document. */
  path: string;
  message: string;
}

const sameLabel = (a: Requirement, b: Requirement) =>
  a.key === b.key && (a.source === b.source || a.source === "any" || b.source === "any");

/** Invariant 1 for two requirements on the same label. */
function contradict(a: Requirement, b: Requirement): boolean {
  const has = (r: Requirement) => r.op === "In" || r.op === "Exists";
  if (a.op === "DoesNotExist" || b.op === "DoesNotExist") {
    return has(a.op === "DoesNotExist" ? b : a);
  }
  if (a.op === "In" && b.op === "In") return !a.values.some((v) => b.values.includes(v));
  if (a.op === "In" && b.op === "NotIn") return a.values.every((v) => b.values.includes(v));
  if (a.op === "NotIn" && b.op === "In") return b.values.every((v) => a.values.includes(v));
  return false;
}

/** Does a label selector require labels only pods (not CIDR identities) carry? */
function needsPodLabels(reqs: Requirement[]): boolean {
  return reqs.some((r) =>
    (r.op === "In" || r.op === "Exists") && r.source !== "any" && r.source !== "reserved" &&
    r.source !== "cidr"
  );
}

function cidrsOverlap(a: SelectorSpec & { kind: "cidr" }, b: SelectorSpec & { kind: "cidr" }) {
  const pa = parsePrefix(a.cidr), pb = parsePrefix(b.cidr);
  const [outer, inner] = prefixContains(pa, pb) ? [a, pb] : prefixContains(pb, pa) ? [b, pa] : [];
  if (!outer || !inner) return false;
  return !outer.except.some((x) => prefixContains(parsePrefix(x), inner));
}

/** Invariant 1: may some identity be selected by both? */
export function mayIntersect(a: SelectorSpec, b: SelectorSpec): boolean {
  if (a.kind === "none" || b.kind === "none") return false;
  if (a.kind === "all" || b.kind === "all") return true;
  if (a.kind === "cidr" && b.kind === "cidr") return cidrsOverlap(a, b);
  if (a.kind === "labels" && b.kind === "labels") {
    return !a.requirements.some((ra) =>
      b.requirements.some((rb) => sameLabel(ra, rb) && contradict(ra, rb))
    );
  }
  const labels = a.kind === "labels" ? a : b.kind === "labels" ? b : undefined;
  return labels ? !needsPodLabels(labels.requirements) : true;
}

/** Invariant 2. */
function portsOverlap(a: PortSpec, b: PortSpec): boolean {
  if (a.proto !== b.proto && a.proto !== 0 && b.proto !== 0) return false;
  if (a.name !== undefined || b.name !== undefined) return a.name === b.name;
  return a.port <= b.endPort && b.port <= a.endPort;
}

function portText(p: PortSpec): string {
  const port = p.name ?? (p.endPort !== p.port ? `${p.port}-${p.endPort}` : String(p.port));
  return `${protocolName(p.proto)}/${port}`;
}

const FAMILY = { http: "HTTP", kafka: "Kafka", dns: "DNS" } as const;

interface L7Entry {
  rule: number;
  entry: EntrySpec;
}

/** Every pair of conflicting L7 entries, reported at the later one. */
export function findL7Conflicts(spec: PolicySpec): L7Conflict[] {
  const list: L7Entry[] = spec.rules.flatMap((r, rule) =>
    r.entries.filter((e) => !e.deny && e.l7 !== undefined).map((entry) => ({ rule, entry }))
  );
  const out: L7Conflict[] = [];
  list.forEach((b, j) => {
    const rb = spec.rules[b.rule]!;
    for (const a of list.slice(0, j)) {
      const ra = spec.rules[a.rule]!;
      if (a.entry.direction !== b.entry.direction || a.entry.l7!.kind === b.entry.l7!.kind) {
        continue;
      }
      if (ra.subjectKind !== rb.subjectKind || !mayIntersect(ra.subject, rb.subject)) continue;
      const port = b.entry.ports.find((pb) => a.entry.ports.some((pa) => portsOverlap(pa, pb)));
      if (!port) continue;
      const peers = a.entry.peers.some((pa) =>
        b.entry.peers.some((pb) => mayIntersect(pa.selector, pb.selector))
      );
      if (!peers) continue;
      const name = (x: L7Entry, r: typeof ra) =>
        `the ${FAMILY[x.entry.l7!.kind]} rules of ${
          policyName(spec.policies[r.policy])
        } ${x.entry.path}`;
      out.push({
        policy: rb.policy,
        path: b.entry.path,
        message: `Conflicting L7 protocols on ${b.entry.direction} ${
          portText(port)
        } for the same peers: ${name(b, rb)} and ${
          name(a, ra)
        }; one proxy cannot enforce both (Cilium: "cannot merge conflicting L7 parsers"): use one L7 protocol per port`,
      });
      break;
    }
  });
  return out;
}
