// The policy IR: validated, normalised, deterministic data that the translator produces from
// CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy / NetworkPolicy documents and that the
// snapshot encoder hands to the WASM engine. Specs only: no behaviour, no I/O. This module is
// browser compatible.

export type Direction = "ingress" | "egress";
export type SelectorOp = "In" | "NotIn" | "Exists" | "DoesNotExist";

/** One label requirement; `source` "any" matches the key from every source. */
export interface Requirement {
  source: string;
  key: string;
  op: SelectorOp;
  values: string[];
}

export type SelectorSpec =
  | { kind: "labels"; requirements: Requirement[] }
  | { kind: "cidr"; cidr: string; except: string[] }
  | { kind: "all" }
  | { kind: "none"; why: string };

/** Protocol numbers as the kernel uses them; 0 = any of TCP, UDP, SCTP. */
export const PROTO_ANY = 0;
export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_ICMPV6 = 58;
export const PROTO_SCTP = 132;

export interface PortSpec {
  /** 0 (ANY = TCP, UDP, SCTP), 6, 17, 132, or 1 / 58 with the ICMP type in `port`. */
  proto: number;
  /** First port; 0 with endPort 65535 means every port. */
  port: number;
  endPort: number;
  /** A named container port, resolved by the engine per endpoint. */
  name?: string;
}

export interface HttpHeaderRule {
  /** Lower-case header name. */
  name: string;
  /** Full-match regex on the value; absent = presence only. */
  value?: string;
}

export interface HttpHeaderMatch {
  name: string;
  /** Exact value; absent with secret = a secret cilia cannot read (never matches). */
  value?: string;
  secret?: boolean;
  mismatch?: "LOG" | "ADD" | "DELETE" | "REPLACE";
}

export interface HttpRuleSpec {
  method?: string;
  path?: string;
  host?: string;
  headers: HttpHeaderRule[];
  headerMatches: HttpHeaderMatch[];
}

export interface KafkaRuleSpec {
  /** API keys the rule admits; empty = every key. */
  apiKeys: number[];
  apiVersion?: number;
  clientID?: string;
  topic?: string;
}

export interface DnsRuleSpec {
  matchName?: string;
  matchPattern?: string;
}

export type L7Spec =
  | { kind: "http"; rules: HttpRuleSpec[] }
  | { kind: "kafka"; rules: KafkaRuleSpec[] }
  | { kind: "dns"; rules: DnsRuleSpec[] };

export interface PeerSpec {
  selector: SelectorSpec;
  /** Endpoint selectors are narrowed by fromRequires/toRequires; entities and CIDRs are not. */
  requiresApply: boolean;
}

/** One allow or deny entry: peers × ports (+ L7). No ports = every port and protocol (L3). */
export interface EntrySpec {
  direction: Direction;
  deny: boolean;
  peers: PeerSpec[];
  ports: PortSpec[];
  l7?: L7Spec;
  /**
   * Set when the entry's rule is not default-deny in its direction: the last L7 rule is the
   * allow-all one Cilium adds there, so the L7 rules observe (the proxy sees every request)
   * without restricting (POLICY-SEMANTICS §9).
   */
  observeOnly?: boolean;
  /** Set when an L3 field is an explicitly empty list (its name): the entry selects no peer. */
  emptyPeers?: string;
  /** Stable 32-bit id of this entry (hash of policy identity and path); names the rule in maps. */
  cookie: number;
  /** Path of the entry in its document, e.g. `spec.ingress[0].toPorts[1]`. */
  path: string;
}

export interface PolicyRef {
  kind: "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" | "NetworkPolicy";
  name: string;
  namespace?: string;
  /** Where the document came from, for messages. */
  file?: string;
  line?: number;
  /**
   * `audit` (annotation `cilia.io/policy-mode: audit`): the policy decides nothing; flows it
   * would drop pass and are reported with verdict AUDIT. Absent = enforce.
   */
  mode?: "audit";
}

export interface RuleSpec {
  /** Index into PolicySpec.policies. */
  policy: number;
  /** Path of the rule in its document: `spec` or `specs[2]`. */
  path: string;
  subject: SelectorSpec;
  subjectKind: "endpoint" | "node";
  defaultDeny: { ingress: boolean; egress: boolean };
  /**
   * fromRequires/toRequires, ANDed into the endpoint selectors of every rule that selects the same
   * subject: those of allow rules narrow allows, those of deny rules narrow denies.
   */
  requires: {
    ingress: SelectorSpec[];
    egress: SelectorSpec[];
    ingressDeny?: SelectorSpec[];
    egressDeny?: SelectorSpec[];
  };
  entries: EntrySpec[];
  description?: string;
  /** Rule labels (`k8s:io.cilium.k8s.policy.name=...` and the user's labels). */
  labels: string[];
}

export interface PolicySpec {
  policies: PolicyRef[];
  rules: RuleSpec[];
}

export type EnforcementMode = "default" | "always" | "never";

export interface EngineOptions {
  enforcement: EnforcementMode;
  /** Host → local endpoint ingress always allowed (Cilium's allow-localhost in Kubernetes). */
  allowLocalhost: boolean;
  clusterName: string;
}

export const DEFAULT_OPTIONS: EngineOptions = {
  enforcement: "default",
  allowLocalhost: true,
  clusterName: "default",
};

/** An identity: numeric id and its labels (`source:key=value`), or a CIDR identity. */
export interface IdentitySpec {
  id: number;
  labels: string[];
  /** Set for CIDR identities: the prefix they stand for. */
  cidr?: string;
}

export interface NamedPort {
  name: string;
  port: number;
  protocol: "TCP" | "UDP" | "SCTP";
}

/** An endpoint as the engine knows it: a subject of policy (not the agent's EndpointSpec). */
export interface EngineEndpoint {
  /** The endpoint's key in the engine (the agent's endpoint id). */
  id: number;
  identity: number;
  namedPorts: NamedPort[];
}
