// zod schemas for the documents cilia accepts: cilium.io/v2 CiliumNetworkPolicy and
// CiliumClusterwideNetworkPolicy, networking.k8s.io/v1 NetworkPolicy, and v1 List of those.
// Objects are strict: an unknown field is an error with a "did you mean" hint; names and
// namespaces follow Kubernetes' naming rules (DNS-1123). Cross-field rules (L7 needs TCP, except
// inside cidr, …) are checked while translating (translate_*.ts, l7_rules.ts, l7_conflicts.ts).
// This module is browser compatible.

import { z } from "zod";
import { suggest } from "./suggest.ts";

/** A strict object whose unknown keys get a message naming the closest known key. */
export function obj<T extends z.core.$ZodLooseShape>(shape: T) {
  const known = Object.keys(shape);
  return z.strictObject(shape, {
    error: (iss) => {
      if (iss.code !== "unrecognized_keys") return undefined;
      return iss.keys.map((k) => unknownFieldMessage(k, known)).join("; ");
    },
  });
}

export function unknownFieldMessage(key: string, known: readonly string[]): string {
  const hint = suggest(key, known);
  return hint ? `Unknown field "${key}": did you mean "${hint}"?` : `Unknown field "${key}"`;
}

const str = z.string({ error: (iss) => `Expected a string, got ${describe(iss.input)}` });

function describe(v: unknown): string {
  if (v === undefined) return "nothing";
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "an object";
  if (typeof v === "string") return `the string "${v}"`;
  return `${typeof v} ${String(v)}`;
}

const labelValue = z.string({
  error: (iss) =>
    iss.input !== null && typeof iss.input === "object"
      ? `Expected a string label value, got ${describe(iss.input)}`
      : `Expected a string label value, got ${describe(iss.input)}: quote it, e.g. "${
        String(iss.input)
      }"`,
});

export const Operator = z.enum(["In", "NotIn", "Exists", "DoesNotExist"], {
  error: (iss) =>
    `Invalid operator ${
      describe(iss.input)
    }: expected one of In, NotIn, Exists, DoesNotExist (case-sensitive)`,
});

export const LabelSelector = obj({
  matchLabels: z.record(z.string(), labelValue).nullish(),
  matchExpressions: z.array(obj({
    key: str.min(1, "Expected a non-empty key"),
    operator: Operator,
    values: z.array(labelValue).nullish(),
  })).nullish(),
});
export type LabelSelector = z.infer<typeof LabelSelector>;

const portValue = z.union([str, z.number().int()], {
  error: (iss) => `Expected a port number or name, got ${describe(iss.input)}`,
});

const Protocol = z.enum(["TCP", "UDP", "SCTP", "ANY"], {
  error: (iss) => `Invalid protocol ${describe(iss.input)}: expected TCP, UDP, SCTP or ANY`,
});

export const PortProtocol = obj({
  port: portValue.optional(),
  endPort: z.number().int().nullish(),
  protocol: Protocol.nullish(),
});

const SecretRef = obj({ namespace: str.optional(), name: str });

export const HttpRule = obj({
  method: str.optional(),
  path: str.optional(),
  host: str.optional(),
  headers: z.array(str).nullish(),
  headerMatches: z.array(obj({
    name: str.min(1, "Expected a non-empty header name"),
    value: str.optional(),
    secret: SecretRef.optional(),
    mismatch: z.enum(["LOG", "ADD", "DELETE", "REPLACE"], {
      error: (iss) =>
        `Invalid mismatch ${describe(iss.input)}: expected LOG, ADD, DELETE or REPLACE`,
    }).optional(),
  })).nullish(),
});

export const KafkaRule = obj({
  role: z.enum(["produce", "consume"], {
    error: (iss) => `Invalid Kafka role ${describe(iss.input)}: expected produce or consume`,
  }).optional(),
  apiKey: str.optional(),
  apiVersion: z.union([str, z.number().int()]).optional(),
  clientID: str.optional(),
  topic: str.optional(),
});

export const DnsRule = obj({ matchName: str.optional(), matchPattern: str.optional() });

export const L7Rules = obj({
  http: z.array(HttpRule).nullish(),
  kafka: z.array(KafkaRule).nullish(),
  dns: z.array(DnsRule).nullish(),
  l7proto: str.optional(),
  l7: z.array(z.record(z.string(), z.string())).nullish(),
});

