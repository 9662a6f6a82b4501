/**
 * The agent's public entry: the Agent object, its configuration, the API app factory, and the
 * datapath sink interface that the kernel datapath implements. The CLI imports only API types.
 */

export { Agent, type AgentOptions } from "./agent.ts";
export { type AgentConfig, loadConfig, resolveConfig } from "./config.ts";
export { createApi } from "./api/app.ts";
export { type ApiServer, serveApi } from "./api/server.ts";
export type { ErrorBody } from "./api/errors.ts";
export type { AgentStatus } from "./status.ts";
export {
  type DatapathEndpoint,
  type DatapathSink,
  type EndpointFlags,
  NullSink,
  type PolicyChange,
  RecordingSink,
} from "./endpoint/datapath_sink.ts";
export type { EndpointRecord, EndpointSpec } from "./endpoint/spec.ts";
export type { ResolvedPolicy } from "./endpoint/regenerator.ts";
export { Logger } from "./log.ts";
