// `cilia policy validate` and `cilia policy lint`: offline, with the engine from policy-wasm.
// validate exits 1 with located errors; lint checks each file, then lints the valid ones as one
// set (as they are applied together) and prints each footgun with its path, line and an
// explanation. Lint exits 0 when clean, 1 when a file is invalid, 3 for warnings only. With
// `--live`, the running agent's endpoints are the known ones (key-typo: a selector key no endpoint
// carries), and without files its policies in force are linted.

import {
  compilePolicies,
  type CompileResult,
  lintPolicies,
  type LintWarning,
  PolicyEngine,
  PolicyValidationError,
  unknownLintRules,
  type ValidationIssue,
} from "@cilia/policy-wasm";
import { type InputFile, readInputs } from "./files.ts";
import { type Format, renderModel, table, UsageError } from "./output.ts";
import { paint, severity } from "./color.ts";
import { Progress } from "./progress.ts";
import { AgentClient, socketPath } from "./live_client.ts";

export interface CheckOptions {
  /** Lint rule ids to skip (`--disable`). */
  disable: string[];
  /** An input without policies is a warning, not an error (`--allow-empty`). */
  allowEmpty: boolean;
  /** Label keys the known endpoints carry (key-typo's "no endpoint carries" check). */
  knownKeys?: ReadonlySet<string>;
}

export interface ValidateReport {
  file: string;
  valid: boolean;
  policies: string[];
  issues: ValidationIssue[];
  warnings: ValidationIssue[];
}

type Located = { file?: string | undefined; line?: number | undefined; column?: number };

function where(i: Located): string {
  return [i.file, i.line !== undefined ? `${i.line}:${i.column ?? 1}` : undefined].filter(Boolean)
    .join(":");
}

function issueLine(i: ValidationIssue, file: string, kind: "error" | "warning"): string {
  return `${where(i) || file}: ${severity(kind)}: ${i.message}${
    i.path ? paint("dim", ` (at ${i.path})`) : ""
  }`;
}

const EMPTY =
  "The input has no policies: expected at least one CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy document (--allow-empty accepts it)";

/** In a directory: policy files, not the scenarios next to them (`*.scenario.yaml`). */
const POLICY_FILES = { ext: /^(?!.*\.scenario\.(ya?ml|json)$).*\.(ya?ml|json)$/ };

function disabledRules(o: CheckOptions): string[] {
  const ids = o.disable.flatMap((d) => d.split(",")).map((d) => d.trim()).filter(Boolean);
  const bad = unknownLintRules(ids);
  if (bad.length > 0) {
    throw new UsageError(
      `Unknown lint rule "${bad[0]}" in --disable: run "cilia help policy lint" for the rule ids`,
    );
  }
  return ids;
}

/** One file compiled alone: its result, or its errors (an empty file is one, unless allowed). */
function checkFile(f: InputFile, engine: PolicyEngine, o: CheckOptions): ValidateReport & {
  compiled?: CompileResult;
} {
  try {
    const c = compilePolicies({ text: f.text, file: f.path }, {
      regexCheck: (p) => engine.checkRegex(p),
    });
    engine.setPolicy(c.spec);
    const disabled = new Set(o.disable);
    const warnings = c.warnings.filter((w) => !disabled.has(w.code ?? "translation"));
    if (c.spec.policies.length === 0) {
      const issue = { message: EMPTY, path: "", file: f.path };
      if (!o.allowEmpty) {
        return { file: f.path, valid: false, policies: [], issues: [issue], warnings: [] };
      }
      warnings.push(issue);
    }
    return {
      file: f.path,
      valid: true,
      policies: c.spec.policies.map((p) =>
        `${p.kind} ${p.namespace ? p.namespace + "/" : ""}${p.name}`
      ),
      issues: [],
      warnings,
      compiled: c,
    };
  } catch (e) {
    if (!(e instanceof PolicyValidationError)) throw e;
    return { file: f.path, valid: false, policies: [], issues: e.issues, warnings: [] };
  }
}

export async function validateFiles(
  paths: string[],
  o: CheckOptions = { disable: [], allowEmpty: false },
): Promise<ValidateReport[]> {
  if (paths.length === 0) throw new UsageError("policy validate: expected at least one FILE");
  const files = await readInputs(paths, POLICY_FILES);
  const engine = await PolicyEngine.create();
  const progress = new Progress("validate");
  try {
    return files.map((f, i) => {
      progress.update("checking files", i, files.length);
      const { compiled: _, ...report } = checkFile(f, engine, o);
      return report;
    });
  } finally {
    progress.done();
    engine.close();
  }
}

