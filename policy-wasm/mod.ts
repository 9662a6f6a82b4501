// The public entry of cilia's policy engine: policy language (parse, validate, translate), the
// WASM engine, offline evaluation (simulated cluster, flows, scenarios) and explanations. Used by
// the agent, the CLI, the browser and the npm package. This module is browser compatible.

export * from "./src/ir.ts";
export * from "./src/errors.ts";
export {
  type CompileOptions,
  compilePolicies,
  type CompileResult,
  POLICY_MODE_ANNOTATION,
  type PolicySource,
  validatePolicies,
} from "./src/policies.ts";
export type { ServiceRef } from "./src/translate_services.ts";
export { PolicyEngine } from "./src/engine.ts";
export type { HttpVerdict } from "./src/http_verdict.ts";
export { REGEX_SET_MAX, type RegexSet } from "./src/regex_set.ts";
export { engineBuildId } from "./src/wasm.ts";
export type {
  HttpRequest,
  KafkaRequest,
  MapState,
  MapStateEntry,
  QueryInput,
  QueryResult,
  Verdict,
} from "./src/query_codec.ts";
export type { IpcacheEntry } from "./src/encode.ts";
export {
  type EndpointInput,
  type NamespaceInput,
  SimCluster,
  type SimEndpoint,
} from "./src/cluster.ts";
export {
  evaluateFlow,
  type FlowInput,
  type FlowResult,
  type PeerLookup,
  type PeerRef,
  resolvePeer,
  type SideResult,
} from "./src/flow.ts";
export { entryName, explainFlow, flowAudited, flowReason, policyName } from "./src/explain.ts";
export {
  type FlowReport,
  peerText,
  queryName,
  type QueryText,
  renderFlow,
  type SideReport,
} from "./src/flow_text.ts";
export { formatLabelList, parseHeaderLines, parseLabelList } from "./src/label_text.ts";
export {
  flowOf,
  type LoadedScenario,
  loadScenario,
  loadScenarios,
  prepareScenario,
  type QueryOutcome,
  runScenario,
  type Scenario,
  type ScenarioReport,
  ScenarioSchema,
} from "./src/scenario.ts";
export {
  cidrIdentityLabels,
  cidrPrefixesOf,
  DEFAULT_LABEL_FILTER,
  LabelFilter,
  LOCAL_IDENTITY_BASE,
  podIdentityLabels,
  RESERVED_BY_NAME,
  RESERVED_IDENTITIES,
} from "./src/labels.ts";
export {
  canonicalPrefix,
  formatAddress,
  formatPrefix,
  parseAddress,
  parsePrefix,
  type Prefix,
  prefixContains,
} from "./src/cidr.ts";
export { DROP_POLICY, DROP_REASONS } from "./src/drop_reasons.generated.ts";
export {
  KAFKA_API_KEYS,
  kafkaApiKeyName,
  PROTOCOL_NUMBERS,
  protocolName,
  protoPortText,
} from "./src/protocols.ts";
export { decodeBase64, encodeBase64, encodeBase64Url } from "./src/base64.ts";
export {
  LINT_IGNORE_ANNOTATION,
  LINT_RULES,
  type LintCode,
  type LintOptions,
  lintPolicies,
  type LintWarning,
  unknownLintRules,
} from "./src/lint.ts";
export {
  type ObservedConnection,
  type ObservedPeer,
  type ObservedTraffic,
  observeFlows,
  readFlowLines,
} from "./src/observed.ts";
export { clusterOfConnections, type ObservedCluster } from "./src/observed_cluster.ts";
export {
  connectionText,
  flowInputOf,
  type ReplayChange,
  type ReplayEntry,
  type ReplayReport,
  type ReplaySummary,
  replaySummaryText,
  replayTraffic,
} from "./src/replay.ts";
export {
  policiesYaml,
  type PolicyDocument,
  suggestPolicies,
  type SuggestResult,
} from "./src/suggest_flows.ts";
export { scenarioYaml, suggestScenario } from "./src/suggest_scenario.ts";