const TlsContext = z.looseObject({});

export const PortRule = obj({
  ports: z.array(PortProtocol).nullish(),
  rules: L7Rules.nullish(),
  serverNames: z.array(str).nullish(),
  terminatingTLS: TlsContext.nullish(),
  originatingTLS: TlsContext.nullish(),
  listener: z.looseObject({}).nullish(),
});

export const PortDenyRule = obj({ ports: z.array(PortProtocol).nullish() });

export const IcmpRule = obj({
  fields: z.array(obj({
    family: z.enum(["IPv4", "IPv6"], {
      error: (iss) => `Invalid ICMP family ${describe(iss.input)}: expected IPv4 or IPv6`,
    }).optional(),
    type: z.union([z.number().int(), str]),
  })),
});

export const CidrRule = obj({
  cidr: str.optional(),
  cidrGroupRef: str.optional(),
  cidrGroupSelector: LabelSelector.optional(),
  except: z.array(str).nullish(),
});

export const FqdnSelector = obj({ matchName: str.optional(), matchPattern: str.optional() });

export const ServiceSelector = obj({
  k8sService: obj({ serviceName: str, namespace: str.optional() }).optional(),
  k8sServiceSelector: obj({ selector: LabelSelector, namespace: str.optional() }).optional(),
});

const Authentication = obj({
  mode: z.enum(["required", "disabled"], {
    error: (iss) =>
      `Invalid authentication mode ${describe(iss.input)}: expected required or disabled`,
  }),
});

const peerList = z.array(LabelSelector).nullish();
const entityList = z.array(str).nullish();
const cidrList = z.array(str).nullish();
const cidrSetList = z.array(CidrRule).nullish();

export const IngressRule = obj({
  fromEndpoints: peerList,
  fromRequires: peerList,
  fromEntities: entityList,
  fromCIDR: cidrList,
  fromCIDRSet: cidrSetList,
  fromNodes: peerList,
  fromGroups: z.array(z.looseObject({})).nullish(),
  toPorts: z.array(PortRule).nullish(),
  icmps: z.array(IcmpRule).nullish(),
  authentication: Authentication.optional(),
});

export const IngressDenyRule = obj({
  fromEndpoints: peerList,
  fromRequires: peerList,
  fromEntities: entityList,
  fromCIDR: cidrList,
  fromCIDRSet: cidrSetList,
  fromNodes: peerList,
  fromGroups: z.array(z.looseObject({})).nullish(),
  toPorts: z.array(PortDenyRule).nullish(),
  icmps: z.array(IcmpRule).nullish(),
});

export const EgressRule = obj({
  toEndpoints: peerList,
  toRequires: peerList,
  toEntities: entityList,
  toCIDR: cidrList,
  toCIDRSet: cidrSetList,
  toNodes: peerList,
  toServices: z.array(ServiceSelector).nullish(),
  toFQDNs: z.array(FqdnSelector).nullish(),
  toGroups: z.array(z.looseObject({})).nullish(),
  toPorts: z.array(PortRule).nullish(),
  icmps: z.array(IcmpRule).nullish(),
  authentication: Authentication.optional(),
});

export const EgressDenyRule = obj({
  toEndpoints: peerList,
  toRequires: peerList,
  toEntities: entityList,
  toCIDR: cidrList,
  toCIDRSet: cidrSetList,
  toNodes: peerList,
  toServices: z.array(ServiceSelector).nullish(),
  toGroups: z.array(z.looseObject({})).nullish(),
  toPorts: z.array(PortDenyRule).nullish(),
  icmps: z.array(IcmpRule).nullish(),
});

const RuleLabel = z.union([
  obj({ key: str, value: str.optional(), source: str.optional() }),
  str,
]);