export async function policyValidate(
  paths: string[],
  format: Format,
  o: CheckOptions = { disable: [], allowEmpty: false },
): Promise<number> {
  const reports = await validateFiles(paths, { ...o, disable: disabledRules(o) });
  const bad = reports.filter((r) => !r.valid).length;
  if (format !== "table") {
    console.log(renderModel(reports, format));
    return bad > 0 ? 1 : 0;
  }
  for (const r of reports) {
    if (r.valid) {
      const n = r.policies.length;
      console.log(
        `${r.file}: ${paint("green", "valid")} (${n} ${n === 1 ? "policy" : "policies"})`,
      );
    }
    for (const i of r.issues) console.error(issueLine(i, r.file, "error"));
    for (const w of r.warnings) console.error(issueLine(w, r.file, "warning"));
  }
  if (bad > 0) {
    console.error(
      `${bad} of ${reports.length} ${reports.length === 1 ? "file is" : "files are"} invalid`,
    );
  }
  return bad > 0 ? 1 : 0;
}

/** Lints the valid files as one set; errors (invalid files, conflicts across files) on stderr. */
async function lintSet(
  files: InputFile[],
  o: CheckOptions,
): Promise<{ warnings: LintWarning[]; invalid: number }> {
  const engine = await PolicyEngine.create();
  const progress = new Progress("lint");
  const valid: InputFile[] = [];
  const warnings: LintWarning[] = [];
  let invalid = 0;
  try {
    files.forEach((f, i) => {
      progress.update("checking files", i, files.length);
      const r = checkFile(f, engine, o);
      if (r.valid) valid.push(f);
      else invalid++;
      for (const e of r.issues) console.error(issueLine(e, f.path, "error"));
      if (r.valid && r.policies.length === 0) {
        for (const w of r.warnings) console.error(issueLine(w, f.path, "warning"));
      }
    });
    if (valid.length === 0) return { warnings, invalid };
    progress.update(`linting ${valid.length} ${valid.length === 1 ? "file" : "files"} as one set`);
    const set = compilePolicies(valid.map((f) => ({ text: f.text, file: f.path })), {
      regexCheck: (p) => engine.checkRegex(p),
    });
    warnings.push(
      ...lintPolicies(set, {
        disable: o.disable,
        ...(o.knownKeys ? { knownKeys: o.knownKeys } : {}),
      }),
    );
  } catch (e) {
    if (!(e instanceof PolicyValidationError)) throw e;
    // Each file is valid alone but not together (a duplicate name, conflicting L7 parsers).
    invalid++;
    for (const i of e.issues) console.error(issueLine(i, i.file ?? "", "error"));
  } finally {
    progress.done();
    engine.close();
  }
  return { warnings, invalid };
}

/** The label key of an identity label (`k8s:app=web` → `app`), as key-typo compares them. */
function labelKey(label: string): string {
  const bare = label.replace(/^(k8s|any|container):/, "");
  const eq = bare.indexOf("=");
  return eq < 0 ? bare : bare.slice(0, eq);
}

/**
 * `--live`: the label keys of the agent's endpoints and, when no files are given, the policies in
 * force as one input. No endpoints: nothing is known, so key-typo keeps to its offline checks.
 */
async function fromAgent(
  host: string | undefined,
  wantPolicies: boolean,
): Promise<{ knownKeys?: Set<string>; inputs: InputFile[] }> {
  const api = new AgentClient(socketPath(host));
  try {
    const endpoints = await api.request<{ identityLabels?: string[] }[]>("GET", "/v1/endpoint");
    const keys = new Set(endpoints.flatMap((e) => (e.identityLabels ?? []).map(labelKey)));
    if (endpoints.length === 0) {
      console.error("note: the agent has no endpoints, so key-typo cannot check keys against them");
    }
    const inputs: InputFile[] = [];
    if (wantPolicies) {
      const text = await api.request<string>("GET", "/v1/policy", { accept: "application/yaml" });
      inputs.push({ path: `unix://${api.path} (policies in force)`, text });
    }
    return { ...(endpoints.length > 0 ? { knownKeys: keys } : {}), inputs };
  } finally {
    api.close();
  }
}

export async function policyLint(
  paths: string[],
  format: Format,
  o: CheckOptions = { disable: [], allowEmpty: false },
  live?: { host: string | undefined },
): Promise<number> {
  if (paths.length === 0 && !live) {
    throw new UsageError("policy lint: expected at least one FILE (or --live)");
  }
  let opts: CheckOptions = { ...o, disable: disabledRules(o) };
  const inputs = paths.length > 0 ? await readInputs(paths, POLICY_FILES) : [];
  if (live) {
    const agent = await fromAgent(live.host, paths.length === 0);
    inputs.push(...agent.inputs);
    if (agent.knownKeys) opts = { ...opts, knownKeys: agent.knownKeys };
    if (paths.length === 0) opts = { ...opts, allowEmpty: true };
  }
  const { warnings, invalid } = await lintSet(inputs, opts);
  if (format !== "table") console.log(renderModel(warnings, format));
  else if (warnings.length > 0) {
    console.log(table(warnings, [
      { header: "LOCATION", value: (w) => where(w) },
      { header: "CODE", value: (w) => paint("yellow", w.code) },
      { header: "PATH", value: (w) => w.path },
      { header: "WARNING", value: (w) => w.message },
    ]));
    console.log(`${warnings.length} ${warnings.length === 1 ? "warning" : "warnings"}`);
  } else if (invalid === 0) console.log("no warnings");
  return invalid > 0 ? 1 : warnings.length > 0 ? 3 : 0;
}
