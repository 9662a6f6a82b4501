// CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy → IR rules (POLICY-SEMANTICS §2-§8):
// one RuleSpec per `spec`/`specs[i]`, one EntrySpec per PortRule (or one L3 entry), subjects and
// peers scoped to the policy's namespace, entities and CIDRs as selectors, fromRequires kept per
// rule. This module is browser compatible.

import type { PathPart } from "./documents.ts";
import type { IssueSink } from "./issues.ts";
import type { Direction, EntrySpec, PeerSpec, PortSpec, RuleSpec, SelectorSpec } from "./ir.ts";
import type { EgressRule, IngressRule, Rule } from "./schema.ts";
import {
  cidrSelector,
  entityPeers,
  labelRequirements,
  labelsSelector,
  NS_LABEL,
  type Scope,
  scopePeer,
} from "./selectors.ts";
import {
  checkDnsSelector,
  type RegexCheck,
  translateIcmps,
  translatePortRule,
} from "./l7_rules.ts";
import { cookieOf } from "./cookie.ts";

export interface RuleContext {
  sink: IssueSink;
  scope: Scope;
  clusterName: string;
  check?: RegexCheck;
  /** Cookie seed: `kind/namespace/name`. */
  id: string;
}

type AnyItem = Partial<IngressRule> & Partial<EgressRule> & Record<string, unknown>;

const L3_FIELDS = {
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

function cidrPeers(item: AnyItem, dir: Direction, ctx: RuleContext, path: PathPart[]): PeerSpec[] {
  const out: PeerSpec[] = [];
  const names = L3_FIELDS[dir];
  ((item[names.cidr] ?? []) as string[]).forEach((c, i) => {
    const s = cidrSelector(c, [], ctx.sink, [...path, names.cidr, i]);
    if (s) out.push({ selector: s, requiresApply: false });
  });
  ((item[names.cidrSet] ?? []) as {
    cidr?: string;
    cidrGroupRef?: string;
    cidrGroupSelector?: unknown;
    except?: string[] | null;
  }[])
    .forEach((c, i) => {
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
  say("toServices", "service selectors arrive with load balancing");
  if ((item.authentication as { mode?: string } | undefined)?.mode === "required") {
    ctx.sink.error(
      path,
      `authentication mode "required" is not supported by cilia: it would not be enforced`,
      "authentication",
    );
  }
}

function fqdnPeers(item: AnyItem, ctx: RuleContext, path: PathPart[]): PeerSpec[] {
  const list = (item.toFQDNs ?? []) as { matchName?: string; matchPattern?: string }[];
  if (list.length === 0) return [];
  list.forEach((f, i) => checkDnsSelector(f, ctx.sink, [...path, "toFQDNs", i]));
  const others = ["toEndpoints", "toEntities", "toCIDR", "toCIDRSet", "toServices", "toNodes"]
    .filter((k) => item[k] !== undefined && item[k] !== null);
  if (others.length > 0) {
    ctx.sink.error(
      path,
      `toFQDNs cannot be combined with ${others.join(", ")} in one rule: write a separate rule`,
      "toFQDNs",
    );
  }
  const names = list.map((f) => f.matchName ?? f.matchPattern).join(", ");
  return [{
    selector: { kind: "none", why: `toFQDNs (${names}): no IPs learned by the DNS proxy yet` },
    requiresApply: false,
  }];
}

/** The peers of one allow/deny item; undefined peers = "no L3 field" (L4-only → any peer). */
function itemPeers(
  item: AnyItem,
  dir: Direction,
  ctx: RuleContext,
  path: PathPart[],
): PeerSpec[] | undefined {
  unsupportedPeers(item, dir, ctx, path);
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
  ];
  const hasL3 = ["endpoints", "entities", "cidr", "cidrSet"].some((k) => {
    const v = item[names[k as keyof typeof names]];
    return Array.isArray(v) && v.length > 0;
  }) || (dir === "egress" && Array.isArray(item.toFQDNs) && item.toFQDNs.length > 0);
  return hasL3 ? peers : undefined;
}

function itemEntries(
  item: AnyItem,
  o: { dir: Direction; deny: boolean; path: PathPart[] },
  ctx: RuleContext,
): EntrySpec[] {
  const { dir, deny, path } = o;
  const explicitPeers = itemPeers(item, dir, ctx, path);
  const toPorts = (item.toPorts ?? []) as NonNullable<IngressRule["toPorts"]>;
  const icmps = (item.icmps ?? []) as NonNullable<IngressRule["icmps"]>;
  if (toPorts.length > 0 && icmps.length > 0) {
    ctx.sink.error(
      path,
      "toPorts and icmps cannot be combined in one rule: write a separate rule",
      "icmps",
    );
  }
  const hasL4 = toPorts.length > 0 || icmps.length > 0;
  if (!explicitPeers && !hasL4) return []; // `{}` or requires only: selects nothing
  const peers: PeerSpec[] = explicitPeers ?? [{ selector: { kind: "all" }, requiresApply: false }];
  const mk = (ports: PortSpec[], p: PathPart[], l7?: EntrySpec["l7"]): EntrySpec => ({
    direction: dir,
    deny,
    peers,
    ports,
    ...(l7 ? { l7 } : {}),
    cookie: cookieOf(`${ctx.id}/${formatPathKey(p)}`),
    path: formatPathKey(p),
  });
  if (icmps.length > 0) {
    const types = translateIcmps(icmps, ctx.sink, [...path, "icmps"]);
    // No ICMP type listed: the rule grants (or denies) nothing — never "every port".
    return types.length > 0 ? [mk(types, [...path, "icmps"])] : [];
  }
  if (toPorts.length === 0) return [mk([], path)];
  return toPorts.flatMap((pr, i) => {
    const p = [...path, "toPorts", i];
    const t = translatePortRule(pr, {
      sink: ctx.sink,
      path: p,
      dir,
      ...(ctx.check ? { check: ctx.check } : {}),
    });
    // A port rule without ports grants (or denies) nothing; an entry without ports would mean
    // "every port and protocol".
    return t.ports.length > 0 ? [mk(t.ports, p, t.l7)] : [];
  });
}

function formatPathKey(path: readonly PathPart[]): string {
  return path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? p : `.${p}`)).join("");
}

