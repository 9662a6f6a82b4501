/* Connection tracking for the endpoint programs: one LRU hash for IPv4 and IPv6, keyed by the
 * original tuple plus the endpoint and the direction the flow was first seen in, so the source
 * endpoint's egress entry and the destination endpoint's ingress entry of a pod-to-pod flow on
 * one node stay separate. It classifies packets; it never decides policy.
 *
 * Invariants:
 * 1. An entry is stored in the orientation of its first packet (CT_NEW → created by the caller
 *    after policy allowed it); its dir is the direction of that first packet.
 * 2. A packet that matches an entry's tuple and dir is CT_ESTABLISHED (original direction): the
 *    caller checks policy again on every such packet, so a new deny cuts an established flow.
 * 3. A packet whose reversed tuple matches an entry with the opposite dir is CT_REPLY; an ICMP
 *    error whose inner packet belongs to an entry is CT_RELATED. Both pass without policy.
 * 4. Entries past `expires` (CLOCK_MONOTONIC: bpf_ktime_get_coarse_ns in enforce.h, 10.,
 *    bpf_ktime_get_ns in lb.h) count as absent; the agent's garbage collector
 *    (agent/datapath/conntrack_gc.ts) deletes them, and the LRU evicts under pressure.
 * 5. Lifetimes: TCP established (a reply was seen) 6 h; TCP before a reply 60 s; closing TCP
 *    (RST, or FIN both ways) 10 s; UDP, ICMP and others 60 s.
 * 6. An entry made by ct_create carries CT_F_REV_NAT_OWN: its rev_nat is the service id whose
 *    address the flow's replies get back as their source (lb.h, 4.), 0 for none. Entries without
 *    the flag (made by an older datapath) keep that in a DIR_SERVICE reverse entry.
 */
#pragma once

#include "common.h"
#include "parse.h"

#define NSEC_PER_SEC 1000000000ULL
#define CT_LIFETIME_TCP (21600 * NSEC_PER_SEC)
#define CT_LIFETIME_SYN (60 * NSEC_PER_SEC)
#define CT_LIFETIME_CLOSE (10 * NSEC_PER_SEC)
#define CT_LIFETIME_NONTCP (60 * NSEC_PER_SEC)

#define CT_F_SEEN_REPLY (1 << 0)
#define CT_F_REDIRECT (1 << 1)
#define CT_F_FIN_FWD (1 << 2)
#define CT_F_FIN_REV (1 << 3)
#define CT_F_RST (1 << 4)
#define CT_F_REV_NAT_OWN (1 << 5) /* 6. */

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

struct ct_key {
	struct ct_tuple tuple;
	__u16 ep_id;
	__u8 dir; /* DIR_* of the flow's first packet, seen from ep_id */
	__u8 pad;
};
_Static_assert(sizeof(struct ct_key) == 44, "ct_key size");

struct ct_entry {
	__u64 expires; /* CLOCK_MONOTONIC deadline (4.) */
	__u64 packets; /* both directions */
	__u64 bytes;
	__u32 peer_identity; /* at creation */
	__u8 flags;          /* CT_F_* */
	__u8 tcp_flags;      /* OR of all TCP flags seen */
	__u16 rev_nat;       /* the service's reverse-NAT id (lb.h; 6.); else 0 */
};
_Static_assert(sizeof(struct ct_entry) == 32, "ct_entry size");

/* One LRU table for TCP and every other protocol (the agent's --bpf-ct-max sets the size; the
 * build passes -DCILIA_CT_MAX). Full: an insert evicts the least recently used flow of any pod. */
#ifndef CILIA_CT_MAX
#define CILIA_CT_MAX 262144
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, CILIA_CT_MAX);
} cilia_ct SEC(".maps");

static __always_inline void ct_reverse(struct ct_tuple *dst, const struct ct_tuple *src)
{
	addr_copy16(dst->saddr, src->daddr);
	addr_copy16(dst->daddr, src->saddr);
	dst->sport = src->dport;
	dst->dport = src->sport;
	dst->proto = src->proto;
	dst->family = src->family;
	dst->pad[0] = 0;
	dst->pad[1] = 0;
}

static __always_inline struct ct_entry *ct_find(struct ct_key *key, __u64 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&cilia_ct, key);

	return e && e->expires > now ? e : 0;
}