export const Rule = obj({
  endpointSelector: LabelSelector.optional(),
  nodeSelector: LabelSelector.optional(),
  ingress: z.array(IngressRule).nullish(),
  ingressDeny: z.array(IngressDenyRule).nullish(),
  egress: z.array(EgressRule).nullish(),
  egressDeny: z.array(EgressDenyRule).nullish(),
  labels: z.array(RuleLabel).nullish(),
  description: str.optional(),
  enableDefaultDeny: obj({ ingress: z.boolean().optional(), egress: z.boolean().optional() })
    .optional(),
  log: z.looseObject({}).optional(),
});
export type Rule = z.infer<typeof Rule>;
export type IngressRule = z.infer<typeof IngressRule>;
export type EgressRule = z.infer<typeof EgressRule>;
export type PortRule = z.infer<typeof PortRule>;
export type PortProtocol = z.infer<typeof PortProtocol>;

/** Kubernetes object names: a DNS-1123 subdomain; namespaces: a DNS-1123 label. */
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export const Metadata = z.looseObject({
  name: str.min(1, "Expected a non-empty name").refine(
    (v) => v === "" || (v.length <= 253 && DNS1123_SUBDOMAIN.test(v)),
    {
      error: (iss) =>
        `Invalid metadata.name "${
          String(iss.input)
        }": expected a DNS-1123 subdomain (at most 253 characters of lower-case letters, digits, "-" and ".", starting and ending with a letter or digit)`,
    },
  ),
  namespace: str.refine((v) => v.length <= 63 && DNS1123_LABEL.test(v), {
    error: (iss) =>
      `Invalid metadata.namespace "${
        String(iss.input)
      }": expected a DNS-1123 label (1 to 63 characters of lower-case letters, digits and "-", starting and ending with a letter or digit)`,
  }).optional(),
  labels: z.record(z.string(), z.string()).nullish(),
  annotations: z.record(z.string(), z.string()).nullish(),
  uid: str.optional(),
});

export const CiliumNetworkPolicy = obj({
  apiVersion: z.literal("cilium.io/v2"),
  kind: z.literal("CiliumNetworkPolicy"),
  metadata: Metadata,
  spec: Rule.optional(),
  specs: z.array(Rule).nullish(),
  status: z.unknown().optional(),
});

export const CiliumClusterwideNetworkPolicy = obj({
  apiVersion: z.literal("cilium.io/v2"),
  kind: z.literal("CiliumClusterwideNetworkPolicy"),
  metadata: Metadata,
  spec: Rule.optional(),
  specs: z.array(Rule).nullish(),
  status: z.unknown().optional(),
});
export type CiliumPolicy =
  | z.infer<typeof CiliumNetworkPolicy>
  | z.infer<typeof CiliumClusterwideNetworkPolicy>;

const K8sPort = obj({
  protocol: z.enum(["TCP", "UDP", "SCTP"], {
    error: (iss) => `Invalid protocol ${describe(iss.input)}: expected TCP, UDP or SCTP`,
  }).optional(),
  port: portValue.optional(),
  endPort: z.number().int().optional(),
});

const K8sPeer = obj({
  podSelector: LabelSelector.nullish(),
  namespaceSelector: LabelSelector.nullish(),
  ipBlock: obj({ cidr: str, except: z.array(str).nullish() }).nullish(),
});

export const NetworkPolicy = obj({
  apiVersion: z.literal("networking.k8s.io/v1"),
  kind: z.literal("NetworkPolicy"),
  metadata: Metadata,
  spec: obj({
    // `podSelector: null` reads as `{}` (every pod of the namespace), as Kubernetes and Cilium read
    // it; a missing podSelector stays an error (the field is required).
    podSelector: LabelSelector.nullable(),
    policyTypes: z.array(z.enum(["Ingress", "Egress"], {
      error: (iss) => `Invalid policy type ${describe(iss.input)}: expected Ingress or Egress`,
    })).nullish(),
    ingress: z.array(obj({ from: z.array(K8sPeer).nullish(), ports: z.array(K8sPort).nullish() }))
      .nullish(),
    egress: z.array(obj({ to: z.array(K8sPeer).nullish(), ports: z.array(K8sPort).nullish() }))
      .nullish(),
  }),
  status: z.unknown().optional(),
});
export type NetworkPolicy = z.infer<typeof NetworkPolicy>;
export type K8sPeer = z.infer<typeof K8sPeer>;
export type K8sPort = z.infer<typeof K8sPort>;

export const KINDS = {
  "cilium.io/v2": ["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"],
  "networking.k8s.io/v1": ["NetworkPolicy"],
  "v1": ["List"],
} as const;
