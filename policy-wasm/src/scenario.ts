// Scenario files ("policy tests"): namespaces, policies, endpoints and queries with expected
// verdicts, in YAML or JSON — the format `cilia policy test` runs and the browser imports and
// exports. loadScenario() validates with located errors; runScenario() evaluates every query
// with the engine. This module is browser compatible.

import { isScalar, LineCounter, parseAllDocuments } from "yaml";
import { z } from "zod";
import { obj } from "./schema.ts";
import { readDocuments } from "./documents.ts";
import { IssueSink } from "./issues.ts";
import { PolicyValidationError } from "./errors.ts";
import type { PathPart, SourceDocument } from "./documents.ts";
import { compilePolicies, type CompileResult, type PolicySource } from "./policies.ts";
import { SimCluster } from "./cluster.ts";
import { evaluateFlow, type FlowInput, type FlowResult } from "./flow.ts";
import { peerText, queryName, renderFlow } from "./flow_text.ts";
import type { PolicyEngine } from "./engine.ts";
import { DEFAULT_OPTIONS, type EngineOptions } from "./ir.ts";
import { KAFKA_API_KEYS } from "./protocols.ts";
import type { ValidationIssue } from "./errors.ts";

// Label values are strings in Kubernetes; numbers and booleans written unquoted in a scenario are
// read as their text.
const labels = z.record(
  z.string(),
  z.union([z.string(), z.number(), z.boolean()]).transform((v) => String(v)),
);
const peer = z.union([
  z.string().min(1),
  obj({ cidr: z.string() }),
  obj({ entity: z.string() }),
  obj({ endpoint: z.string() }),
], { error: () => "Expected an endpoint name, {cidr: IP} or {entity: name}" });

export const ScenarioSchema = obj({
  name: z.string().optional(),
  description: z.string().optional(),
  namespaces: z.array(obj({ name: z.string().min(1), labels: labels.optional() })).optional(),
  policies: z.array(z.union([z.string(), z.record(z.string(), z.unknown())])).default([]),
  endpoints: z.array(obj({
    name: z.string().min(1),
    namespace: z.string().optional(),
    labels: labels.optional(),
    ip: z.string().optional(),
    ipv6: z.string().optional(),
    ports: z.array(obj({
      name: z.string().min(1),
      port: z.number().int().min(1).max(65535),
      protocol: z.enum(["TCP", "UDP", "SCTP"]).default("TCP"),
    })).optional(),
    serviceAccount: z.string().optional(),
  })).default([]),
  queries: z.array(obj({
    name: z.string().optional(),
    from: peer,
    to: peer,
    port: z.number().int().min(0).max(65535).default(0),
    // Case-insensitive; ICMPv6 may be named explicitly (ICMP picks the family from the IPs).
    protocol: z.preprocess(
      (v) => (typeof v === "string" ? v.toUpperCase() : v),
      z.enum(["TCP", "UDP", "SCTP", "ICMP", "ICMPV6"], {
        error: () => "Expected protocol TCP, UDP, SCTP, ICMP or ICMPv6",
      }),
    ).default("TCP"),
    icmpType: z.number().int().min(0).max(255).optional(),
    http: obj({
      method: z.string().default("GET"),
      path: z.string().default("/"),
      host: z.string().optional(),
      headers: z.record(z.string(), z.string()).optional(),
    }).optional(),
    kafka: obj({
      apiKey: z.union([z.string(), z.number().int()]),
      apiVersion: z.number().int().optional(),
      clientID: z.string().optional(),
      topics: z.array(z.string()).optional(),
      topic: z.string().optional(),
    }).optional(),
    /** A DNS query (egress to a DNS server with `rules.dns`): the name asked for. */
    dns: obj({ name: z.string().min(1) }).optional(),
    expect: z.enum(["allowed", "denied"], { error: () => "Expected allowed or denied" }).optional(),
  })).default([]),
});
export type Scenario = z.infer<typeof ScenarioSchema>;

export interface LoadedScenario {
  scenario: Scenario;
  file?: string;
  /** Policy sources with their position in the scenario file. */
  sources: PolicySource[];
}

