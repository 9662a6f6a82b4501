// Explanations in words: the decision chain of a flow (which policies select each side, whether
// the direction is default-deny and why, which rule denied or allowed, the L7 outcome), in the
// spirit of `cilium policy trace`, plus a one-line reason. The same text is printed by the CLI
// and shown in the browser. This module is browser compatible.

import type { PolicyEngine } from "./engine.ts";
import type { FlowResult, SideResult } from "./flow.ts";
import type { PolicyRef } from "./ir.ts";
import { DROP_REASONS } from "./drop_reasons.generated.ts";
import { kafkaApiKeyName, protoPortText } from "./protocols.ts";

export function policyName(p: PolicyRef | undefined): string {
  if (!p) return "?";
  return `${p.kind} ${p.namespace !== undefined ? p.namespace + "/" : ""}${p.name}`;
}

function ruleName(engine: PolicyEngine, ruleIndex: number): string {
  const rule = engine.spec.rules[ruleIndex];
  if (!rule) return `rule ${ruleIndex}`;
  const p = engine.spec.policies[rule.policy];
  return `${policyName(p)} (${rule.path}${p?.mode === "audit" ? ", audit mode" : ""})`;
}

export function entryName(engine: PolicyEngine, entryIndex: number): string {
  const e = engine.entry(entryIndex);
  if (!e) return `entry ${entryIndex}`;
  const rule = engine.spec.rules[e.rule]!;
  return `${policyName(engine.spec.policies[rule.policy])} ${e.entry.path}`;
}

/** " (audit mode)" for an entry of an audit-mode policy: it decides nothing. */
function auditMark(engine: PolicyEngine, entryIndex: number): string {
  const rule = engine.spec.rules[engine.entry(entryIndex)?.rule ?? -1];
  return rule && engine.spec.policies[rule.policy]?.mode === "audit" ? " (audit mode)" : "";
}

const KAFKA_ANSWERED = new Set([0, 1, 2, 3, 8, 9]);

function describeRequest(f: FlowResult | undefined): string {
  const r = f?.request;
  if (r?.http) return `the request ${r.http.method} ${r.http.path}`;
  if (r?.kafka) {
    const topics = r.kafka.topics ?? [];
    return `the ${kafkaApiKeyName(r.kafka.apiKey)} request${
      topics.length > 0 ? ` for ${topics.join(", ")}` : ""
    }`;
  }
  if (r?.dns !== undefined) return `the DNS query for ${r.dns}`;
  return "the request";
}

function denialDetail(kind: string, f: FlowResult | undefined): string {
  if (kind === "HTTP") return "the proxy answers HTTP 403 Access denied";
  if (kind === "DNS") return "the DNS proxy answers REFUSED";
  const k = f?.request?.kafka;
  const several = (k?.topics?.length ?? 0) > 1
    ? " (a request naming several topics passes only when every topic is allowed)"
    : "";
  if (k && !KAFKA_ANSWERED.has(k.apiKey)) {
    return `the proxy drops the request without a response${several}`;
  }
  return `the proxy answers with Kafka error 29 TOPIC_AUTHORIZATION_FAILED${several}`;
}

/** Cilium adds an allow-all L7 rule to the L7 rules of a default-allow direction (§9). */
const OBSERVE_ONLY = "default-allow: L7 rules observe only";

function l7Line(engine: PolicyEngine, s: SideResult, f?: FlowResult): string | undefined {
  const r = s.result;
  if (r.verdict !== "redirect") return waivedLine(engine, s);
  const kind = engine.entry(r.l7Entries[0] ?? -1)?.entry.l7?.kind?.toUpperCase() ?? "L7";
  if (r.l7.status === "not-evaluated") {
    return `L7 ${kind} rules apply (${
      r.l7Entries.map((e) => entryName(engine, e)).join(", ")
    }); no request given, so only L3/L4 was judged${
      r.l7Entries.some((e) => engine.entry(e)?.entry.observeOnly) ? `; ${OBSERVE_ONLY}` : ""
    }`;
  }
  const by = engine.entry(r.l7.entry)?.entry;
  if (r.l7.status === "allowed" && by?.observeOnly && r.l7.rule === by.l7!.rules.length - 1) {
    // The allow-all rule translate_cilium.ts adds to an entry of a default-allow direction.
    return `L7 ${kind}: ${OBSERVE_ONLY}: ${
      entryName(engine, r.l7.entry)
    } is in a rule that is not default-deny for ${s.direction}, so ${
      describeRequest(f)
    } passes (the proxy only observes it)`;
  }
  if (r.l7.status === "allowed") {
    return `L7 ${kind}: ${describeRequest(f)} matches ${
      entryName(engine, r.l7.entry)
    } rules.${kind.toLowerCase()}[${r.l7.rule}]`;
  }
  return `L7 ${kind}: ${describeRequest(f)} matches none of the ${kind} rules that apply → ${
    denialDetail(kind, f)
  }`;
}

