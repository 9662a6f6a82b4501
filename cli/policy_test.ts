// `cilia policy test FILE…`: runs scenario files — a table of queries with expectation and
// verdict per file, the decision chain of every failed query, then the closing line
// `N passed, N failed`; exit 1 on any failure or error. `-o json|yaml` adds each query's trace
// and every error's message; `--junit FILE` also writes JUnit XML. Policies a scenario references
// by file (`{file: three-tier.yaml}`) are read relative to the scenario.

import {
  EngineError,
  type LoadedScenario,
  loadScenarios,
  PolicyEngine,
  PolicyValidationError,
  runScenario,
  type ScenarioReport,
} from "@cilia/policy-wasm";
import { readInputs, readPolicyFile } from "./files.ts";
import { type Format, renderModel, table, UsageError } from "./output.ts";
import { paint, paintVerdict, severity } from "./color.ts";
import { type JunitSuite, renderJunit } from "./junit.ts";

function summary(r: ScenarioReport) {
  return {
    name: r.name,
    file: r.file,
    passed: r.passed,
    failed: r.failed,
    warnings: r.warnings,
    errors: r.errors,
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

interface ErrorLine {
  file: string;
  line?: number | undefined;
  message: string;
}

function errorLines(e: unknown, file: string): ErrorLine[] {
  if (e instanceof PolicyValidationError) {
    return e.issues.map((i) => ({
      file: i.file ?? file,
      line: i.line,
      message: `${i.message}${i.path ? ` (at ${i.path})` : ""}`,
    }));
  }
  if (e instanceof RangeError || e instanceof SyntaxError || e instanceof EngineError) {
    return [{ file, message: e.message }];
  }
  throw e;
}

const at = (e: { file?: string | undefined; line?: number | undefined }) =>
  [e.file, e.line].filter((x) => x !== undefined).join(":");

/** Runs one scenario in a fresh engine, so nothing of one scenario leaks into the next. */
async function runOne(loaded: LoadedScenario): Promise<ScenarioReport> {
  const engine = await PolicyEngine.create();
  try {
    return runScenario(engine, loaded);
  } finally {
    engine.close();
  }
}

export async function policyTest(
  paths: string[],
  format: Format,
  o: { junit?: string | undefined } = {},
): Promise<number> {
  if (paths.length === 0) throw new UsageError("policy test: expected at least one scenario FILE");
  const reports: ReturnType<typeof summary>[] = [];
  const failures: ErrorLine[] = [];
  const suites: JunitSuite[] = [];
  const fail = (lines: ErrorLine[], name: string) => {
    failures.push(...lines);
    suites.push({ name, file: lines[0]?.file, cases: [{ name, error: lines[0]?.message ?? "" }] });
    for (const l of lines) console.error(`${at(l)}: ${severity("error")}: ${l.message}`);
  };
  for (const f of await readInputs(paths)) {
    let scenarios: LoadedScenario[] = [];
    try {
      scenarios = loadScenarios(f.text, f.path, { readPolicyFile });
    } catch (e) {
      fail(errorLines(e, f.path), f.path);
    }
    for (const loaded of scenarios) {
      try {
        const r = await runOne(loaded);
        reports.push(summary(r));
        suites.push(junitSuite(r));
        for (const w of r.warnings) {
          console.error(`${at(w) || f.path}: ${severity("warning")}: ${w.message}`);
        }
        for (const e of r.errors) console.error(`${at(e)}: ${severity("error")}: ${e.message}`);
        if (format === "table") printTable(r);
      } catch (e) {
        fail(errorLines(e, f.path), loaded.scenario.name ?? f.path);
      }
    }
  }
  const passed = reports.reduce((n, r) => n + r.passed, 0);
  const failed = reports.reduce((n, r) => n + r.failed, 0);
  const errors = failures.length + reports.reduce((n, r) => n + r.errors.length, 0);
  if (o.junit) await Deno.writeTextFile(o.junit, renderJunit(suites));
  if (format !== "table") {
    console.log(renderModel({ passed, failed, errors, failures, scenarios: reports }, format));
  } else {
    console.log(
      `${paint(passed > 0 ? "green" : "bold", `${passed} passed`)}, ${
        paint(failed > 0 ? "red" : "bold", `${failed} failed`)
      }${errors > 0 ? `, ${paint("red", `${errors} ${errors === 1 ? "error" : "errors"}`)}` : ""}`,
    );
  }
  return failed > 0 || errors > 0 ? 1 : 0;
}

function junitSuite(r: ScenarioReport): JunitSuite {
  return {
    name: r.name,
    file: r.file,
    cases: [
      ...r.results.map((q) => ({
        name: q.name,
        ...(q.pass === false
          ? { failure: { message: `expected ${q.expect}, got ${q.verdict}`, trace: q.trace } }
          : {}),
        ...(q.pass === undefined ? { skipped: true } : {}),
      })),
      ...r.errors.map((e) => ({ name: `query ${e.index + 1}`, error: e.message })),
    ],
  };
}

function printTable(r: ScenarioReport): void {
  console.log(paint("bold", `${r.name}${r.file && r.file !== r.name ? ` (${r.file})` : ""}`));
  console.log(table(r.results, [
    {
      header: "RESULT",
      value: (q) => (q.pass === undefined ? "-" : paintVerdict(q.pass ? "pass" : "FAIL")),
    },
    { header: "QUERY", value: (q) => q.name },
    { header: "EXPECT", value: (q) => q.expect ?? "-" },
    { header: "VERDICT", value: (q) => paintVerdict(q.verdict) },
    { header: "WHY", value: (q) => q.reason },
  ]));
  for (const q of r.results.filter((x) => x.pass === false)) {
    console.log(`\n${paint("red", "FAIL")} ${q.name}: expected ${q.expect}, got ${q.verdict}`);
    for (const line of q.trace) console.log(`  ${line}`);
  }
  console.log("");
}
