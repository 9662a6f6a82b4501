// Where a verdict came from, in the editor's text: for each side of a flow that decided it, the
// YAML lines of the deciding rule (found through the verdict's cookie → policy and rule path →
// source span), the L7 rule that matched a request, or, for a default deny, the whole policy that
// selected the endpoint. Reads the engine's loaded spec and the compile result's locations;
// decides nothing. No DOM. This module is browser compatible.

import {
  type CompileResult,
  type FlowResult,
  type PolicyEngine,
  policyName,
  type SideResult,
} from "../../policy-wasm/mod.ts";

/** Lines of the editor's text that decided a verdict. */
export interface SourceSpan {
  line: number;
  endLine: number;
  /** What these lines are: `CiliumNetworkPolicy default/db spec.ingress[0]`. */
  label: string;
  /** The side whose policy they are. */
  direction: "egress" | "ingress";
}

type RulePath = { rule: number; path: string };

/** `spec.egress[1].toPorts[0]` → `spec.egress[1]`: the rule an entry was made from. */
function ruleItem(path: string): string {
  return path.replace(/\.(toPorts|icmps)(\[\d+\])?$/, "");
}

export class DecidingSources {
  #engine: PolicyEngine;
  #compiled: CompileResult;
  /** Only spans in this file (the editor's) are returned. */
  #file: string;
  /** Entry cookie → rule index and entry path, for the loaded spec. */
  #cookies = new Map<number, RulePath>();

  constructor(engine: PolicyEngine, compiled: CompileResult, file: string) {
    this.#engine = engine;
    this.#compiled = compiled;
    this.#file = file;
    engine.spec.rules.forEach((r, rule) => {
      for (const e of r.entries) this.#cookies.set(e.cookie, { rule, path: e.path });
    });
  }

  /** The lines that decided a flow: of the side that denied it, else of both sides. */
  of(f: FlowResult): SourceSpan[] {
    const sides = f.deniedBy ? [f[f.deniedBy]] : [f.egress, f.ingress];
    return sides.flatMap((s) => (s ? this.#side(s) : []));
  }

  #span(rule: number, path: string, s: SideResult): SourceSpan[] {
    const spec = this.#engine.spec;
    const policy = spec.rules[rule]?.policy;
    if (policy === undefined) return [];
    const at = this.#compiled.span(policy, path);
    if (!at || at.file !== this.#file) return [];
    const label = `${policyName(spec.policies[policy])}${path ? " " + path : ""}`;
    return [{ line: at.line, endLine: at.endLine, label, direction: s.direction }];
  }

  /** The deciding entry: by the verdict's cookie, else by the engine's entry index. */
  #entry(index: number, cookie?: number): RulePath | undefined {
    const byCookie = cookie ? this.#cookies.get(cookie) : undefined;
    if (byCookie) return byCookie;
    const e = this.#engine.entry(index);
    return e ? { rule: e.rule, path: e.entry.path } : undefined;
  }

  #side(s: SideResult): SourceSpan[] {
    const r = s.result;
    switch (r.decision) {
      case "deny-rule":
      case "allow-rule":
      case "audit-deny-rule":
      case "redirect": {
        if (r.decision === "redirect" && r.l7.status === "denied") {
          // No L7 rule matched: the entries whose L7 rules apply.
          return r.l7Entries.flatMap((i) => {
            const e = this.#entry(i);
            return e ? this.#span(e.rule, ruleItem(e.path), s) : [];
          });
        }
        const e = this.#entry(r.entry, r.cookie);
        if (!e) return [];
        const l7 = r.decision === "redirect" && r.l7.status === "allowed"
          ? this.#engine.entry(r.l7.entry)
          : undefined;
        // The rule item (peers and ports), and the L7 rule that matched the request.
        return [
          ...this.#span(e.rule, ruleItem(e.path), s),
          ...(l7?.entry.l7
            ? this.#span(l7.rule, `${l7.entry.path}.rules.${l7.entry.l7.kind}[${r.l7.rule}]`, s)
            : []),
        ];
      }
      case "default-deny":
      case "audit-default-deny":
        // The policy that selected the endpoint and made the direction default-deny.
        return r.defaultDenyRule >= 0 ? this.#span(r.defaultDenyRule, "", s) : [];
    }
    return [];
  }
}
