// Live commands that talk to the agent over its API (unix socket; -H/--host or CILIA_HOST):
// status, endpoint, identity, ipam, node, and the live policy commands (live_policy.ts). Every
// listing renders one model as a table, JSON or YAML.

import type { AgentStatus, EndpointRecord } from "@cilia/agent";
import { formatLabelList } from "@cilia/policy-wasm";
import type { Flags } from "./main.ts";
import { type Column, type Format, renderList, renderModel, UsageError } from "./output.ts";
import { AgentClient, AgentUnreachableError, socketPath } from "./live_client.ts";
import { policyDelete, policyGet, policyImport, policyTraceLive } from "./live_policy.ts";
import { monitorStatusLines } from "./monitor.ts";

export const LIVE_COMMANDS = new Set<string>([
  "status",
  "endpoint",
  "identity",
  "ipam",
  "node",
  "policy",
]);
export const LIVE_POLICY = new Set<string>(["import", "get", "delete", "trace"]);

type EndpointView = EndpointRecord & { policyRevision: number; state: string };
interface IdentityView {
  id: number;
  labels: string[];
  scope: string;
  refs?: number;
  cidr?: string;
}

const ENDPOINT_COLUMNS: Column<EndpointView>[] = [
  { header: "ID", value: (e) => e.id },
  { header: "NAMESPACE", value: (e) => e.namespace },
  { header: "NAME", value: (e) => e.name },
  { header: "IDENTITY", value: (e) => e.identity },
  { header: "IPV4", value: (e) => e.ipv4 },
  { header: "IPV6", value: (e) => e.ipv6 },
  { header: "REVISION", value: (e) => e.policyRevision },
  { header: "STATE", value: (e) => e.state },
  { header: "LABELS", value: (e) => formatLabelList(e.labels) },
];

const IDENTITY_COLUMNS: Column<IdentityView>[] = [
  { header: "ID", value: (i) => i.id },
  { header: "SCOPE", value: (i) => i.scope },
  { header: "REFS", value: (i) => i.refs },
  { header: "LABELS", value: (i) => i.labels.join(",") },
];

/** "30s", "500ms", "2m" or a number of seconds → milliseconds. */
function durationMs(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  if (m === null) throw new UsageError(`Invalid --timeout "${text}": expected e.g. 30s or 500ms`);
  return Number(m[1]) * ({ ms: 1, s: 1000, m: 60_000 }[m[2] ?? "s"] ?? 1000);
}

function uptime(s: number): string {
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return `${h > 0 ? `${h}h` : ""}${h > 0 || m > 0 ? `${m}m` : ""}${s % 60}s`;
}

