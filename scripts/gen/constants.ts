// The one table of the other constants that cross the C / WASM / TypeScript boundary: directions,
// endpoint and policy flags, policy-map prefix lengths, how a verdict was reached, event types,
// trace points and conntrack states. `deno task gen` writes bpf/lib/constants.generated.h,
// policy-wasm/assembly/constants.generated.ts (the groups the engine shares) and
// policy-wasm/src/constants.generated.ts from it; tests/policy/determinism_test.ts checks that the
// committed copies are current, tests/policy/generated_test.ts that nothing defines them by hand.
// Drop reasons and verdicts have their own table (drop_reasons.ts).
//
// Two numberings of direction exist on purpose, under distinct names: the datapath's DIR_* (1, 2;
// 0 is "unknown" in events) is stored in conntrack and metrics keys of pinned maps, and the policy
// side's POLICY_DIR_* (0, 1) is the policy map key's `egress` field and the engine's wire value.

/** A constant: [name, value, what it means]. */
export type Constant = readonly [name: string, value: number, doc: string];

export interface ConstantGroup {
  doc: string;
  /** Flags: C writes the values as (1 << n). */
  bits?: boolean;
  /** The engine (AssemblyScript) uses this group too, with this type. */
  engine?: "u8" | "u16" | "u32" | "i32";
  rows: readonly Constant[];
}

export const CONSTANTS: readonly ConstantGroup[] = [
  {
    doc: "Directions as the datapath sees them from the endpoint (events, metrics, conntrack).",
    rows: [
      ["DIR_INGRESS", 1, "to the endpoint"],
      ["DIR_EGRESS", 2, "from the endpoint"],
      [
        "DIR_SERVICE",
        3,
        "conntrack only: a service connection's backend choice and reverse NAT (lb.h)",
      ],
    ],
  },
  {
    doc: "Directions of policy: the policy map key's egress field and the engine's wire value.",
    engine: "u8",
    rows: [
      ["POLICY_DIR_INGRESS", 0, ""],
      ["POLICY_DIR_EGRESS", 1, ""],
    ],
  },
  {
    doc: "Endpoint flags (struct endpoint_info.flags).",
    bits: true,
    rows: [
      ["EP_F_INGRESS_DEFAULT_DENY", 1 << 0, ""],
      ["EP_F_EGRESS_DEFAULT_DENY", 1 << 1, ""],
      ["EP_F_ENFORCEMENT_DISABLED", 1 << 2, ""],
      [
        "EP_F_NOT_READY",
        1 << 3,
        "The agent could not write this endpoint's policy: drop everything (DROP_EP_NOT_READY) " +
        "until it can. Fail closed: a partial or stale policy map is never in force alone.",
      ],
    ],
  },
  {
    doc:
      "Policy map key (struct policy_key): bits after prefixlen, and the entries' prefix lengths.",
    rows: [
      ["POLICY_KEY_DATA_BITS", 96, "ep_id..dport"],
      ["POLICY_PREFIX_L3", 64, "ep_id, egress, pad, identity: any protocol"],
      ["POLICY_PREFIX_PROTO", 80, "+ proto, pad2: any port of that protocol"],
    ],
  },
  {
    doc: "Policy entry flags (struct policy_value.flags).",
    bits: true,
    rows: [["POLICY_F_L4", 1 << 0, "the entry has a protocol (set by the agent)"]],
  },
  {
    doc: "How a verdict was reached (policy-verdict events).",
    rows: [
      ["POLICY_MATCH_NONE", 0, "no entry: the direction's default"],
      ["POLICY_MATCH_L3", 1, "a protocol-0 entry for the peer identity"],
      ["POLICY_MATCH_L4", 2, "a protocol(+port) entry for the peer identity"],
      ["POLICY_MATCH_ANY_L3", 3, "a protocol-0 entry for identity 0"],
      ["POLICY_MATCH_ANY_L4", 4, "a protocol(+port) entry for identity 0"],
    ],
  },
  {
    doc: "Event types (struct cilia_event.type).",
    rows: [
      ["EVENT_DROP", 1, ""],
      ["EVENT_POLICY_VERDICT", 2, ""],
      ["EVENT_TRACE", 3, ""],
    ],
  },
  {
    doc: "Trace points: where a traced packet was observed (subtype of EVENT_TRACE).",
    rows: [
      ["TRACE_FROM_ENDPOINT", 1, ""],
      ["TRACE_TO_ENDPOINT", 2, ""],
      [
        "TRACE_SOCK_XLATE",
        3,
        "the socket LB translated a connect/sendmsg to a service (sock.c; no packet)",
      ],
      [
        "TRACE_FROM_NETWORK",
        4,
        "a new NodePort/LoadBalancer connection at the underlay's ingress, translated (np_event.h)",
      ],
    ],
  },
  {
    doc:
      "Packet marks (skb->mark; the MARK_MAGIC_MASK bits are cilia's): tunnel.h 4., nodeport.h 10.",
    rows: [
      ["MARK_MAGIC_MASK", 0x0f00, "the bits that say what the rest of the mark holds"],
      [
        "MARK_MAGIC_IDENTITY",
        0x0f00,
        "bits 16-31: the identity's low 16 bits, bits 0-7: its bits 16-23 (Cilium's layout)",
      ],
      [
        "MARK_MAGIC_NATIVE",
        0x0e00,
        "a pod's packet to another node's pod its egress policy passed, sent natively (nodeport.h)",
      ],
    ],
  },
  {
    doc: "Reserved identities the datapath itself uses (POLICY-SEMANTICS.md §10).",
    rows: [
      ["IDENTITY_HOST", 1, "this node"],
      ["IDENTITY_REMOTE_NODE", 6, "another node of the cluster"],
      ["IDENTITY_KUBE_APISERVER", 7, "carries reserved:remote-node too"],
      ["IDENTITY_GLOBAL_MAX", 0xffff, "the largest cluster-wide identity; a VNI above is invalid"],
    ],
  },
  {
    doc: "Conntrack states of a packet (struct cilia_event.ct_state).",
    rows: [
      ["CT_NEW", 0, ""],
      ["CT_ESTABLISHED", 1, ""],
      ["CT_REPLY", 2, ""],
      ["CT_RELATED", 3, ""],
    ],
  },
];
