// The one table of drop reasons (Cilium's numbers and Hubble's wording) and of the verdicts shared
// by the kernel datapath, the WASM engine and TypeScript. `deno task gen` writes
// bpf/lib/drop_reasons.generated.h and policy-wasm/assembly/drop_reasons.generated.ts (both with
// the verdicts), policy-wasm/src/drop_reasons.generated.ts and, for the verdicts,
// policy-wasm/src/constants.generated.ts from it; tests/policy/determinism_test.ts checks that the
// committed copies are current. The other shared constants are in constants.ts.

/** [code, C name, description]; codes and wording as Cilium's bpf/lib/common.h and Hubble. */
export const DROP_REASONS: ReadonlyArray<readonly [number, string, string]> = [
  [130, "INVALID_SMAC", "Invalid source mac"],
  [131, "INVALID_DMAC", "Invalid destination mac"],
  [132, "INVALID_SIP", "Invalid source ip"],
  [133, "POLICY", "Policy denied"],
  [134, "INVALID", "Invalid packet"],
  [135, "CT_INVALID_HDR", "CT: Truncated or invalid header"],
  [136, "FRAG_NEEDED", "Fragmentation needed"],
  [137, "CT_UNKNOWN_PROTO", "CT: Unknown L4 protocol"],
  [139, "UNKNOWN_L3", "Unsupported L3 protocol"],
  [140, "MISSED_TAIL_CALL", "Missed tail call"],
  [141, "WRITE_ERROR", "Error writing to packet"],
  [142, "UNKNOWN_L4", "Unknown L4 protocol"],
  [143, "UNKNOWN_ICMP_CODE", "Unknown ICMPv4 code"],
  [144, "UNKNOWN_ICMP_TYPE", "Unknown ICMPv4 type"],
  [145, "UNKNOWN_ICMP6_CODE", "Unknown ICMPv6 code"],
  [146, "UNKNOWN_ICMP6_TYPE", "Unknown ICMPv6 type"],
  [147, "NO_TUNNEL_KEY", "Error retrieving tunnel key"],
  [150, "UNKNOWN_TARGET", "Unknown L3 target address"],
  [151, "UNROUTABLE", "Stale or unroutable IP"],
  [153, "CSUM_L3", "Error while correcting L3 checksum"],
  [154, "CSUM_L4", "Error while correcting L4 checksum"],
  [155, "CT_CREATE_FAILED", "CT: Map insertion failed"],
  [156, "INVALID_EXTHDR", "Invalid IPv6 extension header"],
  [157, "FRAG_NOSUPPORT", "IP fragmentation not supported"],
  [158, "NO_SERVICE", "Service backend not found"],
  [160, "NO_TUNNEL_ENDPOINT", "No tunnel/encapsulation endpoint (datapath BUG!)"],
  [163, "UNKNOWN_CT", "Unknown connection tracking state"],
  [164, "HOST_UNREACHABLE", "Local host is unreachable"],
  [165, "NO_CONFIG", "No configuration available to perform policy decision"],
  [166, "UNSUPPORTED_L2", "Unsupported L2 protocol"],
  [169, "NO_FIB", "FIB lookup failed"],
  [171, "INVALID_IDENTITY", "Invalid identity"],
  [172, "UNKNOWN_SENDER", "Unknown sender"],
  [175, "FRAG_NOT_FOUND", "First logical datagram fragment not found"],
  [176, "FORBIDDEN_ICMP6", "Forbidden ICMPv6 message"],
  [178, "PROXY_LOOKUP_FAILED", "Socket lookup failed"],
  [179, "PROXY_SET_FAILED", "Socket assign failed"],
  [180, "PROXY_UNKNOWN_PROTO", "Proxy redirection not supported for protocol"],
  [181, "POLICY_DENY", "Policy denied by denylist"],
  [183, "INVALID_VNI", "Incorrect VNI from VTEP"],
  [189, "POLICY_AUTH_REQUIRED", "Authentication required"],
  [196, "TTL_EXCEEDED", "TTL exceeded"],
  [203, "EP_NOT_READY", "Endpoint is not ready"],
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
