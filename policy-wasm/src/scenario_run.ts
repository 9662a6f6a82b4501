// Running a loaded scenario: builds the simulated cluster, loads the policies into the engine and
// judges every query, each on its own — a query naming an unknown endpoint is reported with its
// line and the others still run. Also lints the policies' selector keys against the endpoints the
// scenario declares (key-typo). This module is browser compatible.

import { SimCluster } from "./cluster.ts";
import { evaluateFlow, type FlowInput, type FlowResult } from "./flow.ts";
import { peerText, queryName, renderFlow } from "./flow_text.ts";
import type { PolicyEngine } from "./engine.ts";
import { DEFAULT_OPTIONS, type EngineOptions } from "./ir.ts";
import { KAFKA_API_KEYS } from "./protocols.ts";
import { FlowInputError, type ValidationIssue } from "./errors.ts";
import { compilePolicies, type CompileResult } from "./policies.ts";
import { lintPolicies } from "./lint.ts";
import { suggest } from "./suggest.ts";
import type { LoadedScenario, Scenario } from "./scenario.ts";

export interface QueryOutcome {
  index: number;
  name: string;
  from: string;
  to: string;
  port: number;
  protocol: string;
  expect?: "allowed" | "denied" | "audited";
  verdict: "allowed" | "denied" | "audited";
  /** undefined when the query has no expectation. */
  pass?: boolean;
  reason: string;
  trace: string[];
  flow: FlowResult;
}

/** A query that could not be judged (an unknown endpoint, a bad IP): the others still run. */
export interface QueryError {
  index: number;
  message: string;
  file?: string;
  line?: number;
}

export interface ScenarioReport {
  name: string;
  file?: string;
  passed: number;
  failed: number;
  /** Translator warnings, and selector keys no endpoint of the scenario carries (key-typo). */
  warnings: ValidationIssue[];
  results: QueryOutcome[];
  errors: QueryError[];
}

function kafkaKey(k: string | number): number {
  if (typeof k === "number") return k;
  const v = KAFKA_API_KEYS[k.toLowerCase()];
  if (v === undefined) throw new RangeError(`Unknown Kafka apiKey "${k}"`);
  return v;
}

export function flowOf(q: Scenario["queries"][number]): FlowInput {
  return {
    from: q.from,
    to: q.to,
    port: q.port,
    protocol: q.protocol,
    ...(q.icmpType !== undefined ? { icmpType: q.icmpType } : {}),
    ...(q.http
      ? {
        http: {
          method: q.http.method,
          path: q.http.path,
          ...(q.http.host !== undefined ? { host: q.http.host } : {}),
          ...(q.http.headers ? { headers: q.http.headers } : {}),
        },
      }
      : {}),
    ...(q.kafka
      ? {
        kafka: {
          apiKey: kafkaKey(q.kafka.apiKey),
          ...(q.kafka.apiVersion !== undefined ? { apiVersion: q.kafka.apiVersion } : {}),
          ...(q.kafka.clientID !== undefined ? { clientID: q.kafka.clientID } : {}),
          topics: [...(q.kafka.topics ?? []), ...(q.kafka.topic ? [q.kafka.topic] : [])],
        },
      }
      : {}),
    ...(q.dns ? { dns: q.dns.name } : {}),
  };
}

/** Builds the simulated cluster and loads everything into the engine. */
export function prepareScenario(
  engine: PolicyEngine,
  loaded: LoadedScenario,
  options: EngineOptions = DEFAULT_OPTIONS,
): { cluster: SimCluster; warnings: ValidationIssue[]; compiled: CompileResult } {
  const s = loaded.scenario;
  const compiled = compilePolicies(loaded.sources, {
    clusterName: options.clusterName,
    regexCheck: (p) => engine.checkRegex(p),
  });
  const cluster = new SimCluster({
    ...(s.namespaces ? { namespaces: s.namespaces } : {}),
    endpoints: s.endpoints,
    clusterName: options.clusterName,
  });
  cluster.load(engine, compiled.spec, options);
  return { cluster, warnings: compiled.warnings, compiled };
}

/** The label keys the scenario's endpoints and namespaces carry (for the key-typo lint). */
function knownKeys(s: Scenario): Set<string> {
  const keys = new Set<string>();
  const bare = (k: string) => k.replace(/^(k8s|any|container):/, "");
  for (const e of s.endpoints) for (const k of Object.keys(e.labels ?? {})) keys.add(bare(k));
  return keys;
}

function keyWarnings(compiled: CompileResult, s: Scenario): ValidationIssue[] {
  return lintPolicies(compiled, { only: ["key-typo"], knownKeys: knownKeys(s) }).map((w) => ({
    message: w.message,
    path: w.path,
    policy: w.policy,
    code: w.code,
    ...(w.file ? { file: w.file } : {}),
    ...(w.line !== undefined ? { line: w.line, column: w.column ?? 1 } : {}),
  }));
}

/** The message of a query that cannot be judged, with the endpoint names when one is unknown. */
function queryErrorText(e: RangeError, s: Scenario): string {
  const m = /^Unknown endpoint "([^"]*)"$/.exec(e.message);
  if (!m) return e.message;
  const names = s.endpoints.map((ep) => ep.name);
  const hint = suggest(m[1]!, names);
  return `${e.message}: ${
    names.length === 0
      ? "the scenario declares no endpoints"
      : `expected one of ${names.join(", ")}`
  }${hint ? ` (did you mean "${hint}"?)` : ""}`;
}

export function runScenario(
  engine: PolicyEngine,
  loaded: LoadedScenario,
  options: EngineOptions = DEFAULT_OPTIONS,
): ScenarioReport {
  const { cluster, warnings, compiled } = prepareScenario(engine, loaded, options);
  const s = loaded.scenario;
  const results: QueryOutcome[] = [];
  const errors: QueryError[] = [];
  s.queries.forEach((q, index) => {
    let flow: FlowResult;
    try {
      flow = evaluateFlow(cluster, engine, flowOf(q));
    } catch (e) {
      if (!(e instanceof RangeError || e instanceof FlowInputError)) throw e;
      const line = loaded.queryLines?.[index];
      errors.push({
        index,
        message: `Query ${index + 1}: ${queryErrorText(e, s)}`,
        ...(loaded.file ? { file: loaded.file } : {}),
        ...(line !== undefined ? { line } : {}),
      });
      return;
    }
    const report = renderFlow(engine, flow);
    results.push({
      index,
      name: q.name ?? queryName(q, flow),
      from: peerText(q.from),
      to: peerText(q.to),
      port: flow.port,
      protocol: report.protocol,
      ...(q.expect ? { expect: q.expect, pass: q.expect === report.verdict } : {}),
      verdict: report.verdict,
      reason: report.reason,
      trace: report.trace,
      flow,
    });
  });
  return {
    name: s.name ?? loaded.file ?? "scenario",
    ...(loaded.file ? { file: loaded.file } : {}),
    passed: results.filter((r) => r.pass === true).length,
    failed: results.filter((r) => r.pass === false).length,
    warnings: [...warnings, ...keyWarnings(compiled, s)],
    results,
    errors,
  };
}
