/* Datapath events to the agent's monitor through one perf event array: drops, policy verdicts
 * for the first packet of a new flow, and traces of forwarded flows. Each record is a fixed
 * header followed by the first EVENT_CAPTURE_LEN bytes of the packet, appended by the helper
 * itself (the upper 32 bits of the flags), so no packet bytes are copied to the stack.
 * Nothing is rate-limited yet.
 */
#pragma once

#include "common.h"
#include "parse.h"

#define EVENT_CAPTURE_LEN 64

struct cilia_event {
	__u8 type;    /* EVENT_* */
	__u8 subtype; /* drop: DROP_*; policy verdict: DROP_* or 0; trace: TRACE_* */
	__u16 ep_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;
	__u8 dir; /* DIR_* */
	__u8 proto;
	__u8 verdict; /* VERDICT_* (policy verdict events) */
	__u8 match;   /* POLICY_MATCH_* (policy verdict events) */
	__u16 sport;  /* host order; ICMP: 0 */
	__u16 dport;  /* host order; ICMP: the type */
	__u32 cookie;
	__u32 orig_len;
	__u32 cap_len; /* packet bytes that follow this header */
	__u8 family;
	__u8 ct_state; /* CT_* */
	__u16 pad;
};
_Static_assert(sizeof(struct cilia_event) == 40, "cilia_event size");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} cilia_events SEC(".maps");

/* Not inlined: it keeps the event layout in the object's BTF and the callers' stacks small. */
static __noinline int event_send(struct __sk_buff *skb, struct cilia_event *ev)
{
	__u64 cap = skb->len < EVENT_CAPTURE_LEN ? skb->len : EVENT_CAPTURE_LEN;

	ev->orig_len = skb->len;
	ev->cap_len = cap;
	ev->ifindex = skb->ifindex;
	return bpf_perf_event_output(skb, &cilia_events, (cap << 32) | BPF_F_CURRENT_CPU, ev,
				     sizeof(*ev));
}