function policySources(
  text: string,
  scenario: Scenario,
  at: { file?: string | undefined; index: number },
): PolicySource[] {
  const lc = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: lc });
  const doc = Array.isArray(docs) ? docs[at.index] : undefined;
  const file = at.file;
  return scenario.policies.map((p, i) => {
    const where = `${file ?? "scenario"}#policies[${i}]`;
    if (typeof p !== "string") return { text: JSON.stringify(p), file: where };
    const node = doc?.getIn(["policies", i], true);
    if (!isScalar(node) || !node.range) return { text: p, file: file ?? "scenario" };
    const start = lc.linePos(node.range[0]);
    const block = node.type === "BLOCK_LITERAL" || node.type === "BLOCK_FOLDED";
    const firstLine = text.split("\n")[start.line] ?? "";
    const indent = block ? (firstLine.match(/^ */)?.[0].length ?? 0) : start.col - 1;
    return {
      text: p,
      ...(file ? { file } : {}),
      offset: { line: block ? start.line : start.line - 1, column: indent },
    };
  });
}

function validateScenario(doc: SourceDocument, text: string, file?: string): LoadedScenario {
  const v = doc.value as Record<string, unknown>;
  if (v && typeof v === "object" && "apiVersion" in v && "kind" in v) {
    // The kind as written when it is a plain name; quoted (control characters escaped) when it is
    // another string; never String() of a value, which throws for {toString: x}.
    const kind = typeof v.kind === "string" && /^[A-Za-z][\w.-]*$/.test(v.kind)
      ? v.kind
      : typeof v.kind === "string"
      ? JSON.stringify(v.kind)
      : "policy";
    throw new PolicyValidationError([{
      message:
        `This is a ${kind} document, not a scenario: validate it with "cilia policy validate", or list it under "policies:" in a scenario file`,
      path: "",
      ...(doc.locate([]) ?? {}),
      ...(file ? { file } : {}),
    }]);
  }
  const parsed = ScenarioSchema.safeParse(doc.value);
  if (!parsed.success) {
    const sink = new IssueSink(doc);
    for (const iss of parsed.error.issues) {
      const path = iss.path.map((p) => (typeof p === "symbol" ? String(p) : p)) as PathPart[];
      if (iss.code === "unrecognized_keys") {
        iss.keys.forEach((k, i) =>
          sink.error(path, iss.message.split("; ")[i] ?? `Unknown field "${k}"`, k)
        );
      } else sink.error(path, iss.message.replace(/^Invalid input: expected/, "Expected"));
    }
    throw new PolicyValidationError(sink.issues);
  }
  return {
    scenario: parsed.data,
    sources: policySources(text, parsed.data, { file, index: doc.index }),
    ...(file ? { file } : {}),
  };
}

/** Every scenario of a file (`---`-separated documents); throws PolicyValidationError. */
export function loadScenarios(text: string, file?: string): LoadedScenario[] {
  const { documents, issues } = readDocuments(text, file ? { file } : {});
  if (issues.length > 0) throw new PolicyValidationError(issues);
  if (documents.length === 0) {
    throw new PolicyValidationError([{
      message: "Empty scenario",
      path: "",
      ...(file ? { file } : {}),
    }]);
  }
  return documents.map((d) => validateScenario(d, text, file));
}

/** Parses and validates one scenario; throws PolicyValidationError with locations. */
export function loadScenario(text: string, file?: string): LoadedScenario {
  const all = loadScenarios(text, file);
  if (all.length > 1) {
    throw new PolicyValidationError([{
      message: "Expected one scenario document, got several",
      path: "",
      ...(file ? { file } : {}),
    }]);
  }
  return all[0]!;
}

export interface QueryOutcome {
  index: number;
  name: string;
  from: string;
  to: string;
  port: number;
  protocol: string;
  expect?: "allowed" | "denied";
  verdict: "allowed" | "denied";
  /** undefined when the query has no expectation. */
  pass?: boolean;
  reason: string;
  trace: string[];
  flow: FlowResult;
}

export interface ScenarioReport {
  name: string;
  file?: string;
  passed: number;
  failed: number;
  warnings: ValidationIssue[];
  results: QueryOutcome[];
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

export function runScenario(
  engine: PolicyEngine,
  loaded: LoadedScenario,
  options: EngineOptions = DEFAULT_OPTIONS,
): ScenarioReport {
  const { cluster, warnings } = prepareScenario(engine, loaded, options);
  const s = loaded.scenario;
  const results = s.queries.map((q, index): QueryOutcome => {
    const flow = evaluateFlow(cluster, engine, flowOf(q));
    const report = renderFlow(engine, flow);
    return {
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
    };
  });
  return {
    name: s.name ?? loaded.file ?? "scenario",
    ...(loaded.file ? { file: loaded.file } : {}),
    passed: results.filter((r) => r.pass === true).length,
    failed: results.filter((r) => r.pass === false).length,
    warnings,
    results,
  };
}
