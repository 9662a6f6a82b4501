/**
 * What the CNI plugin and the agent say to each other over the agent's socket (`/v1/cni/*`): the
 * request bodies as zod schemas, validated on the agent side, and (re-exported from protocol.ts)
 * the error codes and the CNI result. The plugin may import this module's types only (`import
 * type`): a value import would load zod into every plugin start.
 */

import { z } from "zod";
import { CONTAINER_ID, IFNAME } from "./protocol.ts";

export * from "./protocol.ts";

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
