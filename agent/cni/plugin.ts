/**
 * The CNI plugin's commands (spec 1.0.0; GC and STATUS from 1.1.0): VERSION is answered here,
 * everything else is asked of the agent over its unix socket (`agentSocket` in the network
 * configuration) — the agent builds the interfaces and the endpoint. The result is printed in
 * the configuration's CNI version; a failure is the spec's error object with exit code 1. It
 * touches no network device itself.
 */

import {
  CniError,
  type Command,
  compareVersions,
  DEFAULT_AGENT_SOCKET,
  type Invocation,
  labelsOf,
  type NetworkConfig,
  parseEnvironment,
  parseNetworkConfig,
  SUPPORTED_VERSIONS,
} from "./config.ts";
import { AgentConnection, type RequestTiming } from "./client.ts";
import { enqueueDelete } from "./delete_queue.ts";
import { CNI_ERRORS, type CniAddResponse, type CniResult } from "./protocol.ts";
import type { CniAddRequest } from "./types.ts";

const socketOf = (conf: NetworkConfig) => conf.agentSocket ?? DEFAULT_AGENT_SOCKET;

export interface PluginOutput {
  /** 0 on success, 1 with an error object on stdout. */
  code: number;
  stdout: string;
}

const json = (v: unknown) => JSON.stringify(v) + "\n";

/**
 * The result in the configuration's version: interfaces carry `mtu` from 1.1.0 on, and before
 * 1.0.0 every IP names its family.
 */
export function convertResult(r: CniResult, version: string): Record<string, unknown> {
  const interfaces = compareVersions(version, "1.1.0") >= 0
    ? r.interfaces
    : r.interfaces.map(({ mtu: _mtu, ...i }) => i);
  if (compareVersions(version, "1.0.0") >= 0) return { ...r, cniVersion: version, interfaces };
  return {
    ...r,
    cniVersion: version,
    interfaces,
    ips: r.ips.map((ip) => ({ version: ip.address.includes(":") ? "6" : "4", ...ip })),
  };
}

function needVersion(conf: NetworkConfig, command: Command, min: string): void {
  if (compareVersions(conf.cniVersion, min) < 0) {
    throw new CniError(
      CNI_ERRORS.incompatibleVersion,
      `${command} needs cniVersion ${min} or later; the network "${conf.name}" has ${conf.cniVersion}`,
    );
  }
}

function addRequest(conf: NetworkConfig, inv: Invocation): CniAddRequest {
  const name = inv.args.get("K8S_POD_NAME");
  const namespace = inv.args.get("K8S_POD_NAMESPACE");
  return {
    containerId: inv.containerId,
    netns: inv.netns,
    ifname: inv.ifname,
    network: conf.name,
    ...(name ? { name } : {}),
    ...(namespace ? { namespace } : {}),
    labels: labelsOf(conf, inv.args),
  };
}

async function run(
  inv: Invocation,
  conf: NetworkConfig,
  agent: AgentConnection,
): Promise<string> {
  const base = { containerId: inv.containerId, ifname: inv.ifname, network: conf.name };
  switch (inv.command) {
    case "ADD": {
      const r = await agent.post<CniAddResponse>("/v1/cni/add", addRequest(conf, inv));
      return json(convertResult(r.result, conf.cniVersion));
    }
    case "DEL": {
      const req = { ...base, ...(inv.netns ? { netns: inv.netns } : {}) };
      try {
        await agent.post("/v1/cni/del", req);
      } catch (err) {
        // The agent is down (restarting?): queue the DEL for it instead of failing the runtime.
        if (!(err instanceof CniError) || err.code !== CNI_ERRORS.tryAgainLater) throw err;
        await enqueueDelete(socketOf(conf), req).catch(() => {
          throw err;
        });
      }
      return "";
    }
    case "CHECK":
      needVersion(conf, "CHECK", "0.4.0");
      await agent.post("/v1/cni/check", {
        ...base,
        netns: inv.netns,
        ...(conf.prevResult !== undefined ? { prevResult: conf.prevResult } : {}),
      });
      return "";
    case "GC": {
      needVersion(conf, "GC", "1.1.0");
      const valid = (conf["cni.dev/valid-attachments"] ?? []).map((a) => ({
        containerId: a.containerID,
        ifname: a.ifname,
      }));
      await agent.post("/v1/cni/gc", { network: conf.name, validAttachments: valid });
      return "";
    }
    case "STATUS": {
      needVersion(conf, "STATUS", "1.1.0");
      await agent.get("/v1/healthz");
      const s = await agent.get<{ datapath?: { mode?: string }; ipam?: unknown[] }>("/v1/status");
      const why = s.datapath?.mode !== "kernel"
        ? "the agent runs without the kernel datapath (--datapath none)"
        : (s.ipam ?? []).length === 0
        ? "the agent has no pod CIDR (--pod-cidr, --pod-cidr-v6)"
        : undefined;
      if (why) throw new CniError(CNI_ERRORS.notAvailable, `cilia cannot add pods: ${why}`);
      return "";
    }
    case "VERSION":
      return "";
  }
}

/**
 * Runs one plugin invocation: the CNI environment and stdin in, stdout and exit code out.
 * `onTiming` hears the timing of each request to the agent (for `bench cni`).
 */
export async function runPlugin(
  env: Record<string, string | undefined>,
  stdin: string,
  opts: { onTiming?: (t: RequestTiming) => void } = {},
): Promise<PluginOutput> {
  let version = "1.0.0";
  try {
    const inv = parseEnvironment(env);
    if (inv.command === "VERSION") {
      const asked = (() => {
        try {
          return String((JSON.parse(stdin) as { cniVersion?: unknown }).cniVersion ?? "");
        } catch {
          return "";
        }
      })();
      const cniVersion = (SUPPORTED_VERSIONS as readonly string[]).includes(asked)
        ? asked
        : "1.0.0";
      return { code: 0, stdout: json({ cniVersion, supportedVersions: SUPPORTED_VERSIONS }) };
    }
    const conf = parseNetworkConfig(stdin);
    version = conf.cniVersion;
    const agent = new AgentConnection(socketOf(conf), {
      unreachableCode: inv.command === "STATUS"
        ? CNI_ERRORS.notAvailable
        : CNI_ERRORS.tryAgainLater,
      ...(opts.onTiming ? { onTiming: opts.onTiming } : {}),
    });
    try {
      return { code: 0, stdout: await run(inv, conf, agent) };
    } finally {
      agent.close();
    }
  } catch (err) {
    const e = err instanceof CniError
      ? err
      : new CniError(CNI_ERRORS.agent, `cilia-cni failed: ${(err as Error)?.message ?? err}`);
    return {
      code: 1,
      stdout: json({
        cniVersion: version,
        code: e.code,
        msg: e.message,
        ...(e.details ? { details: e.details } : {}),
      }),
    };
  }
}