/** Plain allow although some matching entries carry L7 rules: they are waived for this peer. */
function waivedLine(engine: PolicyEngine, s: SideResult): string | undefined {
  const r = s.result;
  if (r.decision !== "allow-rule") return undefined;
  const withL7 = r.allows.filter((e) => engine.entry(e)?.entry.l7 !== undefined);
  if (withL7.length === 0) return undefined;
  return `L7 rules of ${
    withL7.map((e) => entryName(engine, e)).join(", ")
  } are not enforced for this peer: ${
    entryName(engine, r.entry)
  } allows the port without L7 rules, and L7 filtering is waived per peer`;
}

/** One sentence: why this side decided as it did. */
export function sideReason(engine: PolicyEngine, s: SideResult): string {
  const r = s.result;
  const who = `endpoint ${s.endpoint.namespace}/${s.endpoint.name}`;
  switch (r.decision) {
    case "enforcement-never":
      return "policy enforcement is disabled";
    case "allow-localhost":
      return `the host may always reach local endpoints (allow-localhost)`;
    case "deny-rule":
      return `denied by ${entryName(engine, r.entry)}`;
    case "allow-rule":
      return `allowed by ${entryName(engine, r.entry)}`;
    case "redirect":
      if (r.l7.status === "denied") {
        return `L7 rules deny the request (${entryName(engine, r.l7Entries[0] ?? -1)})`;
      }
      return `allowed at L3/L4 by ${entryName(engine, r.entry)}${
        r.l7.status === "allowed" ? " and its L7 rules" : ", L7 rules apply"
      }`;
    case "audit-deny-rule":
      return `would be denied by ${entryName(engine, r.entry)} (audit mode): passed`;
    case "audit-default-deny":
      return `would be denied (audit mode): ${who} is selected by ${
        ruleName(engine, r.defaultDenyRule)
      } for ${s.direction} and no rule allows it: passed`;
    case "default-deny":
      return `default deny: ${who} is selected by ${
        ruleName(engine, r.defaultDenyRule)
      } for ${s.direction} and no rule allows it`;
    case "default-allow":
      return r.selecting.length === 0
        ? `no policy selects ${who}, so ${s.direction} is allowed by default`
        : `${who} is not default-deny for ${s.direction} and no rule denies it`;
  }
  return r.verdict;
}

