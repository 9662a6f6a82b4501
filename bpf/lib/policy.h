/* The per-endpoint L3/L4 policy, one LPM trie for all endpoints keyed by endpoint id. The WASM
 * engine computes the entries; the agent splits port ranges into prefix-aligned blocks and writes
 * them here as map diffs. This header only looks entries up: it never decides what an entry
 * means beyond the precedence rules below.
 */
#pragma once

#include "common.h"

struct policy_key {
	__u32 prefixlen; /* 64 (proto 0) | 80 + port prefix bits */
	__u16 ep_id;
	__u8 egress; /* POLICY_DIR_INGRESS (0) | POLICY_DIR_EGRESS (1) */
	__u8 pad;
	__u32 identity; /* peer identity, 0 = any identity */
	__u8 proto;     /* 0 = any protocol */
	__u8 pad2;
	__be16 dport; /* ICMP/ICMPv6: the type */
};
_Static_assert(sizeof(struct policy_key) == 16, "policy_key size");

struct policy_value {
	__u8 verdict; /* VERDICT_ALLOW | VERDICT_DENY | VERDICT_REDIRECT | VERDICT_AUDIT */
	__u8 flags;   /* POLICY_F_* */
	__be16 proxy_port;
	__u32 cookie;
};
_Static_assert(sizeof(struct policy_value) == 8, "policy_value size");

/* --bpf-policy-map-max (-DCILIA_POLICY_MAX) */
#ifndef CILIA_POLICY_MAX
#define CILIA_POLICY_MAX (1 << 20)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	/* Shared by every endpoint of the node; nodes are allocated on demand (no prealloc), so the
	 * cap costs nothing until used: 10,000 peer identities × a few ports × tens of endpoints. */
	__uint(max_entries, CILIA_POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilia_policy SEC(".maps");

struct policy_result {
	__u8 verdict; /* VERDICT_* */
	__u8 reason;  /* DROP_* when the packet must be dropped, else 0 */
	__u8 match;   /* POLICY_MATCH_* */
	__u8 audit_reason; /* VERDICT_AUDIT: the DROP_* it would have had */
	__u32 cookie;
	__be16 proxy_port;
	__u16 pad2;
};

static __always_inline struct policy_value *policy_lookup_one(__u16 ep_id, __u8 egress,
							       __u32 identity, __u8 proto,
							       __u16 dport)
{
	struct policy_key key = {
		.prefixlen = POLICY_KEY_DATA_BITS,
		.ep_id = ep_id,
		.egress = egress,
		.identity = identity,
		.proto = proto,
		.dport = bpf_htons(dport),
	};

	return bpf_map_lookup_elem(&cilia_policy, &key);
}

/* Precedence (the engine pre-resolves entries so that these three steps give its verdict):
 * 1. Look up (ep, direction, peer identity, proto, dport) with a full-length key. The trie
 *    returns the longest matching prefix, so a proto+port entry beats a proto+port-block entry,
 *    which beats a proto-0 (L3) entry of the same identity.
 * 2. Only if step 1 found nothing, look up the same with identity 0 ("any identity" entries).
 * 3. Only if both found nothing, apply the direction's default: drop with DROP_POLICY when the
 *    endpoint is default-deny in that direction, else allow.
 * 4. An entry's verdict is final: DENY drops with DROP_POLICY_DENY, ALLOW passes.
 * 5. REDIRECT hands the flow to the L7 proxy listening on the entry's proxy port. An entry
 *    without a proxy port has no proxy to enforce its L7 rules, so the packet is dropped with
 *    DROP_PROXY_LOOKUP_FAILED: L7 rules are never silently skipped (fail closed).
 * 6. AUDIT passes like ALLOW (an audit-mode policy would have dropped the packet). The drop it
 *    would have had is DROP_POLICY_DENY when the entry carries a cookie (its deny rule's), else
 *    DROP_POLICY (the audit policy's default deny); the verdict event reports it.
 * 7. Any other verdict drops with DROP_POLICY (fail closed).
 */
static __always_inline void policy_decide(struct policy_result *res, __u16 ep_id, __u8 egress,
					  __u32 identity, __u8 proto, __u16 dport,
					  int default_deny)
{
	struct policy_value *v;
	__u8 match_l3 = POLICY_MATCH_L3;

	v = policy_lookup_one(ep_id, egress, identity, proto, dport);
	if (!v && identity != IDENTITY_ANY) {
		v = policy_lookup_one(ep_id, egress, IDENTITY_ANY, proto, dport);
		match_l3 = POLICY_MATCH_ANY_L3;
	}
	res->reason = 0;
	res->audit_reason = 0;
	res->cookie = 0;
	res->proxy_port = 0;
	if (!v) {
		res->match = POLICY_MATCH_NONE;
		res->verdict = default_deny ? VERDICT_DENY : VERDICT_ALLOW;
		res->reason = default_deny ? DROP_POLICY : 0;
		return;
	}
	/* The writer marks entries that carry a protocol, so events can say what matched. */
	res->match = match_l3 + ((v->flags & POLICY_F_L4) ? 1 : 0);
	res->verdict = v->verdict;
	res->cookie = v->cookie;
	res->proxy_port = v->proxy_port;
	if (v->verdict == VERDICT_DENY)
		res->reason = DROP_POLICY_DENY;
	else if (v->verdict == VERDICT_REDIRECT && !v->proxy_port)
		res->reason = DROP_PROXY_LOOKUP_FAILED; /* 5. no proxy: fail closed */
	else if (v->verdict == VERDICT_AUDIT)
		res->audit_reason = v->cookie ? DROP_POLICY_DENY : DROP_POLICY; /* 6. */
	else if (v->verdict != VERDICT_ALLOW && v->verdict != VERDICT_REDIRECT)
		res->reason = DROP_POLICY; /* 7. unknown verdict: fail closed */
}