static __always_inline __u64 ct_lifetime(const struct ct_entry *e)
{
	if (e->tcp_flags == 0)
		return CT_LIFETIME_NONTCP;
	if ((e->flags & CT_F_RST) ||
	    (e->flags & (CT_F_FIN_FWD | CT_F_FIN_REV)) == (CT_F_FIN_FWD | CT_F_FIN_REV))
		return CT_LIFETIME_CLOSE;
	return (e->flags & CT_F_SEEN_REPLY) ? CT_LIFETIME_TCP : CT_LIFETIME_SYN;
}

/* Accounts one packet on an existing entry and refreshes its lifetime. */
static __always_inline void ct_update(struct ct_entry *e, const struct pkt *p, int reply,
				      __u32 len, __u64 now)
{
	__u8 fl = p->tcp_flags;

	if (p->tuple.proto == PROTO_TCP) {
		/* A fresh SYN on a closing entry is a new connection on a reused tuple. */
		if (!reply && (fl & (TCP_SYN | TCP_ACK)) == TCP_SYN && ct_lifetime(e) == CT_LIFETIME_CLOSE)
			e->flags &= ~(CT_F_FIN_FWD | CT_F_FIN_REV | CT_F_RST | CT_F_SEEN_REPLY);
		e->tcp_flags |= fl | TCP_SYN; /* nonzero marks a TCP entry */
		if (fl & TCP_RST)
			e->flags |= CT_F_RST;
		if (fl & TCP_FIN)
			e->flags |= reply ? CT_F_FIN_REV : CT_F_FIN_FWD;
	}
	if (reply)
		e->flags |= CT_F_SEEN_REPLY;
	e->packets += 1;
	e->bytes += len;
	e->expires = now + ct_lifetime(e);
}

/* Classifies p for endpoint ep_id at hook direction dir (invariants 2 and 3). */
static __always_inline int ct_lookup(const struct pkt *p, __u16 ep_id, __u8 dir, __u64 now,
				     struct ct_entry **entry)
{
	__u8 other = dir == DIR_INGRESS ? DIR_EGRESS : DIR_INGRESS;
	struct ct_key key = { .ep_id = ep_id, .dir = dir };

	key.tuple = p->tuple;
	*entry = ct_find(&key, now);
	if (*entry)
		return CT_ESTABLISHED;
	key.dir = other;
	ct_reverse(&key.tuple, &p->tuple);
	*entry = ct_find(&key, now);
	if (*entry)
		return CT_REPLY;
	if (!p->has_inner)
		return CT_NEW;
	/* An ICMP error about a packet of the flow in its original direction (sent by us, so it
	 * was seen in the other direction) or about a reply (then the flow's dir is ours). */
	key.tuple = p->inner;
	*entry = ct_find(&key, now);
	if (*entry)
		return CT_RELATED;
	key.dir = dir;
	ct_reverse(&key.tuple, &p->inner);
	*entry = ct_find(&key, now);
	return *entry ? CT_RELATED : CT_NEW;
}

/* Creates (or replaces an expired) entry for a new flow whose replies get the address of
 * service rev_nat back (0: none; 6.); 0 or DROP_CT_CREATE_FAILED. */
static __always_inline int ct_create_nat(const struct pkt *p, __u16 ep_id, __u8 dir, __u32 peer,
					 int redirect, __u32 len, __u64 now, __u16 rev_nat)
{
	struct ct_key key = { .ep_id = ep_id, .dir = dir };
	struct ct_entry e = { .peer_identity = peer, .packets = 1, .bytes = len,
			      .flags = CT_F_REV_NAT_OWN, .rev_nat = rev_nat };

	key.tuple = p->tuple;
	if (redirect)
		e.flags |= CT_F_REDIRECT;
	if (p->tuple.proto == PROTO_TCP) {
		e.tcp_flags = p->tcp_flags | TCP_SYN;
		if (p->tcp_flags & TCP_RST)
			e.flags |= CT_F_RST;
		if (p->tcp_flags & TCP_FIN)
			e.flags |= CT_F_FIN_FWD;
	}
	e.expires = now + ct_lifetime(&e);
	return bpf_map_update_elem(&cilia_ct, &key, &e, BPF_ANY) < 0 ? DROP_CT_CREATE_FAILED : 0;
}

/* ct_create_nat for a flow that is not a service connection. */
static __always_inline int ct_create(const struct pkt *p, __u16 ep_id, __u8 dir, __u32 peer,
				     int redirect, __u32 len, __u64 now)
{
	return ct_create_nat(p, ep_id, dir, peer, redirect, len, now, 0);
}
