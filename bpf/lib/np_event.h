/* Events of the underlay device's programs (host.c: nat.h, nodeport.h, nodeport6.h) in the shared
 * ring (events.h): every drop there, and one trace per new NodePort/LoadBalancer connection. It
 * owns no map and decides nothing; callers say what happened, this file says it to the monitor.
 *
 * Invariants:
 * 1. Only a drop or a new connection sends (nodeport.h, 11.): established NodePort traffic,
 *    masquerade and native pod traffic through the device do no work of this file's.
 * 2. No header on the caller's stack: the record is reserved in the ring and filled in place by
 *    one function that is not inlined (cil_from_netdev's frame is near the verifier's 512 bytes;
 *    this one's, one ipcache key, comes on top).
 * 3. A record says: ep_id 0 (no endpoint program saw the packet), dir the hook's (DIR_INGRESS
 *    for the device's ingress, DIR_EGRESS for its egress), family, proto and ports read from the
 *    captured packet (IPv4 with options, IPv6 without extension headers; else ports 0), both
 *    identities from the ipcache by the packet's addresses (reserved:world when none), svc_id
 *    the service when the caller knows it, and in `cookie` the frontend's port (host order) the
 *    packet was sent to (0: none). The packet is captured as it is at the call.
 * 4. An event that finds the ring full is counted in cilia_events_lost, as every other event; the
 *    packet's fate never depends on its event.
 */
#pragma once

#include "common.h"
#include "events.h"
#include "ipcache.h"
#include "metrics.h"

/* What an event is, as np_event_send()'s second argument. */
#define NP_EVENT(type, subtype, dir) ((__u32)(type) | (__u32)(subtype) << 8 | (__u32)(dir) << 16)
/* The service, as its third: the id and the frontend port (host order) it was reached by. */
#define NP_SVC(id, port) ((__u32)(id) | (__u32)(port) << 16)

/* Invariant 3.: the ipcache identity of a captured address (IPv4: 4 bytes, the rest of key->addr
 * stays zero). */
static __always_inline __u32 np_event_identity(struct ipcache_key *key, const __u8 *addr, int v6)
{
	struct ipcache_value *v;

	if (v6)
		__builtin_memcpy(key->addr, addr, 16);
	else
		__builtin_memcpy(key->addr, addr, 4);
	v = bpf_map_lookup_elem(&cilia_ipcache, key);
	return v ? v->identity : IDENTITY_WORLD;
}

/* Invariants 2. and 3.: one record, 0 or -1 (ring full, counted). Its own stack is one ipcache
 * key. */
static __noinline int np_event_send(struct __sk_buff *skb, __u32 what, __u32 svc)
{
	struct ipcache_key key = { .prefixlen = 32 + 128 };
	struct cilia_event_rec *rec;
	__u32 cap, l4 = 0;
	__u64 *lost;
	int v6 = 0;
	__u8 *d;

	rec = bpf_ringbuf_reserve(&cilia_events, sizeof(*rec), 0);
	if (!rec) {
		lost = bpf_map_lookup_elem(&cilia_events_lost, &key.pad); /* slot 0 */
		if (lost)
			*lost += 1;
		return -1;
	}
	__builtin_memset(rec, 0, sizeof(*rec));
	d = rec->data;
	cap = skb->len;
	if (cap > EVENT_CAPTURE_LEN)
		cap = EVENT_CAPTURE_LEN;
	if (cap < 34 || bpf_skb_load_bytes(skb, 0, d, cap) < 0)
		cap = 0;
	rec->hdr.type = what & 0xff;
	rec->hdr.subtype = (what >> 8) & 0xff;
	rec->hdr.dir = (what >> 16) & 0xff;
	rec->hdr.svc_id = svc & 0xffff;
	rec->hdr.cookie = svc >> 16;
	rec->hdr.orig_len = skb->len;
	rec->hdr.ifindex = skb->ifindex;
	rec->hdr.cap_len = cap;
	if (cap >= 34 && d[12] == 0x08 && d[13] == 0x00) {
		key.family = FAMILY_IPV4;
		rec->hdr.proto = d[23];
		l4 = ETH_HLEN + (__u32)(d[14] & 0xf) * 4;
	} else if (cap >= 54 && d[12] == 0x86 && d[13] == 0xdd) {
		key.family = FAMILY_IPV6;
		rec->hdr.proto = d[20];
		l4 = ETH_HLEN + 40;
		v6 = 1;
	} else {
		bpf_ringbuf_submit(rec, BPF_RB_NO_WAKEUP);
		return 0;
	}
	rec->hdr.family = key.family;
	if ((rec->hdr.proto == PROTO_TCP || rec->hdr.proto == PROTO_UDP) &&
	    l4 <= EVENT_CAPTURE_LEN - 4 && l4 + 4 <= cap) {
		rec->hdr.sport = (__u16)d[l4] << 8 | d[l4 + 1];
		rec->hdr.dport = (__u16)d[l4 + 2] << 8 | d[l4 + 3];
	}
	rec->hdr.src_identity = np_event_identity(&key, d + (v6 ? 22 : 26), v6);
	rec->hdr.dst_identity = np_event_identity(&key, d + (v6 ? 38 : 30), v6);
	bpf_ringbuf_submit(rec, BPF_RB_NO_WAKEUP);
	return 0;
}

/* A drop of the underlay's (invariant 3.), counted in the metrics as before; TC_ACT_SHOT. */
static __always_inline int np_event_drop(struct __sk_buff *skb, int reason, __u8 dir, __u32 svc)
{
	metrics_count(reason, dir, skb->len);
	np_event_send(skb, NP_EVENT(EVENT_DROP, reason, dir), svc);
	return TC_ACT_SHOT;
}

/* The trace of a new NodePort/LoadBalancer connection at the device's ingress (invariant 3.). */
static __always_inline void np_event_new(struct __sk_buff *skb, __u32 svc)
{
	np_event_send(skb, NP_EVENT(EVENT_TRACE, TRACE_FROM_NETWORK, DIR_INGRESS), svc);
}
