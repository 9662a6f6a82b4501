// The peers (L3 part) of one CiliumNetworkPolicy allow or deny item → IR peer selectors
// (POLICY-SEMANTICS §2.1): endpoint selectors scoped to the policy's namespace, entities, CIDRs
// and CIDR sets, toFQDNs, toServices (translate_services.ts); the fields cilia cannot enforce are rejected, never ignored. It owns the
// difference between a *missing* L3 field and an *empty* one, and must not blur it:
//
//  1. No L3 field at all (absent or null): the item has no peers of its own; with ports it is an
//     L4-only rule (any peer), without ports it selects nothing.
//  2. An L3 field that is an empty list (`fromEndpoints: []`, `toCIDR: []`, `toFQDNs: []`, …)
//     selects no peer, and so does the whole item, whatever its other L3 fields say (Cilium's
//     mergeEndpointSelectors). Reading it as "no L3 field" would open the port to everyone.
//  3. `toCIDR`/`toCIDRSet` together with `toEndpoints` in one egress item is rejected (Cilium:
//     "Combining ToCIDR and ToEndpoints is not supported yet"), as is toFQDNs with any other L3.
//  4. A CIDR set entry names a prefix; a bare address there is rejected (use `/32` or `/128`).
//
// fromRequires/toRequires are not peers (they narrow endpoint selectors) and are read elsewhere.
// This module is browser compatible.

import type { PathPart } from "./documents.ts";
import type { Direction, PeerSpec } from "./ir.ts";
import type { EgressRule, IngressRule } from "./schema.ts";
import {
  cidrSelector,
  entityPeers,
  labelRequirements,
  labelsSelector,
  scopePeer,
} from "./selectors.ts";
import { checkDnsSelector } from "./l7_rules.ts";
import { servicePeers } from "./translate_services.ts";
import type { RuleContext } from "./translate_cilium.ts";

/** One allow or deny item of a rule, ingress or egress, as the schema parsed it. */
export type AnyItem = Partial<IngressRule> & Partial<EgressRule> & Record<string, unknown>;

export const L3_FIELDS = {
  ingress: {
    endpoints: "fromEndpoints",
    requires: "fromRequires",
    entities: "fromEntities",
    cidr: "fromCIDR",
    cidrSet: "fromCIDRSet",
    nodes: "fromNodes",
    groups: "fromGroups",
  },
  egress: {
    endpoints: "toEndpoints",
    requires: "toRequires",
    entities: "toEntities",
    cidr: "toCIDR",
    cidrSet: "toCIDRSet",
    nodes: "toNodes",
    groups: "toGroups",
  },
} as const;

/** The fields that name peers, per direction, in the order messages list them. */
function peerFields(dir: Direction): string[] {
  const n = L3_FIELDS[dir];
  const common = [n.endpoints, n.entities, n.cidr, n.cidrSet, n.nodes, n.groups];
  return dir === "egress" ? [...common, "toServices", "toFQDNs"] : common;
}

const isList = (v: unknown): v is unknown[] => Array.isArray(v);

function endpointPeers(
  item: AnyItem,
  dir: Direction,
  ctx: RuleContext,
  path: PathPart[],
): PeerSpec[] {
  const f = L3_FIELDS[dir].endpoints;
  const list = (item[f] ?? []) as IngressRule["fromEndpoints"] & object;
  return list.map((sel, i) => {
    const reqs = labelRequirements(sel, ctx.sink, [...path, f, i]);
    return { selector: labelsSelector(scopePeer(reqs, ctx.scope)), requiresApply: true };
  });
}

interface CidrSetEntry {
  cidr?: string;
  cidrGroupRef?: string;
  cidrGroupSelector?: unknown;
  except?: string[] | null;
}

function cidrPeers(item: AnyItem, dir: Direction, ctx: RuleContext, path: PathPart[]): PeerSpec[] {
  const out: PeerSpec[] = [];
  const names = L3_FIELDS[dir];
  ((item[names.cidr] ?? []) as string[]).forEach((c, i) => {
    const s = cidrSelector(c, [], ctx.sink, [...path, names.cidr, i]);
    if (s) out.push({ selector: s, requiresApply: false });
  });
  ((item[names.cidrSet] ?? []) as CidrSetEntry[]).forEach((c, i) => {
    const p = [...path, names.cidrSet, i];
    if (c.cidrGroupRef !== undefined || c.cidrGroupSelector !== undefined) {
      ctx.sink.error(
        p,
        "CiliumCIDRGroup references are not supported by cilia",
        c.cidrGroupRef !== undefined ? "cidrGroupRef" : "cidrGroupSelector",
      );
      return;
    }
    if (c.cidr === undefined) {
      ctx.sink.error(p, `Expected "cidr"`);
      return;
    }
    const bare = [c.cidr, ...(c.except ?? [])].findIndex((x) => !x.includes("/"));
    if (bare >= 0) {
      const x = bare === 0 ? c.cidr : c.except![bare - 1]!;
      ctx.sink.error(
        bare === 0 ? [...p, "cidr"] : [...p, "except", bare - 1],
        `Invalid prefix "${x}" in ${names.cidrSet}: expected an address with its prefix length, e.g. "${x}/${
          x.includes(":") ? 128 : 32
        }" (a bare address is only accepted in ${names.cidr})`,
      );
      return;
    }
    const s = cidrSelector(c.cidr, c.except ?? [], ctx.sink, [...p, "cidr"]);
    if (s) out.push({ selector: s, requiresApply: false });
  });
  return out;
}

