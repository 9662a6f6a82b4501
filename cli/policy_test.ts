// `cilia policy test FILE…`: runs scenario files — a table of queries with expectation and
// verdict per file, the decision chain of every failed query, then the closing line
// `N passed, N failed`; exit 1 on any failure. `-o json|yaml` adds each query's trace.

import {
  EngineError,
  type LoadedScenario,
  loadScenarios,
  PolicyEngine,
  PolicyValidationError,
  runScenario,
  type ScenarioReport,
} from "@cilia/policy-wasm";
import { readInputs } from "./files.ts";
import { type Format, renderModel, table, UsageError } from "./output.ts";

function summary(r: ScenarioReport) {
  return {
    name: r.name,
    file: r.file,
    passed: r.passed,
    failed: r.failed,
    results: r.results.map((q) => ({
      index: q.index,
      name: q.name,
      from: q.from,
      to: q.to,
      port: q.port,
      protocol: q.protocol,
      expect: q.expect,
      verdict: q.verdict,
      pass: q.pass,
      reason: q.reason,
      trace: q.trace,
    })),
  };
}

function errorLines(e: unknown, file: string): string[] {
  if (e instanceof PolicyValidationError) {
    return e.issues.map((i) => {
      const at = [i.file ?? file, i.line !== undefined ? `${i.line}:${i.column ?? 1}` : ""];
      return `${at.filter(Boolean).join(":")}: ${i.message}${i.path ? ` (at ${i.path})` : ""}`;
    });
  }
  if (e instanceof RangeError || e instanceof SyntaxError || e instanceof EngineError) {
    return [`${file}: ${e.message}`];
  }
  throw e;
}

/** Runs one scenario in a fresh engine, so nothing of one scenario leaks into the next. */
async function runOne(loaded: LoadedScenario): Promise<ScenarioReport> {
  const engine = await PolicyEngine.create();
  try {
    return runScenario(engine, loaded);
  } finally {
    engine.close();
  }
}

export async function policyTest(paths: string[], format: Format): Promise<number> {
  if (paths.length === 0) throw new UsageError("policy test: expected at least one scenario FILE");
  const reports: ReturnType<typeof summary>[] = [];
  let errors = 0;
  for (const f of await readInputs(paths)) {
    let scenarios: LoadedScenario[] = [];
    try {
      scenarios = loadScenarios(f.text, f.path);
    } catch (e) {
      errors++;
      for (const line of errorLines(e, f.path)) console.error(`error: ${line}`);
    }
    for (const loaded of scenarios) {
      try {
        const r = await runOne(loaded);
        reports.push(summary(r));
        if (format === "table") printTable(r);
      } catch (e) {
        errors++;
        for (const line of errorLines(e, f.path)) console.error(`error: ${line}`);
      }
    }
  }
  const passed = reports.reduce((n, r) => n + r.passed, 0);
  const failed = reports.reduce((n, r) => n + r.failed, 0);
  if (format !== "table") {
    console.log(renderModel({ passed, failed, errors, scenarios: reports }, format));
  } else console.log(`${passed} passed, ${failed} failed`);
  return failed > 0 || errors > 0 ? 1 : 0;
}

function printTable(r: ScenarioReport): void {
  console.log(`${r.name}${r.file && r.file !== r.name ? ` (${r.file})` : ""}`);
  console.log(table(r.results, [
    { header: "RESULT", value: (q) => (q.pass === undefined ? "-" : q.pass ? "pass" : "FAIL") },
    { header: "QUERY", value: (q) => q.name },
    { header: "EXPECT", value: (q) => q.expect ?? "-" },
    { header: "VERDICT", value: (q) => q.verdict },
    { header: "WHY", value: (q) => q.reason },
  ]));
  for (const q of r.results.filter((x) => x.pass === false)) {
    console.log(`\nFAIL ${q.name}: expected ${q.expect}, got ${q.verdict}`);
    for (const line of q.trace) console.log(`  ${line}`);
  }
  console.log("");
}
