// The one table of drop reasons (Cilium's numbers and Hubble's wording) and of the verdicts shared
// by the kernel datapath, the WASM engine and TypeScript. `deno task gen` writes
// bpf/lib/drop_reasons.generated.h and policy-wasm/assembly/drop_reasons.generated.ts (both with
// the verdicts), policy-wasm/src/drop_reasons.generated.ts and, for the verdicts,
// policy-wasm/src/constants.generated.ts from it; tests/policy/determinism_test.ts checks that the
// committed copies are current. The other shared constants are in constants.ts.

/**
 * [code, C name, description, Hubble name]; codes and wording as Cilium's bpf/lib/common.h and
 * Hubble. The Hubble name is the code's name in Hubble's flow.proto `DropReason` enum (what flows
 * show as `drop_reason_desc`; the enum goes by Cilium's numbers, so 136 reads
 * CT_MISSING_TCP_ACK_FLAG there); a reason Hubble has no name for gets a `CILIA_` name.
 */
export const DROP_REASONS: ReadonlyArray<readonly [number, string, string, string]> = [
  [130, "INVALID_SMAC", "Invalid source mac", "INVALID_SOURCE_MAC"],
  [131, "INVALID_DMAC", "Invalid destination mac", "INVALID_DESTINATION_MAC"],
  [132, "INVALID_SIP", "Invalid source ip", "INVALID_SOURCE_IP"],
  [133, "POLICY", "Policy denied", "POLICY_DENIED"],
  [134, "INVALID", "Invalid packet", "INVALID_PACKET_DROPPED"],
  [135, "CT_INVALID_HDR", "CT: Truncated or invalid header", "CT_TRUNCATED_OR_INVALID_HEADER"],
  [136, "FRAG_NEEDED", "Fragmentation needed", "CT_MISSING_TCP_ACK_FLAG"],
  [137, "CT_UNKNOWN_PROTO", "CT: Unknown L4 protocol", "CT_UNKNOWN_L4_PROTOCOL"],
  [139, "UNKNOWN_L3", "Unsupported L3 protocol", "UNSUPPORTED_L3_PROTOCOL"],
  [140, "MISSED_TAIL_CALL", "Missed tail call", "MISSED_TAIL_CALL"],
  [141, "WRITE_ERROR", "Error writing to packet", "ERROR_WRITING_TO_PACKET"],
  [142, "UNKNOWN_L4", "Unknown L4 protocol", "UNKNOWN_L4_PROTOCOL"],
  [143, "UNKNOWN_ICMP_CODE", "Unknown ICMPv4 code", "UNKNOWN_ICMPV4_CODE"],
  [144, "UNKNOWN_ICMP_TYPE", "Unknown ICMPv4 type", "UNKNOWN_ICMPV4_TYPE"],
  [145, "UNKNOWN_ICMP6_CODE", "Unknown ICMPv6 code", "UNKNOWN_ICMPV6_CODE"],
  [146, "UNKNOWN_ICMP6_TYPE", "Unknown ICMPv6 type", "UNKNOWN_ICMPV6_TYPE"],
  [147, "NO_TUNNEL_KEY", "Error retrieving tunnel key", "ERROR_RETRIEVING_TUNNEL_KEY"],
  [150, "UNKNOWN_TARGET", "Unknown L3 target address", "UNKNOWN_L3_TARGET_ADDRESS"],
  [151, "UNROUTABLE", "Stale or unroutable IP", "STALE_OR_UNROUTABLE_IP"],
  [153, "CSUM_L3", "Error while correcting L3 checksum", "ERROR_WHILE_CORRECTING_L3_CHECKSUM"],
  [154, "CSUM_L4", "Error while correcting L4 checksum", "ERROR_WHILE_CORRECTING_L4_CHECKSUM"],
  [155, "CT_CREATE_FAILED", "CT: Map insertion failed", "CT_MAP_INSERTION_FAILED"],
  [156, "INVALID_EXTHDR", "Invalid IPv6 extension header", "INVALID_IPV6_EXTENSION_HEADER"],
  [157, "FRAG_NOSUPPORT", "IP fragmentation not supported", "IP_FRAGMENTATION_NOT_SUPPORTED"],
  [158, "NO_SERVICE", "Service backend not found", "SERVICE_BACKEND_NOT_FOUND"],
  [
    160,
    "NO_TUNNEL_ENDPOINT",
    "No tunnel/encapsulation endpoint (datapath BUG!)",
    "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT",
  ],
  [163, "UNKNOWN_CT", "Unknown connection tracking state", "UNKNOWN_CONNECTION_TRACKING_STATE"],
  [164, "HOST_UNREACHABLE", "Local host is unreachable", "LOCAL_HOST_IS_UNREACHABLE"],
  [
    165,
    "NO_CONFIG",
    "No configuration available to perform policy decision",
    "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION",
  ],
  [166, "UNSUPPORTED_L2", "Unsupported L2 protocol", "UNSUPPORTED_L2_PROTOCOL"],
  [167, "NAT_NO_MAPPING", "No mapping for NAT masquerade", "NO_MAPPING_FOR_NAT_MASQUERADE"],
  [
    168,
    "NAT_UNSUPP_PROTO",
    "Unsupported protocol for NAT masquerade",
    "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE",
  ],
  [169, "NO_FIB", "FIB lookup failed", "FIB_LOOKUP_FAILED"],
  [171, "INVALID_IDENTITY", "Invalid identity", "INVALID_IDENTITY"],
  [172, "UNKNOWN_SENDER", "Unknown sender", "UNKNOWN_SENDER"],
  [
    175,
    "FRAG_NOT_FOUND",
    "First logical datagram fragment not found",
    "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
  ],
  [176, "FORBIDDEN_ICMP6", "Forbidden ICMPv6 message", "FORBIDDEN_ICMPV6_MESSAGE"],
  [178, "PROXY_LOOKUP_FAILED", "Socket lookup failed", "SOCKET_LOOKUP_FAILED"],
  [179, "PROXY_SET_FAILED", "Socket assign failed", "SOCKET_ASSIGN_FAILED"],
  [
    180,
    "PROXY_UNKNOWN_PROTO",
    "Proxy redirection not supported for protocol",
    "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL",
  ],
  [181, "POLICY_DENY", "Policy denied by denylist", "POLICY_DENY"],
  [183, "INVALID_VNI", "Incorrect VNI from VTEP", "INVALID_VNI"],
  [189, "POLICY_AUTH_REQUIRED", "Authentication required", "AUTH_REQUIRED"],
  [196, "TTL_EXCEEDED", "TTL exceeded", "TTL_EXCEEDED"],
  [203, "EP_NOT_READY", "Endpoint is not ready", "DROP_EP_NOT_READY"],
];

/** Policy verdicts as stored in the BPF policy map and returned by the engine. */
export const VERDICTS: ReadonlyArray<readonly [number, string, string]> = [
  [0, "NONE", "no entry (the direction's default applies)"],
  [1, "ALLOW", "allowed"],
  [2, "DENY", "denied by a deny rule"],
  [3, "REDIRECT", "allowed at L3/L4 and redirected to the L7 proxy"],
  [
    4,
    "AUDIT",
    "passed although an audit-mode policy would drop it (cookie: its deny rule's, or 0 for " +
    "its default deny)",
  ],
];