function unsupportedPeers(item: AnyItem, dir: Direction, ctx: RuleContext, path: PathPart[]): void {
  const names = L3_FIELDS[dir];
  const say = (field: string, why: string) => {
    if (item[field] !== undefined && item[field] !== null) {
      ctx.sink.error(path, `"${field}" is not supported by cilia: ${why}`, field);
    }
  };
  say(names.nodes, "node selector labels are not implemented");
  say(names.groups, "cloud-provider groups are not implemented");
  if ((item.authentication as { mode?: string } | undefined)?.mode === "required") {
    ctx.sink.error(
      path,
      `authentication mode "required" is not supported by cilia: it would not be enforced`,
      "authentication",
    );
  }
}

/** Invariant 3: combinations Cilium rejects instead of OR-ing the lists. */
function combinations(item: AnyItem, dir: Direction, ctx: RuleContext, path: PathPart[]): void {
  if (dir !== "egress") return;
  const full = (k: string) => isList(item[k]) && (item[k] as unknown[]).length > 0;
  if (full("toEndpoints")) {
    for (const k of ["toCIDR", "toCIDRSet"].filter(full)) {
      ctx.sink.error(
        path,
        `${k} cannot be combined with toEndpoints in one egress rule: write a separate rule for each (Cilium rejects the combination instead of OR-ing the two lists)`,
        k,
      );
    }
  }
  if (!full("toFQDNs")) return;
  const others = ["toEndpoints", "toEntities", "toCIDR", "toCIDRSet", "toServices", "toNodes"]
    .filter((k) => item[k] !== undefined && item[k] !== null);
  if (others.length > 0) {
    ctx.sink.error(
      path,
      `toFQDNs cannot be combined with ${others.join(", ")} in one rule: write a separate rule`,
      "toFQDNs",
    );
  }
}

function fqdnPeers(item: AnyItem, ctx: RuleContext, path: PathPart[]): PeerSpec[] {
  const list = (item.toFQDNs ?? []) as { matchName?: string; matchPattern?: string }[];
  if (list.length === 0) return [];
  list.forEach((f, i) => checkDnsSelector(f, ctx.sink, [...path, "toFQDNs", i]));
  // Cilium's FQDN selector: the identities the DNS proxy gives to learned addresses carry the
  // label `fqdn:<selector>` for every selector whose name or pattern matched (agent/identity).
  return list.map((f) => ({
    selector: {
      kind: "labels",
      requirements: [{ source: "fqdn", key: fqdnSelectorKey(f), op: "Exists", values: [] }],
    },
    requiresApply: false,
  }));
}

/** The label key of a toFQDNs selector: its name or pattern, lower-case, with the trailing dot. */
export function fqdnSelectorKey(f: { matchName?: string; matchPattern?: string }): string {
  const raw = (f.matchName ?? f.matchPattern ?? "").trim().toLowerCase();
  if (raw === "*" || raw === "**") return raw;
  return raw.endsWith(".") ? raw : raw + ".";
}

export interface ItemPeers {
  /** The item's peers; undefined when it has no L3 field (invariant 1). */
  peers?: PeerSpec[];
  /** The explicitly empty L3 field that makes the item select no peer (invariant 2). */
  emptyField?: string;
}

/** The peers of one allow/deny item, with every L3 check of this module. */
export function itemPeers(
  item: AnyItem,
  dir: Direction,
  ctx: RuleContext,
  path: PathPart[],
): ItemPeers {
  unsupportedPeers(item, dir, ctx, path);
  combinations(item, dir, ctx, path);
  const names = L3_FIELDS[dir];
  const peers = [
    ...endpointPeers(item, dir, ctx, path),
    ...entityPeers(
      (item[names.entities] ?? []) as string[],
      ctx.sink,
      [...path, names.entities],
      ctx.clusterName,
    ),
    ...cidrPeers(item, dir, ctx, path),
    ...(dir === "egress" ? fqdnPeers(item, ctx, path) : []),
    ...(dir === "egress" && isList(item.toServices)
      ? servicePeers(item.toServices, { sink: ctx.sink, path, services: ctx.services })
      : []),
  ];
  const present = peerFields(dir).filter((f) => isList(item[f]));
  if (present.length === 0) return {};
  const emptyField = present.find((f) => (item[f] as unknown[]).length === 0);
  if (emptyField === undefined) return { peers };
  return {
    peers: [{
      selector: { kind: "none", why: `${emptyField} is an empty list: it selects no peer` },
      requiresApply: false,
    }],
    emptyField,
  };
}
