// `cilia policy validate` and `cilia policy lint`: offline, with the engine from policy-wasm.
// validate exits 1 with located errors; lint prints each footgun with its path, line and an
// explanation, and exits 1 when it found any.

import {
  compilePolicies,
  lintPolicies,
  type LintWarning,
  PolicyEngine,
  PolicyValidationError,
  type ValidationIssue,
} from "@cilia/policy-wasm";
import { readInputs } from "./files.ts";
import { type Format, renderModel, table, UsageError } from "./output.ts";

export interface ValidateReport {
  file: string;
  valid: boolean;
  policies: string[];
  issues: ValidationIssue[];
  warnings: ValidationIssue[];
}

function where(
  i: { file?: string | undefined; line?: number | undefined; column?: number | undefined },
): string {
  return [i.file, i.line !== undefined ? `${i.line}:${i.column ?? 1}` : undefined].filter(Boolean)
    .join(":");
}

export async function validateFiles(paths: string[]): Promise<ValidateReport[]> {
  if (paths.length === 0) throw new UsageError("policy validate: expected at least one FILE");
  const engine = await PolicyEngine.create();
  const out: ValidateReport[] = [];
  for (const f of await readInputs(paths)) {
    try {
      const c = compilePolicies({ text: f.text, file: f.path }, {
        regexCheck: (p) => engine.checkRegex(p),
      });
      engine.setPolicy(c.spec);
      out.push({
        file: f.path,
        valid: true,
        policies: c.spec.policies.map((p) =>
          `${p.kind} ${p.namespace ? p.namespace + "/" : ""}${p.name}`
        ),
        issues: [],
        warnings: c.warnings,
      });
    } catch (e) {
      if (!(e instanceof PolicyValidationError)) throw e;
      out.push({ file: f.path, valid: false, policies: [], issues: e.issues, warnings: [] });
    }
  }
  engine.close();
  return out;
}

export async function policyValidate(paths: string[], format: Format): Promise<number> {
  const reports = await validateFiles(paths);
  const bad = reports.filter((r) => !r.valid).length;
  if (format !== "table") {
    console.log(renderModel(reports, format));
    return bad > 0 ? 1 : 0;
  }
  for (const r of reports) {
    if (r.valid) {
      console.log(
        `${r.file}: valid (${r.policies.length} ${
          r.policies.length === 1 ? "policy" : "policies"
        })`,
      );
    }
    for (const i of r.issues) {
      console.error(`${where(i) || r.file}: error: ${i.message}${i.path ? ` (at ${i.path})` : ""}`);
    }
    for (const w of r.warnings) {
      console.error(
        `${where(w) || r.file}: warning: ${w.message}${w.path ? ` (at ${w.path})` : ""}`,
      );
    }
  }
  if (bad > 0) {
    console.error(
      `${bad} of ${reports.length} ${reports.length === 1 ? "file is" : "files are"} invalid`,
    );
  }
  return bad > 0 ? 1 : 0;
}

export async function policyLint(paths: string[], format: Format): Promise<number> {
  if (paths.length === 0) throw new UsageError("policy lint: expected at least one FILE");
  const engine = await PolicyEngine.create();
  const warnings: LintWarning[] = [];
  let invalid = 0;
  for (const f of await readInputs(paths)) {
    try {
      warnings.push(
        ...lintPolicies(compilePolicies({ text: f.text, file: f.path }, {
          regexCheck: (p) => engine.checkRegex(p),
        })),
      );
    } catch (e) {
      if (!(e instanceof PolicyValidationError)) throw e;
      invalid++;
      for (const i of e.issues) {
        console.error(
          `${where(i) || f.path}: error: ${i.message}${i.path ? ` (at ${i.path})` : ""}`,
        );
      }
    }
  }
  engine.close();
  if (format !== "table") console.log(renderModel(warnings, format));
  else if (warnings.length > 0) {
    console.log(table(warnings, [
      { header: "LOCATION", value: (w) => where(w) },
      { header: "CODE", value: (w) => w.code },
      { header: "PATH", value: (w) => w.path },
      { header: "WARNING", value: (w) => w.message },
    ]));
    console.log(`${warnings.length} ${warnings.length === 1 ? "warning" : "warnings"}`);
  } else if (invalid === 0) console.log("no warnings");
  return warnings.length > 0 || invalid > 0 ? 1 : 0;
}
