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

/** "Invalid protocol "tcp": expected TCP, …" — the value as given, then what is accepted. */
function choice(what: string, input: unknown, expected: string): string {
  const given = typeof input === "string" ? `"${input}"` : describe(input);
  const near = typeof input === "string"
    ? expected.split(/[ ,]+/).find((w) => w.toLowerCase() === input.toLowerCase())
    : undefined;
  return `Invalid ${what} ${given}: expected ${expected}${
    near ? ` (case-sensitive): did you mean "${near}"?` : ""
  }`;
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
  error: (iss) => choice("operator", iss.input, "In, NotIn, Exists or DoesNotExist"),
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
  error: (iss) => choice("protocol", iss.input, "TCP, UDP, SCTP or ANY"),
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
      error: (iss) => choice("mismatch", iss.input, "LOG, ADD, DELETE or REPLACE"),
    }).optional(),
  })).nullish(),
});

export const KafkaRule = obj({
  role: z.enum(["produce", "consume"], {
    error: (iss) => choice("Kafka role", iss.input, "produce or consume"),
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
      error: (iss) => choice("ICMP family", iss.input, "IPv4 or IPv6"),
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
    error: (iss) => choice("authentication mode", iss.input, "required or disabled"),
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

const QUALIFIED_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

/**
 * The API server's rule for label and annotation keys: an optional DNS-1123 subdomain prefix
 * (≤ 253) and "/", then a name of ≤ 63 characters of [A-Za-z0-9-_.] that starts and ends with an
 * alphanumeric. Returns what is wrong, or undefined.
 */
export function checkLabelKey(key: string): string | undefined {
  const slash = key.lastIndexOf("/");
  const prefix = slash >= 0 ? key.slice(0, slash) : undefined;
  const name = slash >= 0 ? key.slice(slash + 1) : key;
  if (prefix !== undefined && (prefix.length > 253 || !DNS1123_SUBDOMAIN.test(prefix))) {
    return `its prefix "${prefix}" must be a DNS-1123 subdomain (lower-case letters, digits, "-" and ".")`;
  }
  if (name.length === 0 || name.length > 63 || !QUALIFIED_NAME.test(name)) {
    return `expected [prefix/]name with a name of 1 to 63 characters of letters, digits, "-", "_" and ".", starting and ending with a letter or digit`;
  }
  return undefined;
}

/** Labels or annotations: keys by checkLabelKey; label values by the API server's rule. */
function keyedStrings(what: "label" | "annotation") {
  return z.record(z.string(), str).superRefine((rec, ctx) => {
    for (const [k, v] of Object.entries(rec)) {
      const bad = checkLabelKey(k);
      if (bad) {
        ctx.addIssue({ code: "custom", path: [k], message: `Invalid ${what} key "${k}": ${bad}` });
      }
      if (what === "label" && (v.length > 63 || !LABEL_VALUE.test(v))) {
        ctx.addIssue({
          code: "custom",
          path: [k],
          message:
            `Invalid label value "${v}": expected at most 63 characters of letters, digits, "-", "_" and ".", starting and ending with a letter or digit`,
        });
      }
    }
    if (what === "annotation") {
      const size = Object.entries(rec).reduce((n, [k, v]) => n + k.length + v.length, 0);
      if (size > 256 * 1024) {
        ctx.addIssue({
          code: "custom",
          path: [],
          message: `Annotations are ${size} bytes: the API server accepts at most 262144 in total`,
        });
      }
    }
  });
}

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
  labels: keyedStrings("label").nullish(),
  annotations: keyedStrings("annotation").nullish(),
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
    error: (iss) => choice("protocol", iss.input, "TCP, UDP or SCTP"),
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
      error: (iss) => choice("policy type", iss.input, "Ingress or Egress"),
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