function requiresOf(
  items: AnyItem[],
  dir: Direction,
  ctx: RuleContext,
  path: PathPart[],
  field: string,
): SelectorSpec[] {
  const f = L3_FIELDS[dir].requires;
  const out: SelectorSpec[] = [];
  items.forEach((item, i) => {
    ((item[f] ?? []) as NonNullable<IngressRule["fromRequires"]>).forEach((sel, j) => {
      const reqs = labelRequirements(sel, ctx.sink, [...path, field, i, f, j]);
      out.push(labelsSelector(scopePeer(reqs, ctx.scope)));
    });
  });
  return out;
}

function subjectOf(
  rule: Rule,
  ctx: RuleContext,
  path: PathPart[],
): { subject: SelectorSpec; kind: "endpoint" | "node" } {
  if (rule.nodeSelector && rule.endpointSelector) {
    ctx.sink.error(
      path,
      "Expected exactly one of endpointSelector and nodeSelector, got both",
      "nodeSelector",
    );
  }
  if (rule.nodeSelector) {
    if (ctx.scope.kind === "namespaced") {
      ctx.sink.error(
        path,
        "nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy",
        "nodeSelector",
      );
    }
    const reqs = labelRequirements(rule.nodeSelector, ctx.sink, [...path, "nodeSelector"]);
    return { subject: labelsSelector(reqs), kind: "node" };
  }
  if (!rule.endpointSelector) {
    ctx.sink.error(path, "Expected endpointSelector or nodeSelector");
    return { subject: { kind: "none", why: "no subject" }, kind: "endpoint" };
  }
  let reqs = labelRequirements(rule.endpointSelector, ctx.sink, [...path, "endpointSelector"]);
  if (ctx.scope.kind === "namespaced") {
    if (reqs.some((r) => r.key === NS_LABEL)) {
      ctx.sink.warn(
        [...path, "endpointSelector"],
        `The namespace in endpointSelector is ignored: a CiliumNetworkPolicy only selects endpoints of its own namespace "${ctx.scope.namespace}"`,
      );
    }
    reqs = [...reqs.filter((r) => r.key !== NS_LABEL), {
      source: "k8s",
      key: NS_LABEL,
      op: "In",
      values: [ctx.scope.namespace],
    }];
  }
  return { subject: labelsSelector(reqs), kind: "endpoint" };
}

/** One Cilium rule (`spec` or `specs[i]`) → RuleSpec. */
export function translateCiliumRule(
  rule: Rule,
  ctx: RuleContext,
  path: PathPart[],
  policy: number,
  labels: string[],
): RuleSpec {
  const { subject, kind } = subjectOf(rule, ctx, path);
  const entries: EntrySpec[] = [];
  const lists = [
    ["ingress", "ingress", false],
    ["ingressDeny", "ingress", true],
    ["egress", "egress", false],
    ["egressDeny", "egress", true],
  ] as const;
  for (const [field, dir, deny] of lists) {
    ((rule[field] ?? []) as AnyItem[]).forEach((item, i) => {
      entries.push(...itemEntries(item, { dir, deny, path: [...path, field, i] }, ctx));
    });
  }
  const has = (a?: unknown[] | null, b?: unknown[] | null) =>
    (a?.length ?? 0) > 0 || (b?.length ?? 0) > 0;
  const dd = rule.enableDefaultDeny;
  const userLabels = (rule.labels ?? []).map((l) =>
    typeof l === "string"
      ? l
      : `${l.source ?? "unspec"}:${l.key}${l.value !== undefined ? "=" + l.value : ""}`
  );
  return {
    policy,
    path: formatPathKey(path),
    subject,
    subjectKind: kind,
    defaultDeny: {
      ingress: dd?.ingress ?? has(rule.ingress, rule.ingressDeny),
      egress: dd?.egress ?? has(rule.egress, rule.egressDeny),
    },
    requires: {
      ingress: requiresOf((rule.ingress ?? []) as AnyItem[], "ingress", ctx, path, "ingress"),
      egress: requiresOf((rule.egress ?? []) as AnyItem[], "egress", ctx, path, "egress"),
      ingressDeny: requiresOf(
        (rule.ingressDeny ?? []) as AnyItem[],
        "ingress",
        ctx,
        path,
        "ingressDeny",
      ),
      egressDeny: requiresOf(
        (rule.egressDeny ?? []) as AnyItem[],
        "egress",
        ctx,
        path,
        "egressDeny",
      ),
    },
    entries,
    ...(rule.description !== undefined ? { description: rule.description } : {}),
    labels: [...labels, ...userLabels],
  };
}
