// The lint rules over the compiled IR, one function each, reporting through `emit` (lint.ts
// locates, filters and collects). Rules that compare rules with rules use lint_cover.ts's subject
// index, so a set of thousands of policies is not compared pair by pair. This module is browser
// compatible.

import type { CompileResult } from "./policies.ts";
import type { EntrySpec, RuleSpec, SelectorSpec } from "./ir.ts";
import { NS_LABEL } from "./selectors.ts";
import { policyName } from "./explain.ts";
import { coversPort, indexRules, portsCovered, selectorCovers } from "./lint_cover.ts";

export type Emit = (code: string, ruleIndex: number, path: string, message: string) => void;

const isWildcard = (e: EntrySpec) => e.peers.some((p) => p.selector.kind === "all");
export const itemOf = (path: string) => path.replace(/\.(toPorts|icmps)(\[\d+\])?$/, "");

export function lintOrSplit(c: CompileResult, emit: Emit): void {
  c.spec.rules.forEach((r, ri) => {
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

/** Could this peer be the cluster DNS (kube-dns in kube-system, or a DNS server by IP)? */
function mayBeDns(s: SelectorSpec): boolean {
  if (s.kind === "all" || s.kind === "cidr") return true;
  if (s.kind !== "labels") return false;
  if (s.requirements.some((q) => q.source === "reserved")) return false;
  const ns = s.requirements.find((q) => q.key === NS_LABEL && q.op === "In");
  return !ns || ns.values.includes("kube-system");
}

const isDnsAllow = (e: EntrySpec) =>
  e.direction === "egress" && !e.deny && e.ports.length > 0 && coversPort(e.ports, 17, 53) &&
  e.peers.some((p) => mayBeDns(p.selector));

function allowsDns(r: RuleSpec): boolean {
  return r.entries.some((e) =>
    e.direction === "egress" && !e.deny && coversPort(e.ports, 17, 53) &&
    e.peers.some((p) => mayBeDns(p.selector))
  );
}

/** An allow-DNS rule: it only allows egress to DNS, so selecting every endpoint is its point. */
const isAllowDnsRule = (r: RuleSpec) => r.entries.length > 0 && r.entries.every(isDnsAllow);

export function lintEmptySelectors(c: CompileResult, emit: Emit): void {
  c.spec.rules.forEach((r, ri) => {
    const p = c.spec.policies[r.policy]!;
    if (p.kind === "NetworkPolicy") return lintK8sAllowAll(r, ri, emit);
    const scope = p.kind === "CiliumNetworkPolicy"
      ? `every endpoint in namespace "${p.namespace}"`
      : "every endpoint in the cluster";
    if (r.subjectKind === "endpoint" && isEmptyScoped(r.subject) && !isAllowDnsRule(r)) {
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

/** NetworkPolicy `ingress: [{}]` / `egress: [{}]`: every peer, on every port. */
function lintK8sAllowAll(r: RuleSpec, ri: number, emit: Emit): void {
  const done = new Set<string>();
  for (const e of r.entries) {
    const item = e.path.replace(/\.(from|to|ports)(\[\d+\])?$/, "");
    if (e.deny || !isWildcard(e) || e.ports.length > 0 || done.has(item)) continue;
    done.add(item);
    emit(
      "allow-all",
      ri,
      item,
      `This ${e.direction} rule is empty ({}): it allows every peer — all pods, the host and the world — on every port. List "${
        e.direction === "ingress" ? "from" : "to"
      }" peers or "ports" to narrow it, or remove the rule if you meant to deny`,
    );
  }
}

/** Per egress-default-deny rule: does some rule that applies to all of its endpoints allow DNS? */
export function lintDns(c: CompileResult, emit: Emit): void {
  const dnsRules = indexRules(c.spec.rules, allowsDns);
  const done = new Set<string>();
  c.spec.rules.forEach((r, ri) => {
    if (r.subjectKind !== "endpoint" || !r.defaultDeny.egress) return;
    const key = JSON.stringify(r.subject);
    if (done.has(key)) return;
    done.add(key);
    if (dnsRules.candidates(r.subject).some((d) => selectorCovers(d.r.subject, r.subject))) return;
    emit(
      "dns-blocked",
      ri,
      r.path,
      `Egress is default-deny for the endpoints this rule selects and no rule allows them DNS (UDP port 53): name resolution will fail. Allow egress to kube-dns, e.g. toEndpoints k8s-app=kube-dns in kube-system with toPorts 53/UDP (and rules.dns if you use toFQDNs)`,
    );
  });
}

export function lintFqdn(c: CompileResult, emit: Emit): void {
  const hasDnsRule = c.spec.rules.some((r) => r.entries.some((e) => e.l7?.kind === "dns"));
  if (hasDnsRule) return;
  c.spec.rules.forEach((r, ri) => {
    for (const e of r.entries) {
      if (
        !e.peers.some((p) =>
          p.selector.kind === "labels" && p.selector.requirements.some((q) => q.source === "fqdn")
        )
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

export function lintDeadAllows(c: CompileResult, emit: Emit): void {
  const denyRules = indexRules(c.spec.rules, (r) => r.entries.some((e) => e.deny));
  c.spec.rules.forEach((r, ri) => {
    const candidates = denyRules.candidates(r.subject).filter((d) =>
      selectorCovers(d.r.subject, r.subject)
    ).sort((a, b) => a.ri - b.ri);
    if (candidates.length === 0) return;
    for (const e of r.entries) {
      if (e.deny || e.emptyPeers !== undefined) continue;
      const killer = candidates.flatMap((d) => d.r.entries.map((de) => ({ r: d.r, e: de }))).find(
        (d) =>
          d.e.deny && d.e.direction === e.direction && e.peers.every((p) =>
            d.e.peers.some((dp) =>
              (!dp.requiresApply ||
                (d.r.requires[e.direction === "ingress" ? "ingressDeny" : "egressDeny"] ?? [])
                    .length === 0) &&
              selectorCovers(dp.selector, p.selector)
            )
          ) && portsCovered(d.e.ports, e.ports),
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

export function lintL7Bypass(c: CompileResult, emit: Emit): void {
  const openers = indexRules(
    c.spec.rules,
    (r) => r.entries.some((e) => !e.deny && !e.l7 && isWildcard(e) && e.ports.length > 0),
  );
  c.spec.rules.forEach((r, ri) => {
    for (const e of r.entries) {
      if (e.deny || !e.l7 || e.emptyPeers !== undefined) continue;
      const opener = openers.candidates(r.subject).sort((a, b) => a.ri - b.ri)
        .filter((o) => selectorCovers(o.r.subject, r.subject))
        .flatMap((o) => o.r.entries.map((e2) => ({ r2: o.r, e2 })))
        .find(({ e2 }) =>
          !e2.deny && !e2.l7 && isWildcard(e2) && e2.direction === e.direction &&
          e2.ports.length > 0 &&
          e.ports.every((p) => coversPort(e2.ports, p.proto === 0 ? 6 : p.proto, p.port))
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

export function lintEmptyPeers(c: CompileResult, emit: Emit): void {
  c.spec.rules.forEach((r, ri) => {
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
