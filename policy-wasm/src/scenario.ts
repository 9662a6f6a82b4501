// Scenario files ("policy tests"): namespaces, policies, endpoints and queries with expected
// verdicts, in YAML or JSON — the format `cilia policy test` runs and the browser imports and
// exports. loadScenario() validates with located errors; a policy may be a reference to a file
// (`{file: ../three-tier.yaml}`, relative to the scenario) that the caller's `readPolicyFile`
// reads. runScenario() (scenario_run.ts) evaluates every query with the engine. This module is
// browser compatible.

import { isScalar, LineCounter, parseAllDocuments } from "yaml";
import { z } from "zod";
import { obj } from "./schema.ts";
import { readDocuments } from "./documents.ts";
import { IssueSink } from "./issues.ts";
import { PolicyValidationError } from "./errors.ts";
import type { PathPart, SourceDocument } from "./documents.ts";
import type { PolicySource } from "./policies.ts";

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
  // `- file: path` entries are read by loadScenarios' readPolicyFile (relative to the scenario).
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
    expect: z.enum(["allowed", "denied", "audited"], {
      error: () => "Expected allowed, denied or audited",
    }).optional(),
  })).default([]),
});
export type Scenario = z.infer<typeof ScenarioSchema>;

export interface LoadedScenario {
  scenario: Scenario;
  file?: string;
  /** Policy sources with their position in the scenario file. */
  sources: PolicySource[];
  /** Line of each query in the scenario file, when known. */
  queryLines?: (number | undefined)[];
}

/** Reads a policy file a scenario references; `from` is the scenario's own file name. */
export type ReadPolicyFile = (path: string, from: string | undefined) => PolicySource;

export interface LoadOptions {
  /** Without it, a `{file: …}` policy is an error (the browser has no files). */
  readPolicyFile?: ReadPolicyFile;
}

/** `{file: "x.yaml"}` (and nothing else) → "x.yaml". */
function fileRef(p: unknown): string | undefined {
  if (p === null || typeof p !== "object" || Array.isArray(p)) return undefined;
  const keys = Object.keys(p);
  const f = (p as { file?: unknown }).file;
  return keys.length === 1 && typeof f === "string" ? f : undefined;
}

function policySources(
  text: string,
  scenario: Scenario,
  at: { file?: string | undefined; index: number; doc: SourceDocument; read?: ReadPolicyFile },
): PolicySource[] {
  const lc = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: lc });
  const doc = Array.isArray(docs) ? docs[at.index] : undefined;
  const file = at.file;
  const sink = new IssueSink(at.doc);
  const out = scenario.policies.map((p, i): PolicySource => {
    const where = `${file ?? "scenario"}#policies[${i}]`;
    const ref = fileRef(p);
    if (ref !== undefined) return readRef(ref, { at, sink, path: ["policies", i] });
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
  if (sink.failed) throw new PolicyValidationError(sink.issues);
  return out;
}

function readRef(
  ref: string,
  o: {
    at: { file?: string | undefined; read?: ReadPolicyFile };
    sink: IssueSink;
    path: PathPart[];
  },
): PolicySource {
  if (!o.at.read) {
    o.sink.error(
      o.path,
      `Cannot read policy file "${ref}" here: file references work with "cilia policy test"; paste the policy instead`,
      "file",
    );
    return { text: "" };
  }
  try {
    return o.at.read(ref, o.at.file);
  } catch (e) {
    o.sink.error(o.path, (e as Error).message, "file");
    return { text: "" };
  }
}

function validateScenario(
  doc: SourceDocument,
  text: string,
  at: { file?: string | undefined; read?: ReadPolicyFile },
): LoadedScenario {
  const file = at.file;
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
    sources: policySources(text, parsed.data, { ...at, index: doc.index, doc }),
    queryLines: parsed.data.queries.map((_, i) => doc.locate(["queries", i])?.line),
    ...(file ? { file } : {}),
  };
}

/** Every scenario of a file (`---`-separated documents); throws PolicyValidationError. */
export function loadScenarios(
  text: string,
  file?: string,
  opts: LoadOptions = {},
): LoadedScenario[] {
  const { documents, issues } = readDocuments(text, file ? { file } : {});
  if (issues.length > 0) throw new PolicyValidationError(issues);
  if (documents.length === 0) {
    throw new PolicyValidationError([{
      message: "The scenario file is empty: expected name, policies, endpoints and queries",
      path: "",
      ...(file ? { file } : {}),
    }]);
  }
  const read = opts.readPolicyFile;
  return documents.map((d) => validateScenario(d, text, { file, ...(read ? { read } : {}) }));
}

/** Parses and validates one scenario; throws PolicyValidationError with locations. */
export function loadScenario(
  text: string,
  file?: string,
  opts: LoadOptions = {},
): LoadedScenario {
  const all = loadScenarios(text, file, opts);
  if (all.length > 1) {
    throw new PolicyValidationError([{
      message: "Expected one scenario document, got several",
      path: "",
      ...(file ? { file } : {}),
    }]);
  }
  return all[0]!;
}

export {
  flowOf,
  prepareScenario,
  type QueryError,
  type QueryOutcome,
  runScenario,
  type ScenarioReport,
} from "./scenario_run.ts";
