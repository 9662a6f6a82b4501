/**
 * What an endpoint is, as the API receives it (`EndpointSpec`, validated by zod with messages
 * that name the bad label or field) and as the agent stores it (`EndpointRecord`, with its
 * identity), and how its identity labels are derived (POLICY-SEMANTICS §3: pod labels filtered
 * by the identity-relevant label filter, namespace, namespace labels, service account,
 * cluster). Pure: no I/O.
 */

import { z } from "zod";
import {
  canonicalPrefix,
  type LabelFilter,
  parseAddress,
  podIdentityLabels,
} from "@cilia/policy-wasm";

const NAME_PART = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const SOURCES = new Set(["k8s", "container", "unspec"]);

/** Why `key` is not a valid label key (`[source:][prefix/]name`), or undefined. */
export function labelKeyProblem(key: string): string | undefined {
  let rest = key;
  const colon = key.indexOf(":");
  if (colon > 0 && !key.slice(0, colon).includes("/")) {
    const source = key.slice(0, colon);
    if (source === "reserved") return `reserved labels are set by cilia, not by clients`;
    if (!SOURCES.has(source)) {
      return `unknown source "${source}": expected ${[...SOURCES].join(", ")} or none`;
    }
    rest = key.slice(colon + 1);
  }
  const slash = rest.lastIndexOf("/");
  const prefix = slash >= 0 ? rest.slice(0, slash) : undefined;
  const name = slash >= 0 ? rest.slice(slash + 1) : rest;
  if (prefix !== undefined && (prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) {
    return `the prefix "${prefix}" is not a DNS subdomain`;
  }
  if (name.length === 0 || name.length > 63 || !NAME_PART.test(name)) {
    return `expected a name of at most 63 letters, digits, "-", "_" or "." such as app or example.com/app`;
  }
  return undefined;
}

export function labelValueProblem(value: string): string | undefined {
  if (value === "") return undefined;
  if (value.length > 63 || !NAME_PART.test(value)) {
    return `expected at most 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit`;
  }
  return undefined;
}

export const Labels = z.record(z.string(), z.string()).superRefine((labels, ctx) => {
  const entries = Object.entries(labels);
  if (entries.length > 256) {
    ctx.addIssue({ code: "custom", message: `Too many labels: ${entries.length}, at most 256` });
  }
  for (const [k, v] of entries) {
    const kp = labelKeyProblem(k);
    if (kp) ctx.addIssue({ code: "custom", path: [k], message: `Invalid label key "${k}": ${kp}` });
    const vp = labelValueProblem(v);
    if (vp) {
      ctx.addIssue({
        code: "custom",
        path: [k],
        message: `Invalid value "${v}" of label "${k}": ${vp}`,
      });
    }
  }
});

/** An address of `family`, in canonical text (`FD00::02` → `fd00::2`). */
const ip = (family: 4 | 6) =>
  z.string().refine((s) => parseAddress(s)?.family === family, {
    message: `Expected an IPv${family} address`,
  }).transform((s) => canonicalPrefix(s).replace(/\/\d+$/, ""));

export const NamedPortSchema = z.strictObject({
  name: z.string().regex(/^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$/, {
    message: "Expected a port name of 1-15 lower-case letters, digits or '-'",
  }),
  port: z.number().int().min(1).max(65535),
  protocol: z.enum(["TCP", "UDP", "SCTP"]).default("TCP"),
});

const ifname = z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, {
  message: "Expected an interface name of at most 15 characters",
});

export const EndpointSpecSchema = z.strictObject({
  name: z.string().max(253).regex(DNS_SUBDOMAIN, {
    message: "Expected a lower-case DNS name such as web-1",
  }),
  namespace: z.string().max(63).regex(DNS_LABEL, {
    message: "Expected a lower-case DNS label such as default",
  }).default("default"),
  labels: Labels.default({}),
  namespaceLabels: Labels.optional(),
  serviceAccount: z.string().max(253).regex(DNS_SUBDOMAIN, {
    message: "Expected a lower-case DNS name such as default",
  }).optional(),
  ipv4: ip(4).optional(),
  ipv6: ip(6).optional(),
  namedPorts: z.array(NamedPortSchema).max(64).optional(),
  /** The host-side interface (lxc…) the datapath attaches to. */
  ifname: ifname.optional(),
  /** The endpoint's network namespace (a path such as /run/netns/x). */
  netns: z.string().min(1).max(4096).optional(),
  /** CNI attachments: the runtime's container id, interface name and network name. */
  containerId: z.string().min(1).max(256).optional(),
  containerIfname: ifname.optional(),
  network: z.string().min(1).max(253).optional(),
  /** The MAC address of the endpoint's own interface. */
  mac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/, {
    message: "Expected a lower-case MAC address such as 0a:58:0a:c8:00:05",
  }).optional(),
  /** The MAC address of the host side (ifname): the pods' IPv6 router answers with it. */
  hostMac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/, {
    message: "Expected a lower-case MAC address such as 0a:58:0a:c8:00:06",
  }).optional(),
});

export type EndpointSpec = z.infer<typeof EndpointSpecSchema>;

export interface EndpointRecord extends EndpointSpec {
  id: number;
  node: string;
  identity: number;
  identityLabels: string[];
  createdAt: string;
  updatedAt: string;
}

export const endpointsPrefix = (node: string): string => `cilia/endpoints/${node}/`;
export const endpointKey = (node: string, id: number): string => `cilia/endpoints/${node}/${id}`;

/** The identity labels of an endpoint. */
export function identityLabelsOf(
  spec: EndpointSpec,
  opts: { clusterName: string; filter: LabelFilter },
): string[] {
  return podIdentityLabels({
    labels: spec.labels,
    namespace: spec.namespace,
    ...(spec.namespaceLabels ? { namespaceLabels: spec.namespaceLabels } : {}),
    ...(spec.serviceAccount ? { serviceAccount: spec.serviceAccount } : {}),
  }, { clusterName: opts.clusterName, filter: opts.filter });
}

export function ipsOf(spec: EndpointSpec): string[] {
  return [spec.ipv4, spec.ipv6].filter((x): x is string => x !== undefined);
}
