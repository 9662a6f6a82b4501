/**
 * What the CNI plugin and the agent agree on, without zod: the CNI spec's rules for container ids
 * and interface names, the spec's error codes and the agent-API-code → CNI-code mapping, and the
 * shape of the CNI result the agent builds. The plugin (`cilia-cni`, exec'd once per pod) imports
 * only this half, so it starts without loading any npm package; the request schemas the agent
 * validates live in types.ts. No I/O.
 */

/** The CNI spec's rule for interface names. */
export const IFNAME = /^[^/:\s]{1,15}$/;
/** The CNI spec's rule for container ids. */
export const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

export interface CniInterface {
  name: string;
  mac?: string;
  /** CNI 1.1.0 and later. */
  mtu?: number;
  sandbox?: string;
}

export interface CniIpConfig {
  address: string;
  gateway?: string;
  interface?: number;
}

export interface CniRoute {
  dst: string;
  gw?: string;
}

/** A CNI 1.0.0 success result. */
export interface CniResult {
  cniVersion: string;
  interfaces: CniInterface[];
  ips: CniIpConfig[];
  routes: CniRoute[];
  dns: Record<string, never>;
}

export interface CniAddResponse {
  result: CniResult;
  endpoint: { id: number; identity: number; name: string; namespace: string };
}

/** CNI spec error codes (0-99 well-known; 999 and up are cilia's own). */
export const CNI_ERRORS = {
  incompatibleVersion: 1,
  unsupportedField: 2,
  unknownContainer: 3,
  invalidEnvironment: 4,
  io: 5,
  decoding: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  notAvailable: 50,
  /** The agent refused or failed the request (its message says why). */
  agent: 999,
} as const;

/** The CNI error code for an agent API error code. */
export function cniCodeOf(apiCode: string): number {
  switch (apiCode) {
    case "cni_unknown_container":
    case "cni_netns_not_found":
      return CNI_ERRORS.unknownContainer;
    case "cni_invalid_netns":
    case "cni_invalid_ifname":
    case "cni_ifname_taken":
      return CNI_ERRORS.invalidEnvironment;
    case "invalid_cni_args":
    case "invalid_request":
    case "invalid_json":
      return CNI_ERRORS.invalidConfig;
    case "kvstore_unavailable":
      return CNI_ERRORS.tryAgainLater;
    default:
      return CNI_ERRORS.agent;
  }
}