function sideLines(engine: PolicyEngine, s: SideResult, f?: FlowResult): string[] {
  const r = s.result;
  const head = `${
    s.direction === "egress" ? "Egress from" : "Ingress to"
  } ${s.endpoint.namespace}/${s.endpoint.name} (identity ${s.endpoint.identity}), peer ${s.peer.display} (identity ${s.peer.identity}):`;
  const out = [head];
  const ind = (t: string) => out.push(`  ${t}`);
  if (r.decision === "enforcement-never") {
    ind("policy enforcement is disabled (mode never)");
  } else {
    if (r.selecting.length === 0) ind(`no policy selects this endpoint`);
    for (const ri of r.selecting) {
      const rule = engine.spec.rules[ri];
      const has = rule?.entries.some((e) => e.direction === s.direction);
      const req = s.direction === "ingress"
        ? [...(rule?.requires.ingress ?? []), ...(rule?.requires.ingressDeny ?? [])]
        : [...(rule?.requires.egress ?? []), ...(rule?.requires.egressDeny ?? [])];
      const what = has
        ? ""
        : req.length > 0
        ? ` (only ${s.direction === "ingress" ? "fromRequires" : "toRequires"} for ${s.direction})`
        : ` (no ${s.direction} rules)`;
      ind(`selected by ${ruleName(engine, ri)}${what}`);
    }
    ind(
      r.defaultDeny
        ? `${s.direction} is default-deny (because of ${ruleName(engine, r.defaultDenyRule)})`
        : r.auditDefaultDeny
        ? `${s.direction} would be default-deny (because of ${
          ruleName(engine, r.defaultDenyRule)
        }), but only in audit mode`
        : `${s.direction} is not default-deny`,
    );
    for (const e of r.denies) {
      ind(`deny rule matches: ${entryName(engine, e)}${auditMark(engine, e)}`);
    }
    for (const e of r.allows) {
      ind(`allow rule matches: ${entryName(engine, e)}${auditMark(engine, e)}`);
    }
    if (r.denies.length === 0 && r.allows.length === 0) ind("no rule matches this peer and port");
    for (const e of r.peerOnly) ind(`(selects this peer on other ports: ${entryName(engine, e)})`);
    const requires = s.direction === "ingress" ? "fromRequires" : "toRequires";
    for (const e of r.narrowedByRequires) {
      ind(
        `(${
          entryName(engine, e)
        } selects this peer's labels, but the peer lacks labels that the ${requires} of the rules selecting this endpoint demand)`,
      );
    }
    const l7 = l7Line(engine, s, f);
    if (l7) ind(l7);
  }
  const denied = r.verdict === "deny" || r.l7.status === "denied";
  const audit = r.verdict === "audit";
  const reason = r.dropReason
    ? ` (${audit ? "would-be " : ""}drop reason ${r.dropReason}: ${
      DROP_REASONS.get(r.dropReason)?.[1] ?? "?"
    })`
    : "";
  ind(`=> ${denied ? "DENIED" : audit ? "AUDIT" : "ALLOWED"}${reason}: ${sideReason(engine, s)}`);
  return out;
}

/** Host policies (nodeSelector) are validated but the host firewall is not enforced yet. */
function hostNote(engine: PolicyEngine, identity: number): string {
  if (identity !== 1 || !engine.spec.rules.some((r) => r.subjectKind === "node")) return "";
  return " (policies with a nodeSelector are validated, but cilia does not enforce host policies yet)";
}

/** The full decision chain of a flow, line by line. */
export function explainFlow(engine: PolicyEngine, f: FlowResult): string[] {
  const out = [`Tracing ${f.from.display} => ${f.to.display} ${protoPortText(f.proto, f.port)}`];
  if (f.loopback) {
    out.push(
      `Loopback: ${f.from.display} talks to itself; the traffic stays inside the pod and no policy applies`,
    );
    out.push("Final verdict: ALLOWED");
    return out;
  }
  if (f.egress) out.push(...sideLines(engine, f.egress, f));
  else {out.push(
      `Egress: the source ${f.from.display} is not a cilia endpoint; no egress policy applies${
        hostNote(engine, f.from.identity)
      }`,
    );}
  if (f.ingress) out.push(...sideLines(engine, f.ingress, f));
  else {out.push(
      `Ingress: the destination ${f.to.display} is not a cilia endpoint; no ingress policy applies${
        hostNote(engine, f.to.identity)
      }`,
    );}
  out.push(`Final verdict: ${f.allowed ? (flowAudited(f) ? "AUDIT" : "ALLOWED") : "DENIED"}`);
  return out;
}

/** Allowed, but an audit-mode policy would have denied it on some side. */
export function flowAudited(f: FlowResult): boolean {
  return f.allowed &&
    (f.egress?.result.verdict === "audit" || f.ingress?.result.verdict === "audit");
}

/** One line: why the flow was allowed or denied. */
export function flowReason(engine: PolicyEngine, f: FlowResult): string {
  if (f.loopback) return "loopback: a pod talking to itself never reaches the datapath";
  if (f.deniedBy === "egress" && f.egress) return sideReason(engine, f.egress);
  if (f.deniedBy === "ingress" && f.ingress) return sideReason(engine, f.ingress);
  const parts = [f.egress, f.ingress].filter((s): s is SideResult => !!s).map((s) =>
    `${s.direction}: ${sideReason(engine, s)}`
  );
  return parts.length > 0 ? parts.join("; ") : "neither side is a cilia endpoint";
}
