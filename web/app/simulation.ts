// The simulator's use of the policy engine: one PolicyEngine (the embedded policy.wasm), loaded
// with the workspace's policies and endpoints exactly as `cilia policy test` loads a scenario
// (prepareScenario), then asked for the reachability matrix, the scenario's queries and single
// flows. The matrix has a row and a column per endpoint, per CIDR the policies or queries name,
// for `world` and for the host (peers.ts). Verdicts come from the engine (evaluateFlow); reports,
// query names and explanations from renderFlow() and queryName(), as in the CLI; nothing here
// decides a verdict. Each outcome also names the YAML lines of what decided it
// (deciding_source.ts). No DOM. This module is browser compatible.

import {
  cidrPrefixesOf,
  compilePolicies,
  DEFAULT_OPTIONS,
  evaluateFlow,
  type FlowInput,
  flowOf,
  type FlowReport,
  lintPolicies,
  PolicyEngine,
  type PolicySource,
  PolicyValidationError,
  prepareScenario,
  queryName,
  renderFlow,
  type SimCluster,
  type ValidationIssue,
} from "../../policy-wasm/mod.ts";
import { scenarioOf, type ScenarioQuery, type Workspace } from "./model.ts";
import { type MatrixPeer, matrixPeers } from "./peers.ts";
import { DecidingSources, type SourceSpan } from "./deciding_source.ts";

export type { SourceSpan };

export type Protocol = "TCP" | "UDP" | "SCTP" | "ICMP";

/** The port and protocol the matrix is drawn for. */
export interface Probe {
  port: number;
  protocol: Protocol;
}

export interface Diagnostic {
  severity: "error" | "warning";
  message: string;
  path: string;
  line?: number | undefined;
  column?: number | undefined;
}

/** renderFlow()'s verdict, reason and trace (the lines `cilia policy trace` prints), and more. */
export interface FlowOutcome extends Pick<FlowReport, "verdict" | "reason" | "trace"> {
  /** Allowed, but L7 rules apply and no request was given: only L3/L4 was judged. */
  l7: boolean;
  /** The judged protocol number and port (ICMP: the type), for the query's name. */
  proto: number;
  port: number;
  /** The rules that decided (deny, allow, L7 rule) or the policy that made it default-deny. */
  sources: SourceSpan[];
}

export interface MatrixCell extends FlowOutcome {
  /** Peer names (MatrixPeer.name). */
  from: string;
  to: string;
  /** Neither side is an endpoint: no cilia policy applies (not judged). */
  na?: true;
}

export interface QueryRow {
  index: number;
  name: string;
  query: ScenarioQuery;
  expect?: "allowed" | "denied" | "audited" | undefined;
  outcome?: FlowOutcome;
  pass?: boolean;
  error?: string;
}

export interface RunResult {
  diagnostics: Diagnostic[];
  errors: number;
  policies: number;
  /** Why endpoints could not be loaded (bad IP, duplicate name), if so. */
  setupError?: string;
  /** Identity per endpoint, in table order. */
  identities: number[];
  /** The matrix's rows and columns: endpoints, CIDRs, world, host. */
  peers: MatrixPeer[];
  /** Rows = from, columns = to; undefined when the policies or endpoints are invalid. */
  matrix?: MatrixCell[][];
  queries: QueryRow[];
}

/** The file name diagnostics and explanations use for the editor's text. */
export const POLICIES_FILE = "policies.yaml";

export class Simulator {
  #engine: PolicyEngine;
  #cluster: SimCluster | undefined;
  #sources: DecidingSources | undefined;

  private constructor(engine: PolicyEngine) {
    this.#engine = engine;
  }

  /** `wasm`: the engine compiled by the caller (the page streams policy.wasm); default: the
   * bytes embedded in policy-wasm. */
  static async create(wasm?: WebAssembly.Module): Promise<Simulator> {
    return new Simulator(await PolicyEngine.create(wasm));
  }

