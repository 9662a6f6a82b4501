/**
 * What the CNI plugin and the agent say to each other over the agent's socket (`/v1/cni/*`): the
 * request bodies (zod, validated on the agent side) and the CNI result the agent builds (CNI spec
 * 1.0.0 shape; the plugin converts it to the network config's version). Shared by `cilia-cni` and
 * the agent, so it imports nothing but zod.
 */

import { z } from "zod";

/** The CNI spec's rule for interface names. */
export const IFNAME = /^[^/:\s]{1,15}$/;
/** The CNI spec's rule for container ids. */
export const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

const containerId = z.string().max(200).regex(CONTAINER_ID, {
  message: "Expected a container id of letters, digits, '_', '.' and '-'",
});
const ifname = z.string().regex(IFNAME, {
  message: `Expected an interface name of at most 15 characters without "/", ":" or spaces`,
}).refine((s) => s !== "." && s !== "..", { message: `"." and ".." are not interface names` });
const network = z.string().min(1).max(253);

export const CniAddRequestSchema = z.strictObject({
  containerId,
  netns: z.string().min(1).max(4096),
  ifname,
  network,
  /** The pod's name (CNI_ARGS K8S_POD_NAME); the agent derives one from the id otherwise. */
  name: z.string().min(1).max(253).optional(),
  /** CNI_ARGS K8S_POD_NAMESPACE; default "default". */
  namespace: z.string().min(1).max(253).optional(),
  labels: z.record(z.string(), z.string()).default({}),
});
export type CniAddRequest = z.infer<typeof CniAddRequestSchema>;

export const CniDelRequestSchema = z.strictObject({
  containerId,
  ifname,
  network,
  netns: z.string().max(4096).optional(),
});
export type CniDelRequest = z.infer<typeof CniDelRequestSchema>;

export const CniCheckRequestSchema = z.strictObject({
  containerId,
  ifname,
  network,
  netns: z.string().min(1).max(4096),
  /** The ADD result the runtime kept (its addresses are compared). */
  prevResult: z.unknown().optional(),
});
export type CniCheckRequest = z.infer<typeof CniCheckRequestSchema>;

export const CniGcRequestSchema = z.strictObject({
  network,
  /** The attachments the runtime still uses; every other one of this network is deleted. */
  validAttachments: z.array(z.strictObject({ containerId, ifname })),
});
export type CniGcRequest = z.infer<typeof CniGcRequestSchema>;

export interface CniInterface {
  name: string;
  mac?: string;
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
