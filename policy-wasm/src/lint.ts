// `cilia policy lint`: warnings for known footguns over a set of compiled policies (lint the set
// that is applied together, not file by file), each with the YAML path, the line and an
// explanation. Works on the compiled IR (so it sees policies exactly as the engine does) and
// reports at source locations. The rules live in lint_rules.ts and lint_keys.ts; this module
// runs them, locates their findings and drops the silenced ones: per run (`disable`) and per
// policy (the annotation `cilia.io/lint-ignore: rule-id[,rule-id]`). This module is browser
// compatible.

import type { CompileResult } from "./policies.ts";
import { policyName } from "./explain.ts";
import {
  type Emit,
  lintDeadAllows,
  lintDns,
  lintEmptyPeers,
  lintEmptySelectors,
  lintFqdn,
  lintL7Bypass,
  lintOrSplit,
} from "./lint_rules.ts";
import { lintKeys } from "./lint_keys.ts";

/** Every lint rule id with what it finds (for help pages and `--disable` checks). */
export const LINT_RULES = {
  "or-split": 'an extra "-" splits one rule into an L3-only rule OR-ed with an L4-only rule',
  "empty-selector": "a {} selector that selects every endpoint (of the namespace, or the cluster)",
  "allow-all": "a NetworkPolicy rule {} that allows every peer on every port",
  "dns-blocked": "egress default-deny without any rule allowing DNS (port 53)",
  "fqdn-no-dns": "toFQDNs without a DNS L7 rule, so the FQDN selector never learns IPs",
  "dead-allow": "an allow that a deny of the same subject always overrides",
  "l7-bypassed": "L7 rules on a port that an L4-only rule opens to every peer",
  "empty-peers": "an explicitly empty peer list (fromEndpoints: []): the rule grants nothing",
  "key-typo": "a selector label key that selects nothing: unknown source, near-miss, no endpoint",
  "empty-direction": "an explicitly empty ingress: [] or egress: [] that is NOT default-deny",
  "cidr-host-bits": "a CIDR with host bits set (10.1.0.1/16), read as its network",
  "translation": "other warnings of the translator",
} as const;

export type LintCode = keyof typeof LINT_RULES;

export const LINT_IGNORE_ANNOTATION = "cilia.io/lint-ignore";

export interface LintWarning {
  code: LintCode;
  message: string;
  path: string;
  policy: string;
  file?: string;
  line?: number;
  column?: number;
}

export interface LintOptions {
  /** Rule ids not to run. */
  disable?: readonly string[];
  /** Only these rule ids (e.g. ["key-typo"] where the endpoints are known). */
  only?: readonly string[];
  /** Label keys the known endpoints carry: enables key-typo's "no endpoint carries" check. */
  knownKeys?: ReadonlySet<string>;
}

/** The unknown ids among `ids`, for a usage error. */
export function unknownLintRules(ids: readonly string[]): string[] {
  return ids.filter((id) => !Object.hasOwn(LINT_RULES, id));
}

/** Rule ids a policy's `cilia.io/lint-ignore` annotation silences ("*" silences all). */
function ignored(c: CompileResult, policy: number): Set<string> {
  const text = c.annotations(policy)[LINT_IGNORE_ANNOTATION];
  return new Set((text ?? "").split(",").map((s) => s.trim()).filter(Boolean));
}

const RUNS: [LintCode, (c: CompileResult, emit: Emit, o: LintOptions) => void][] = [
  ["or-split", lintOrSplit],
  ["empty-selector", lintEmptySelectors],
  ["dns-blocked", lintDns],
  ["fqdn-no-dns", lintFqdn],
  ["dead-allow", lintDeadAllows],
  ["l7-bypassed", lintL7Bypass],
  ["empty-peers", lintEmptyPeers],
  ["key-typo", (c, emit, o) => lintKeys(c, emit, o.knownKeys)],
];

/** Lint warnings for compiled policies (also returns the translator's own warnings). */
export function lintPolicies(c: CompileResult, opts: LintOptions = {}): LintWarning[] {
  const off = new Set(opts.disable ?? []);
  const on = (code: string) => !off.has(code) && (!opts.only || opts.only.includes(code));
  const ignores = c.spec.policies.map((_, i) => ignored(c, i));
  const silenced = (policy: number | undefined, code: string) =>
    policy !== undefined && (ignores[policy]?.has(code) || ignores[policy]?.has("*"));
  const out: LintWarning[] = [];
  const emit: Emit = (code, ruleIndex, path, message) => {
    const rule = c.spec.rules[ruleIndex]!;
    if (!on(code) || silenced(rule.policy, code)) return;
    const at = c.locate(rule.policy, path);
    out.push({
      code: code as LintCode,
      message,
      path,
      policy: policyName(c.spec.policies[rule.policy]),
      ...(at?.file ? { file: at.file } : {}),
      ...(at ? { line: at.line, column: at.column } : {}),
    });
  };
  for (const [code, run] of RUNS) if (on(code)) run(c, emit, opts);
  for (const w of c.warnings) {
    const code = (w.code ?? "translation") as LintCode;
    const policy = c.spec.policies.findIndex((p) => p.name === w.policy && p.file === w.file);
    if (!on(code) || silenced(policy < 0 ? undefined : policy, code)) continue;
    out.push({
      code,
      message: w.message,
      path: w.path,
      policy: w.policy ?? "",
      ...(w.file ? { file: w.file } : {}),
      ...(w.line !== undefined ? { line: w.line, column: w.column ?? 1 } : {}),
    });
  }
  return out;
}