  /** Loads the workspace into the engine and evaluates the matrix and every query. */
  run(w: Workspace, probe: Probe): RunResult {
    this.#cluster = undefined;
    this.#sources = undefined;
    const sources: PolicySource[] = [{ text: w.policies, file: POLICIES_FILE }];
    const result: RunResult = {
      diagnostics: [],
      errors: 0,
      policies: 0,
      identities: [],
      peers: [],
      queries: [],
    };
    const unnamed = w.endpoints.findIndex((e) => e.name.trim() === "");
    try {
      // Compiled here for the lint (which reports compile warnings too), then loaded exactly as
      // `cilia policy test` loads a scenario.
      const compiled = compilePolicies(sources, {
        clusterName: DEFAULT_OPTIONS.clusterName,
        regexCheck: (p) => this.#engine.checkRegex(p),
      });
      result.diagnostics.push(...lintPolicies(compiled).map((w) => diagnostic(w, "warning")));
      result.policies = compiled.spec.policies.length;
      const loaded = prepareScenario(this.#engine, { scenario: scenarioOf(w), sources });
      if (unnamed >= 0) throw new SyntaxError(`Endpoint ${unnamed + 1} has no name`);
      this.#cluster = loaded.cluster;
      this.#sources = new DecidingSources(this.#engine, loaded.compiled, POLICIES_FILE);
    } catch (e) {
      if (e instanceof PolicyValidationError) {
        result.diagnostics.push(...e.issues.map((i) => diagnostic(i, "error")));
        result.errors = e.issues.length;
      } else {
        result.setupError = e instanceof Error ? e.message : String(e);
      }
      return result;
    }
    const eps = this.#cluster.endpoints;
    result.identities = eps.map((e) => e.identity);
    result.peers = matrixPeers(eps, {
      cidrs: cidrPrefixesOf(this.#engine.spec),
      queries: w.queries,
    });
    // Endpoints by namespace/name: two namespaces may use one name.
    const refOf = (p: MatrixPeer, i: number) =>
      p.kind === "endpoint" ? `${eps[i]!.namespace}/${eps[i]!.name}` : p.ref;
    result.matrix = result.peers.map((from, i) =>
      result.peers.map((to, j): MatrixCell => {
        if (from.kind !== "endpoint" && to.kind !== "endpoint") {
          return { from: from.name, to: to.name, ...notJudged(probe), na: true };
        }
        return {
          from: from.name,
          to: to.name,
          ...this.#judge({ from: refOf(from, i), to: refOf(to, j), ...probe }),
        };
      })
    );
    result.queries = w.queries.map((q, index) => this.#query(q, index));
    return result;
  }

  /** Judges one flow against the last loaded workspace; undefined when that did not load. */
  flow(input: FlowInput): FlowOutcome | undefined {
    return this.#cluster ? this.#judge(input) : undefined;
  }

  #judge(input: FlowInput): FlowOutcome {
    const flow = evaluateFlow(this.#cluster!, this.#engine, input);
    const r = renderFlow(this.#engine, flow);
    const { verdict, reason, trace, proto, port } = r;
    const sources = this.#sources?.of(flow) ?? [];
    return { verdict, l7: r.allowed && r.l7Unevaluated, reason, trace, proto, port, sources };
  }

  #query(q: ScenarioQuery, index: number): QueryRow {
    const row: QueryRow = { index, name: q.name ?? queryName(q), query: q, expect: q.expect };
    try {
      row.outcome = this.#judge(flowOf(q));
      row.name = q.name ?? queryName(q, row.outcome);
      if (q.expect) row.pass = q.expect === row.outcome.verdict;
    } catch (e) {
      row.error = e instanceof Error ? e.message : String(e);
    }
    return row;
  }

  close(): void {
    this.#engine.close();
  }
}

function notJudged(probe: Probe): FlowOutcome {
  return {
    verdict: "allowed",
    l7: false,
    reason: "Neither side is an endpoint: no cilia policy applies",
    trace: [],
    proto: 0,
    port: probe.port,
    sources: [],
  };
}

function diagnostic(
  i: Pick<ValidationIssue, "message" | "path" | "line" | "column">,
  severity: Diagnostic["severity"],
): Diagnostic {
  return { severity, message: i.message, path: i.path, line: i.line, column: i.column };
}
