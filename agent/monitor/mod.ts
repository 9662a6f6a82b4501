// The monitor's browser-compatible face for clients (the CLI, the web view): the flow record,
// its filters and the NDJSON line codecs. Nothing here reads the kernel or the agent.

export * from "./flow.ts";
export * from "./filter.ts";
export * from "./wire.ts";
export type { MonitorStats } from "./monitor.ts";
export { parsePacket } from "./_packet.ts";
