/* Datapath events to the agent's monitor through one BPF ring buffer shared by all CPUs: drops,
 * policy verdicts for the first packet of a new flow, and traces of forwarded flows. Each record
 * is a fixed header followed by EVENT_CAPTURE_LEN bytes of room for the start of the packet
 * (cap_len says how many are valid), reserved in the ring and filled in place, so nothing but the
 * header is built on the stack (the underlay device's programs send theirs through np_event.h,
 * which fills the header in the ring too). Records are submitted without a wake-up: the agent's
 * one reader polls the ring on a timer and never sleeps in epoll, so a wake-up per event would
 * only cost the sender. An event that finds the ring full is counted per CPU in
 * cilia_events_lost, which the reader reports as lost. Nothing is rate-limited yet.
 */
#pragma once

#include "common.h"
#include "parse.h"

#define EVENT_CAPTURE_LEN 64
/* 16 MiB: about 150k records, so a pause of the agent's reader (GC, a busy machine) of up to
 * ~0.7 s at 200k events/s loses nothing. */
#define EVENT_RING_BYTES (16 << 20)

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
	__u32 cookie; /* policy: the deciding entry's; underlay (np_event.h): a frontend's port */
	__u32 orig_len;
	__u32 cap_len; /* valid packet bytes in the record's data */
	__u8 family;
	__u8 ct_state; /* CT_* */
	__u16 svc_id;  /* the service the packet was translated for (lb.h), else 0 */
};
_Static_assert(sizeof(struct cilia_event) == 40, "cilia_event size");

/* One ring record: the header, then room for the first EVENT_CAPTURE_LEN bytes of the packet. */
struct cilia_event_rec {
	struct cilia_event hdr;
	__u8 data[EVENT_CAPTURE_LEN];
};
_Static_assert(sizeof(struct cilia_event_rec) == 104, "cilia_event_rec size");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENT_RING_BYTES);
} cilia_events SEC(".maps");

/* Events that found the ring full, per CPU (slot 0). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} cilia_events_lost SEC(".maps");

/* Not inlined: it keeps the event layout in the object's BTF and the callers' stacks small (it
 * uses no stack of its own: the lost counter's key is the caller's event, which is not sent). */
static __noinline int event_send(struct __sk_buff *skb, struct cilia_event *ev)
{
	struct cilia_event_rec *rec;
	__u64 *lost;
	__u32 cap;

	rec = bpf_ringbuf_reserve(&cilia_events, sizeof(*rec), 0);
	if (!rec) {
		ev->cap_len = 0; /* slot 0 of cilia_events_lost */
		lost = bpf_map_lookup_elem(&cilia_events_lost, &ev->cap_len);
		if (lost)
			*lost += 1;
		return -1;
	}
	cap = skb->len;
	if (cap > EVENT_CAPTURE_LEN)
		cap = EVENT_CAPTURE_LEN;
	ev->orig_len = skb->len;
	ev->ifindex = skb->ifindex;
	ev->cap_len = 0;
	if (cap > 0 && bpf_skb_load_bytes(skb, 0, rec->data, cap) == 0)
		ev->cap_len = cap;
	__builtin_memcpy(&rec->hdr, ev, sizeof(*ev));
	bpf_ringbuf_submit(rec, BPF_RB_NO_WAKEUP);
	return 0;
}
