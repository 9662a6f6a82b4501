// `cilia policy lint`: warnings for known footguns, each with the YAML path, the line and an
// explanation. Works on the compiled IR (so it sees policies exactly as the engine does) and
// reports at source locations. Lints:
//   or-split        an extra `-` splits one rule into an L3-only rule OR-ed with an L4-only rule
//   empty-selector  `{}` selectors that select every endpoint (of the namespace, or the cluster)
//   dns-blocked     egress default-deny without any rule allowing DNS (port 53)
//   fqdn-no-dns     toFQDNs without a DNS L7 rule, so the FQDN selector never learns IPs
//   dead-allow      an allow that a deny of the same subject always overrides
//   l7-bypassed     L7 rules on a port that an L4-only rule opens to every peer
//   empty-peers     an explicitly empty peer list (`fromEndpoints: []`): the rule grants nothing
// This module is browser compatible.

import type { CompileResult } from "./policies.ts";
import type { EntrySpec, PortSpec, Requirement, RuleSpec, SelectorSpec } from "./ir.ts";
import { parsePrefix, prefixContains } from "./cidr.ts";
import { NS_LABEL } from "./selectors.ts";
import { policyName } from "./explain.ts";

export type LintCode =
  | "or-split"
  | "empty-selector"
  | "dns-blocked"
  | "fqdn-no-dns"
  | "dead-allow"
  | "l7-bypassed"
  | "empty-peers"
  | "translation";

export interface LintWarning {
  code: LintCode;
  message: string;
  path: string;
  policy: string;
  file?: string;
  line?: number;
  column?: number;
}

type Emit = (code: LintCode, ruleIndex: number, path: string, message: string) => void;

const isWildcard = (e: EntrySpec) => e.peers.some((p) => p.selector.kind === "all");
const itemOf = (path: string) => path.replace(/\.(toPorts|icmps)(\[\d+\])?$/, "");

function lintOrSplit(rules: RuleSpec[], emit: Emit): void {
  rules.forEach((r, ri) => {
    for (const e of r.entries) {
      if (e.ports.length > 0 || isWildcard(e) || e.deny) continue;
      const m = e.path.match(/^(.*)\[(\d+)\]$/);
      if (!m) continue;
      const next = `${m[1]}[${Number(m[2]) + 1}]`;
      const b = r.entries.find((x) =>
        itemOf(x.path) === next && isWildcard(x) && x.ports.length > 0
      );
      if (!b) continue;
      emit(
        "or-split",
        ri,
        itemOf(b.path),
        `This rule has ports but no peers, so it allows those ports from anyone; the rule before it (${e.path}) allows every port from its peers. The two are OR-ed. If you meant "these peers on these ports", remove the "-" before toPorts so both are in one rule`,
      );
    }
  });
}

function isEmptyScoped(s: SelectorSpec): boolean {
  return s.kind === "labels" && s.requirements.every((q) => q.key === NS_LABEL);
}

function lintEmptySelectors(c: CompileResult, emit: Emit): void {
  c.spec.rules.forEach((r, ri) => {
    const p = c.spec.policies[r.policy]!;
    if (p.kind === "NetworkPolicy") return;
    const scope = p.kind === "CiliumNetworkPolicy"
      ? `every endpoint in namespace "${p.namespace}"`
      : "every endpoint in the cluster";
    if (r.subjectKind === "endpoint" && isEmptyScoped(r.subject)) {
      emit(
        "empty-selector",
        ri,
        `${r.path}.endpointSelector`,
        `An empty endpointSelector selects ${scope}: this policy applies to all of them`,
      );
    }
    for (const e of r.entries) {
      e.peers.forEach((peer) => {
        if (!peer.requiresApply || !isEmptyScoped(peer.selector)) return;
        const field = e.direction === "ingress" ? "fromEndpoints" : "toEndpoints";
        emit(
          "empty-selector",
          ri,
          itemOf(e.path),
          `${field}: [{}] selects ${
            scope.replace("every endpoint", "every pod")
          }: it does not include the host, other nodes or the world (use ${
            e.direction === "ingress" ? "fromEntities" : "toEntities"
          }: [all] for "anyone")`,
        );
      });
    }
  });
}

function coversPort(specs: PortSpec[], proto: number, port: number): boolean {
  if (specs.length === 0) return true;
  return specs.some((p) =>
    (p.proto === 0 || p.proto === proto) && p.name === undefined && port >= p.port &&
    port <= p.endPort
  );
}

/** Could this peer be the cluster DNS (kube-dns in kube-system, or a DNS server by IP)? */
function mayBeDns(s: SelectorSpec): boolean {
  if (s.kind === "all" || s.kind === "cidr") return true;
  if (s.kind !== "labels") return false;
  if (s.requirements.some((q) => q.source === "reserved")) return false;
  const ns = s.requirements.find((q) => q.key === NS_LABEL && q.op === "In");
  return !ns || ns.values.includes("kube-system");
}

function allowsDns(r: RuleSpec): boolean {
  return r.entries.some((e) =>
    e.direction === "egress" && !e.deny && coversPort(e.ports, 17, 53) &&
    e.peers.some((p) => mayBeDns(p.selector))
  );
}

/** Per egress-default-deny rule: does some rule that applies to all of its endpoints allow DNS? */
function lintDns(c: CompileResult, emit: Emit): void {
  const done = new Set<string>();
  c.spec.rules.forEach((r, ri) => {
    if (r.subjectKind !== "endpoint" || !r.defaultDeny.egress) return;
    const key = JSON.stringify(r.subject);
    if (done.has(key)) return;
    done.add(key);
    if (c.spec.rules.some((r2) => selectorCovers(r2.subject, r.subject) && allowsDns(r2))) return;
    emit(
      "dns-blocked",
      ri,
      r.path,
      `Egress is default-deny for the endpoints this rule selects and no rule allows them DNS (UDP port 53): name resolution will fail. Allow egress to kube-dns, e.g. toEndpoints k8s-app=kube-dns in kube-system with toPorts 53/UDP (and rules.dns if you use toFQDNs)`,
    );
  });
}