async function waitHealthy(api: AgentClient, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (true) {
    try {
      await api.request("GET", "/v1/healthz");
      return;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    if (Date.now() >= deadline) {
      throw new Error(`The agent did not become healthy within ${timeoutMs / 1000} s: ${last}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

function statusText(s: AgentStatus, verbose = false): string {
  const cidrs = [s.node.podCidr, s.node.podCidrV6].filter(Boolean).join(", ");
  const lines = [
    `Node:        ${s.node.name}${cidrs ? ` (${cidrs})` : ""}`,
    `Health:      ${s.healthy ? "OK" : "FAILING"}${
      s.realised === false ? ", policy NOT in force everywhere (see warnings)" : ""
    }`,
    `KVStore:     ${s.kvstore.reachable ? "OK" : "UNREACHABLE"}  ${s.kvstore.name}`,
    `Identities:  ${s.identities.global} global (${s.identities.usedPercent}% of ${s.identities.range}), ${s.identities.local} local`,
    `Endpoints:   ${s.endpoints.count} (${s.endpoints.notReady} not ready)`,
    ...(s.cluster
      ? [
        `Cluster:     ${s.cluster.nodes} remote node${s.cluster.nodes === 1 ? "" : "s"} (${
          s.cluster.remote.map((n) => `${n.name} ${n.health}`).join(", ") || "none"
        }), ${s.cluster.remoteEndpoints} remote endpoints, routing ${s.node.routingMode}`,
      ]
      : []),
    `Policy:      revision ${s.policy.revision}${
      s.policy.realisedRevision !== undefined && s.policy.realisedRevision !== s.policy.revision
        ? ` (realised: ${s.policy.realisedRevision} on some endpoints)`
        : ""
    }, ${s.policy.count} polic${s.policy.count === 1 ? "y" : "ies"}`,
    ...s.ipam.map((p) =>
      `IPAM:        IPv${p.family} ${p.cidr}: ${p.allocated}/${p.capacity} allocated, gateway ${p.gateway}`
    ),
    ...(s.datapath
      ? [
        `Datapath:    ${
          s.datapath.mode === "kernel"
            ? `kernel, ${
              s.datapath.reused ? "programs reused from" : "programs loaded into"
            } ${s.datapath.bpffsRoot}`
            : "none (no enforcement)"
        }`,
      ]
      : []),
    ...monitorStatusLines(s.monitor, verbose),
    ...(verbose
      ? s.endpoints.problems.map((p) =>
        `  not ready: endpoint ${p.id} (${p.name})${p.since ? ` since ${p.since}` : ""}: ${p.error}`
      )
      : []),
    `Uptime:      ${uptime(s.uptimeSeconds)}`,
  ];
  for (const w of s.warnings) lines.push(`Warning:     ${w}`);
  return lines.join("\n");
}

async function status(api: AgentClient, v: Flags, f: Format): Promise<number> {
  try {
    if (v.wait) await waitHealthy(api, durationMs(v.timeout, 30_000));
    const s = await api.request<AgentStatus>("GET", "/v1/status");
    if (v.brief) console.log(s.healthy ? "OK" : s.warnings[0] ?? "FAILING");
    else console.log(f === "table" ? statusText(s, v.verbose === true) : renderModel(s, f));
    return s.healthy ? 0 : 1;
  } catch (err) {
    if (!v.brief || !(err instanceof AgentUnreachableError)) throw err;
    console.log(err.message);
    return 1;
  }
}

function one<T>(row: T, columns: Column<T>[], f: Format): string {
  return f === "table" ? renderList([row], columns, f) : renderModel(row, f);
}

async function ipam(
  api: AgentClient,
  sub: string | undefined,
  rest: string[],
  v: Flags,
  f: Format,
) {
  if (sub === undefined || sub === "list") {
    const r = await api.request<{ pools: unknown[]; allocations: Record<string, string>[] }>(
      "GET",
      "/v1/ipam",
    );
    console.log(
      f === "table"
        ? renderList(r.allocations, [
          { header: "IP", value: (a) => a.ip },
          { header: "FAMILY", value: (a) => `IPv${a.family}` },
          { header: "CIDR", value: (a) => a.cidr },
          { header: "OWNER", value: (a) => a.owner },
        ], f)
        : renderModel(r, f),
    );
    return 0;
  }
  if (sub === "allocate") {
    const family = v.family === undefined ? undefined : Number(v.family.replace(/^ipv/i, ""));
    if (family !== undefined && family !== 4 && family !== 6) {
      throw new UsageError(`Invalid --family "${v.family}": expected 4 or 6`);
    }
    const owner = v.owner ?? `cli:${Deno.pid}`;
    const a = await api.request<Record<string, string>>("POST", "/v1/ipam", {
      json: { owner, ...(family ? { family } : {}) },
    });
    console.log(f === "table" ? `${a.ip} (${a.cidr}, gateway ${a.gateway})` : renderModel(a, f));
    return 0;
  }
  if (sub === "release") {
    if (!rest[0]) throw new UsageError("ipam release: give the address to release");
    const a = await api.request<Record<string, string>>(
      "DELETE",
      `/v1/ipam/${encodeURIComponent(rest[0])}`,
    );
    console.log(f === "table" ? `Released ${a.ip}` : renderModel(a, f));
    return 0;
  }
  throw new UsageError(`Unknown command "ipam ${sub}": expected list, allocate or release`);
}

async function dispatch(
  api: AgentClient,
  [cmd, sub, rest, v, f]: [string, string | undefined, string[], Flags, Format],
): Promise<number> {
  const need = (what: string) => {
    if (!rest[0]) throw new UsageError(`${cmd} get: give the ${what}`);
    return encodeURIComponent(rest[0]);
  };
  switch (`${cmd} ${sub ?? "list"}`) {
    case "status list":
      return await status(api, v, f);
    case "endpoint list":
      console.log(
        renderList(await api.request<EndpointView[]>("GET", "/v1/endpoint"), ENDPOINT_COLUMNS, f),
      );
      return 0;
    case "endpoint get":
      console.log(
        one(
          await api.request<EndpointView>("GET", `/v1/endpoint/${need("endpoint id or name")}`),
          ENDPOINT_COLUMNS,
          f,
        ),
      );
      return 0;
    case "identity list":
      console.log(
        renderList(await api.request<IdentityView[]>("GET", "/v1/identity"), IDENTITY_COLUMNS, f),
      );
      return 0;
    case "identity get":
      console.log(
        one(
          await api.request<IdentityView>("GET", `/v1/identity/${need("identity")}`),
          IDENTITY_COLUMNS,
          f,
        ),
      );
      return 0;
    case "node list":
      console.log(renderList(await api.request<Record<string, unknown>[]>("GET", "/v1/node"), [
        { header: "NAME", value: (n) => String(n.name) },
        { header: "NODE-IP", value: (n) => String(n.ip ?? "") },
        { header: "ADDRESSES", value: (n) => (n.addresses as string[]).join(",") },
        {
          header: "HEALTH",
          value: (n) => {
            const lost = n.lost as { remainingSeconds: number } | undefined;
            return String(n.health ?? "") + (lost ? ` (kept ${lost.remainingSeconds}s more)` : "");
          },
        },
        {
          header: "REACHABLE",
          value: (n) => {
            const r = n.reachability as { reachable: boolean; rttMs?: number } | undefined;
            return r === undefined ? "" : r.reachable ? `yes (${r.rttMs} ms)` : "no";
          },
        },
        { header: "ENDPOINTS", value: (n) => String(n.endpoints ?? "") },
        { header: "POD-CIDRS", value: (n) => [n.podCidr, n.podCidrV6].filter(Boolean).join(",") },
        { header: "SELF", value: (n) => n.self ? "*" : "" },
      ], f));
      return 0;
    case "policy import":
      return await policyImport(api, rest, f);
    case "policy get":
      return await policyGet(api, rest, v, f);
    case "policy delete":
      return await policyDelete(api, rest, v, f);
    case "policy trace":
      return await policyTraceLive(api, v, f);
  }
  if (cmd === "ipam") return await ipam(api, sub, rest, v, f);
  throw new UsageError(
    `Unknown command "${[cmd, sub].filter(Boolean).join(" ")}": run "cilia --help"`,
  );
}

export async function runLive(
  cmd: string,
  sub: string | undefined,
  rest: string[],
  v: Flags,
  f: Format,
): Promise<number> {
  const api = new AgentClient(socketPath(v.host));
  try {
    return await dispatch(api, [cmd, sub, rest, v, f]);
  } finally {
    api.close();
  }
}
