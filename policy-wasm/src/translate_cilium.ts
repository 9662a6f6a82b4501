// CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy → IR rules (POLICY-SEMANTICS §2-§9):
// one RuleSpec per `spec`/`specs[i]`, one EntrySpec per PortRule (or one L3 entry), subjects
// scoped to the policy's namespace, peers from translate_peers.ts, fromRequires kept per rule, and
// the L7 rules of a default-allow direction made observe-only. This module is browser compatible.

import type { PathPart } from "./documents.ts";
import type { IssueSink } from "./issues.ts";
import type { Direction, EntrySpec, PeerSpec, PortSpec, RuleSpec, SelectorSpec } from "./ir.ts";
import type { IngressRule, Rule } from "./schema.ts";
import { labelRequirements, labelsSelector, NS_LABEL, type Scope, scopePeer } from "./selectors.ts";
import { observeOnly, type RegexCheck, translateIcmps, translatePortRule } from "./l7_rules.ts";
import { type AnyItem, itemPeers, L3_FIELDS } from "./translate_peers.ts";
import { cookieOf } from "./cookie.ts";
import type { ServiceRef } from "./translate_services.ts";

export interface RuleContext {
  sink: IssueSink;
  scope: Scope;
  clusterName: string;
  check?: RegexCheck;
  /** The cluster's services for toServices; undefined offline (translate_services.ts). */
  services?: readonly ServiceRef[] | undefined;
  /** Cookie seed: `kind/namespace/name`. */
  id: string;
}

function itemEntries(
  item: AnyItem,
  o: { dir: Direction; deny: boolean; path: PathPart[]; host: boolean },
  ctx: RuleContext,
): EntrySpec[] {
  const { dir, deny, path } = o;
  if (deny && item.toServices !== undefined && item.toServices !== null) {
    // Cilium resolves toServices in egress allow rules only: a deny would silently deny nothing.
    ctx.sink.error(
      path,
      `"toServices" is not supported in egressDeny (Cilium resolves it in egress allow rules only): deny the backends with toEndpoints or toCIDR`,
      "toServices",
    );
  }
  const { peers: explicitPeers, emptyField } = itemPeers(item, dir, ctx, path);
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
    ...(emptyField !== undefined ? { emptyPeers: emptyField } : {}),
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
      host: o.host,
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
      const host = kind === "node";
      entries.push(...itemEntries(item, { dir, deny, path: [...path, field, i], host }, ctx));
    });
  }
  const has = (a?: unknown[] | null, b?: unknown[] | null) =>
    (a?.length ?? 0) > 0 || (b?.length ?? 0) > 0;
  const dd = rule.enableDefaultDeny;
  warnEmptyDirections(rule, ctx, path);
  const userLabels = (rule.labels ?? []).map((l) =>
    typeof l === "string"
      ? l
      : `${l.source ?? "unspec"}:${l.key}${l.value !== undefined ? "=" + l.value : ""}`
  );
  const defaultDeny = {
    ingress: dd?.ingress ?? has(rule.ingress, rule.ingressDeny),
    egress: dd?.egress ?? has(rule.egress, rule.egressDeny),
  };
  return {
    policy,
    path: formatPathKey(path),
    subject,
    subjectKind: kind,
    defaultDeny,
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
    // Default-allow directions: L7 rules observe only (POLICY-SEMANTICS §9).
    entries: entries.map((e) => defaultDeny[e.direction] ? e : observeOnly(e)),
    ...(rule.description !== undefined ? { description: rule.description } : {}),
    labels: [...labels, ...userLabels],
  };
}

/**
 * `ingress: []` (or `egress: []`) with no deny entries and no `enableDefaultDeny` for that
 * direction: Cilium counts entries, so the direction stays default-allow (POLICY-SEMANTICS §5.1),
 * which is rarely what an explicit empty list means.
 */
function warnEmptyDirections(rule: Rule, ctx: RuleContext, path: PathPart[]): void {
  for (const [dir, deny] of [["ingress", "ingressDeny"], ["egress", "egressDeny"]] as const) {
    const list = rule[dir];
    if (!Array.isArray(list) || list.length > 0 || (rule[deny]?.length ?? 0) > 0) continue;
    if (rule.enableDefaultDeny?.[dir] !== undefined) continue;
    ctx.sink.warn(
      [...path, dir],
      `"${dir}: []" does not make the endpoint default-deny for ${dir}: Cilium counts rules, and an empty list has none, so all ${dir} stays allowed. To deny all ${dir}, write "enableDefaultDeny: {${dir}: true}" (or "${dir}: [{}]"); to keep it open, remove "${dir}: []"`,
      undefined,
      "empty-direction",
    );
  }
}