function lintFqdn(c: CompileResult, emit: Emit): void {
  const hasDnsRule = c.spec.rules.some((r) => r.entries.some((e) => e.l7?.kind === "dns"));
  if (hasDnsRule) return;
  c.spec.rules.forEach((r, ri) => {
    for (const e of r.entries) {
      if (
        !e.peers.some((p) => p.selector.kind === "none" && p.selector.why.startsWith("toFQDNs"))
      ) continue;
      emit(
        "fqdn-no-dns",
        ri,
        itemOf(e.path),
        `toFQDNs needs a DNS rule: without an egress toPorts rule on port 53 with rules.dns, the DNS proxy never sees the answers, so this FQDN selector matches no IP`,
      );
    }
  });
}

const reqKey = (q: Requirement) => JSON.stringify([q.source, q.key, q.op, q.values]);

/** True when every identity `inner` selects is also selected by `outer` (conservative). */
function selectorCovers(outer: SelectorSpec, inner: SelectorSpec): boolean {
  if (outer.kind === "all") return true;
  if (outer.kind === "labels" && inner.kind === "labels") {
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

function portsCovered(outer: PortSpec[], inner: PortSpec[]): boolean {
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

function lintDeadAllows(c: CompileResult, emit: Emit): void {
  const denies = c.spec.rules.flatMap((r, ri) =>
    r.entries.filter((e) => e.deny).map((e) => ({ r, ri, e }))
  );
  c.spec.rules.forEach((r, ri) => {
    for (const e of r.entries) {
      if (e.deny || e.emptyPeers !== undefined) continue;
      const killer = denies.find((d) =>
        d.e.direction === e.direction && selectorCovers(d.r.subject, r.subject) &&
        e.peers.every((p) =>
          d.e.peers.some((dp) =>
            (!dp.requiresApply ||
              (d.r.requires[e.direction === "ingress" ? "ingressDeny" : "egressDeny"] ?? [])
                  .length === 0) &&
            selectorCovers(dp.selector, p.selector)
          )
        ) &&
        portsCovered(d.e.ports, e.ports)
      );
      if (!killer) continue;
      emit(
        "dead-allow",
        ri,
        e.path,
        `This allow never takes effect: ${
          policyName(c.spec.policies[killer.r.policy])
        } ${killer.e.path} denies the same peers and ports for the same endpoints, and deny always wins over allow`,
      );
    }
  });
}

function lintL7Bypass(c: CompileResult, emit: Emit): void {
  c.spec.rules.forEach((r, ri) => {
    for (const e of r.entries) {
      if (e.deny || !e.l7 || e.emptyPeers !== undefined) continue;
      const opener = c.spec.rules.flatMap((r2) => r2.entries.map((e2) => ({ r2, e2 }))).find((
        { r2, e2 },
      ) =>
        !e2.deny && !e2.l7 && isWildcard(e2) && e2.direction === e.direction &&
        e2.ports.length > 0 &&
        selectorCovers(r2.subject, r.subject) && e.ports.every((p) =>
          coversPort(e2.ports, p.proto === 0 ? 6 : p.proto, p.port)
        )
      );
      if (!opener) continue;
      emit(
        "l7-bypassed",
        ri,
        e.path,
        `These L7 rules have no effect: ${
          policyName(c.spec.policies[opener.r2.policy])
        } ${opener.e2.path} opens the same port to every peer without L7 rules, and a plain L4 allow turns L7 filtering off for everyone it matches`,
      );
    }
  });
}

function lintEmptyPeers(rules: RuleSpec[], emit: Emit): void {
  rules.forEach((r, ri) => {
    const done = new Set<string>();
    for (const e of r.entries) {
      const field = e.emptyPeers;
      const item = itemOf(e.path);
      if (field === undefined || done.has(item)) continue;
      done.add(item);
      emit(
        "empty-peers",
        ri,
        item,
        `This rule ${
          e.deny ? "denies" : "grants"
        } nothing: its peer list is empty (${field}: []). An empty list selects no peer, unlike a missing one: list the peers${
          e.ports.length > 0
            ? `, or leave ${field} out to ${e.deny ? "deny" : "allow"} these ports for every peer`
            : ""
        }`,
      );
    }
  });
}

/** Lint warnings for compiled policies (also returns the translator's own warnings). */
export function lintPolicies(c: CompileResult): LintWarning[] {
  const out: LintWarning[] = [];
  const emit: Emit = (code, ruleIndex, path, message) => {
    const rule = c.spec.rules[ruleIndex]!;
    const at = c.locate(rule.policy, path);
    out.push({
      code,
      message,
      path,
      policy: policyName(c.spec.policies[rule.policy]),
      ...(at?.file ? { file: at.file } : {}),
      ...(at ? { line: at.line, column: at.column } : {}),
    });
  };
  lintOrSplit(c.spec.rules, emit);
  lintEmptySelectors(c, emit);
  lintDns(c, emit);
  lintFqdn(c, emit);
  lintDeadAllows(c, emit);
  lintL7Bypass(c, emit);
  lintEmptyPeers(c.spec.rules, emit);
  for (const w of c.warnings) {
    out.push({
      code: "translation",
      message: w.message,
      path: w.path,
      policy: w.policy ?? "",
      ...(w.file ? { file: w.file } : {}),
      ...(w.line !== undefined ? { line: w.line, column: w.column ?? 1 } : {}),
    });
  }
  return out;
}
