/**
 * What a CNI runtime hands the plugin, validated: the environment (CNI_COMMAND, CNI_CONTAINERID,
 * CNI_NETNS, CNI_IFNAME, CNI_ARGS), the network configuration on stdin (its shape checked by
 * network_config.ts; plugin key `agentSocket`, labels from `args.cni.labels`), and the pod
 * metadata of CNI_ARGS (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, and cilia's own
 * `CILIA_LABELS=k=v,k2=v2`). Every problem is a CniError with the spec's code. No I/O, and no npm
 * import: this is on the plugin's start path.
 */

import { checkNetworkConfig, type NetworkConfig } from "./network_config.ts";
import { CNI_ERRORS, CONTAINER_ID, IFNAME } from "./protocol.ts";

export type { NetworkConfig } from "./network_config.ts";

export const SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] as const;
export const DEFAULT_AGENT_SOCKET = "/var/run/cilia/cilia.sock";
export const COMMANDS = ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"] as const;
export type Command = typeof COMMANDS[number];

/** A failure to report as the CNI error object `{cniVersion, code, msg, details}`. */
export class CniError extends Error {
  override name = "CniError";
  constructor(readonly code: number, message: string, readonly details?: string) {
    super(message);
  }
}

/** Compares dotted versions: negative when a < b. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number), pb = b.split(".").map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The network configuration from stdin. */
export function parseNetworkConfig(stdin: string): NetworkConfig {
  if (stdin.trim() === "") {
    throw new CniError(
      CNI_ERRORS.decoding,
      "Cannot decode the network configuration: stdin is empty",
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(stdin);
  } catch (err) {
    throw new CniError(
      CNI_ERRORS.decoding,
      `Cannot decode the network configuration: not JSON: ${(err as Error).message}`,
    );
  }
  const r = checkNetworkConfig(value);
  if (!r.ok) {
    const { path, missing, message } = r.problem;
    throw new CniError(
      CNI_ERRORS.invalidConfig,
      `Invalid network configuration${path && !missing ? ` at "${path}"` : ""}: ${message}`,
    );
  }
  const conf = r.config;
  if (!(SUPPORTED_VERSIONS as readonly string[]).includes(conf.cniVersion)) {
    throw new CniError(
      CNI_ERRORS.incompatibleVersion,
      `Incompatible CNI version "${conf.cniVersion}": cilia-cni supports ${
        SUPPORTED_VERSIONS.join(", ")
      }`,
    );
  }
  if ("ipam" in conf && conf.ipam !== undefined) {
    throw new CniError(
      CNI_ERRORS.unsupportedField,
      `Unsupported field "ipam" in network "${conf.name}": the cilia agent allocates pod ` +
        `addresses itself (its --pod-cidr); remove the ipam section`,
    );
  }
  return conf;
}

/** CNI_ARGS `K=V;K=V` as a map; unknown keys are an error unless IgnoreUnknown is set. */
export function parseCniArgs(text: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of (text ?? "").split(";").filter((p) => p !== "")) {
    const eq = part.indexOf("=");
    if (eq <= 0) {
      throw new CniError(
        CNI_ERRORS.invalidEnvironment,
        `Invalid CNI_ARGS: "${part}" is not KEY=VALUE`,
      );
    }
    out.set(part.slice(0, eq), part.slice(eq + 1));
  }
  const known = new Set([
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "CILIA_LABELS",
  ]);
  const ignore = /^(1|true)$/i.test(out.get("IgnoreUnknown") ?? "");
  const unknown = [...out.keys()].filter((k) => !known.has(k));
  if (unknown.length > 0 && !ignore) {
    throw new CniError(
      CNI_ERRORS.invalidEnvironment,
      `Invalid CNI_ARGS: unknown key${unknown.length > 1 ? "s" : ""} ${
        unknown.map((k) => `"${k}"`).join(", ")
      } (set IgnoreUnknown=1 to ignore them)`,
    );
  }
  return out;
}

/** Labels from the config's args.cni.labels, then CNI_ARGS CILIA_LABELS (which wins). */
export function labelsOf(conf: NetworkConfig, args: Map<string, string>): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const l of conf.args?.cni?.labels ?? []) labels[l.key] = l.value;
  for (const part of (args.get("CILIA_LABELS") ?? "").split(",").filter((p) => p.trim() !== "")) {
    const eq = part.indexOf("=");
    if (eq <= 0) {
      throw new CniError(
        CNI_ERRORS.invalidEnvironment,
        `Invalid CNI_ARGS CILIA_LABELS: "${part}" is not key=value`,
      );
    }
    labels[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return labels;
}

export interface Invocation {
  command: Command;
  containerId: string;
  netns: string;
  ifname: string;
  args: Map<string, string>;
}

/** The CNI_* environment of a command; names the variable that is missing or invalid. */
export function parseEnvironment(env: Record<string, string | undefined>): Invocation {
  const command = env.CNI_COMMAND ?? "";
  if (!(COMMANDS as readonly string[]).includes(command)) {
    throw new CniError(
      CNI_ERRORS.invalidEnvironment,
      command === ""
        ? "Missing environment variable CNI_COMMAND"
        : `Invalid CNI_COMMAND "${command}": expected ${COMMANDS.join(", ")}`,
    );
  }
  const need = (name: string, ok: (v: string) => boolean, expected: string) => {
    const v = env[name] ?? "";
    if (v === "") {
      throw new CniError(CNI_ERRORS.invalidEnvironment, `Missing environment variable ${name}`);
    }
    if (!ok(v)) {
      throw new CniError(
        CNI_ERRORS.invalidEnvironment,
        `Invalid ${name} "${v}": expected ${expected}`,
      );
    }
    return v;
  };
  const perContainer = ["ADD", "DEL", "CHECK"].includes(command);
  const containerId = perContainer
    ? need("CNI_CONTAINERID", (v) => CONTAINER_ID.test(v), "letters, digits, '_', '.' and '-'")
    : "";
  const ifname = perContainer
    ? need(
      "CNI_IFNAME",
      (v) => IFNAME.test(v) && v !== "." && v !== "..",
      `an interface name of at most 15 characters without "/", ":" or spaces`,
    )
    : "";
  const netns = command === "ADD" || command === "CHECK"
    ? need("CNI_NETNS", (v) => v.startsWith("/"), "an absolute path")
    : env.CNI_NETNS ?? "";
  return {
    command: command as Command,
    containerId,
    netns,
    ifname,
    args: parseCniArgs(env.CNI_ARGS),
  };
}
