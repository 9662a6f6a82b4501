/* IPv6 neighbour discovery of a pod, answered or ended at its host-side veth (as Cilium's
 * icmp6_handle_ns). The pods' IPv6 router (agent/endpoint/netdev.ts IPV6_GATEWAY, here as
 * ND_ROUTER6_W*: tests/datapath/nd_test.ts checks the answer's source against the agent's) is
 * on no interface: the host side has no IPv6 address at all, so the node's stack never answers a
 * Neighbour Solicitation for it. The agent gives each pod a permanent neighbour entry for it, but
 * the kernel flushes permanent entries when a link goes down, and a pod may flush its table
 * itself; the datapath then answers for the router, with the host side's MAC the agent wrote in
 * the endpoint entry (endpoint.h). A pod that spoofs the source gets the answer itself: it goes
 * back out of the veth it came in on, to the sender's MAC.
 *
 * Invariants:
 * 1. Only a well-formed solicitation from the pod is answered: IPv6 with ICMPv6 as the next
 *    header (no extension headers), hop limit 255, ICMPv6 code 0, a valid checksum, 24 bytes
 *    or 32 (one option, the source's link-layer address), target the router, sent to the
 *    target's solicited-node group or to the target itself, from a specified address (DAD
 *    probes are never answered: the address is not the pod's to claim) and an endpoint entry
 *    that has the host side's MAC. Anything else gets ND_PASS: the caller passes it as before.
 * 2. The answer is the solicitation rewritten in place (RFC 4861 7.2.4): a solicited Neighbour
 *    Advertisement with the router and override flags and the target's link-layer address
 *    option, from the router to the solicitation's source, hop limit 255. It leaves through the
 *    host side's egress (bpf_redirect), so the pod's ingress program sees it as it sees any
 *    packet into the pod (ND passes there without policy, enforce.h 3.).
 * 3. MLD reports and router solicitations from the pod are dropped here, silently. The node
 *    has no multicast router and sends no router advertisements, so nothing on it uses them,
 *    yet each one went up its stack, whose route lookup for a multicast destination walks the
 *    ff00::/8 route of every endpoint's host side (docs/architecture.md, CNI). They are the
 *    pod's kernel doing its duty on any link, not traffic a policy decided about: no drop
 *    event, no metric, as for a packet the pod never sent.
 * 4. No stack: cil_from_container's frame held ~504 of the 512 bytes the verifier allows for
 *    the whole call chain (408 since enforce.h, 9.). The frame is built in a per-CPU scratch
 *    map, whose key is a read-only constant.
 */
#pragma once

#include "common.h"
#include "endpoint.h"

/* fe80::1 as four 32-bit words in network order (word 0 and word 3; 1 and 2 are zero). */
#define ND_ROUTER6_W0 bpf_htonl(0xfe800000)
#define ND_ROUTER6_W3 bpf_htonl(1)

#define ND_PASS (-1)

#define ICMP6_MLD_REPORT 131
#define ICMP6_MLD_DONE 132
#define ICMP6_ROUTER_SOLICIT 133
#define ICMP6_NEIGH_SOLICIT 135
#define ICMP6_NEIGH_ADVERT 136
#define ICMP6_MLD2_REPORT 143

/* Offsets in the frame: Ethernet, IPv6 (no extension headers), ICMPv6 NS/NA. */
#define ND_IP6 ETH_HLEN
#define ND_PLEN (ND_IP6 + 4)
#define ND_NEXTHDR (ND_IP6 + 6)
#define ND_HOPLIMIT (ND_IP6 + 7)
#define ND_SADDR (ND_IP6 + 8)
#define ND_DADDR (ND_IP6 + 24)
#define ND_ICMP6 (ND_IP6 + 40)
#define ND_TARGET (ND_ICMP6 + 8)
#define ND_OPT (ND_ICMP6 + 24)
#define ND_MIN_LEN ND_OPT	  /* a solicitation without options: 78 bytes */
#define ND_FRAME_LEN (ND_OPT + 8) /* with one link-layer address option: 86 bytes */

struct nd_scratch {
	__u8 f[ND_FRAME_LEN + 2]; /* + 2: a size the map rounds anyway */
	__be32 pseudo[2];	  /* the pseudo-header's upper-layer length and next header */
	__u32 ifindex;		  /* where the answer goes */
	__u32 plen;		  /* the message's length */
	__u8 host_mac[6];	  /* the answer's */
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct nd_scratch);
	__uint(max_entries, 1);
} cilia_nd_scratch SEC(".maps");

static const __u32 nd_scratch_slot = 0;

static __always_inline __u32 nd_word(const __u8 *f, __u32 off)
{
	return *(const __u32 *)&f[off];
}

static __always_inline int nd_is_router(const __u8 *f, __u32 off)
{
	return nd_word(f, off) == ND_ROUTER6_W0 && nd_word(f, off + 4) == 0 &&
	       nd_word(f, off + 8) == 0 && nd_word(f, off + 12) == ND_ROUTER6_W3;
}

/* ff02::1:ffXX:XXXX, XX:XXXX the last 24 bits of the target (RFC 4291 2.7.1). */
static __always_inline int nd_is_solicited_node(const __u8 *f)
{
	return nd_word(f, ND_DADDR) == bpf_htonl(0xff020000) && nd_word(f, ND_DADDR + 4) == 0 &&
	       nd_word(f, ND_DADDR + 8) == bpf_htonl(1) && f[ND_DADDR + 12] == 0xff &&
	       f[ND_DADDR + 13] == f[ND_TARGET + 13] && f[ND_DADDR + 14] == f[ND_TARGET + 14] &&
	       f[ND_DADDR + 15] == f[ND_TARGET + 15];
}

/* The ICMPv6 checksum's sum over the pseudo-header and the message (s->plen bytes: 24 or 32),
 * folded to 16 bits (0xffff for a message whose checksum is right). Not inlined: alone, only s
 * and the running sum outlive its calls, so it needs no stack either (invariant 4). */
static __noinline __u32 nd_csum(struct nd_scratch *s)
{
	__u32 sum;

	s->pseudo[0] = bpf_htonl(s->plen);
	s->pseudo[1] = bpf_htonl(PROTO_ICMPV6);
	sum = bpf_csum_diff(0, 0, (__be32 *)&s->f[ND_SADDR], 32, 0);
	sum = bpf_csum_diff(0, 0, s->pseudo, sizeof(s->pseudo), sum);
	if (s->plen == ND_FRAME_LEN - ND_ICMP6)
		sum = bpf_csum_diff(0, 0, (__be32 *)&s->f[ND_ICMP6], ND_FRAME_LEN - ND_ICMP6, sum);
	else
		sum = bpf_csum_diff(0, 0, (__be32 *)&s->f[ND_ICMP6], ND_MIN_LEN - ND_ICMP6, sum);
	sum = (sum & 0xffff) + (sum >> 16);
	return (sum & 0xffff) + (sum >> 16);
}

/* Invariant 1: the solicitation in f (plen bytes of ICMPv6) is one to answer. */
static __always_inline int nd_ns_valid(struct nd_scratch *s)
{
	const __u8 *f = s->f;

	if (f[ND_NEXTHDR] != PROTO_ICMPV6 || f[ND_HOPLIMIT] != 255 || f[ND_ICMP6 + 1] != 0)
		return 0;
	if (!nd_is_router(f, ND_TARGET) || addr_zero16(&f[ND_SADDR]))
		return 0;
	if (!nd_is_solicited_node(f) && !nd_is_router(f, ND_DADDR))
		return 0;
	if (s->plen == ND_FRAME_LEN - ND_ICMP6 && f[ND_OPT + 1] == 0)
		return 0; /* an option of length 0 (RFC 4861 7.1.1) */
	return nd_csum(s) == 0xffff;
}

/* Invariant 2: f becomes the advertisement, in place. */
static __always_inline void nd_na_build(struct nd_scratch *s)
{
	__u8 *f = s->f;

	__builtin_memcpy(&f[0], &f[6], 6);
	__builtin_memcpy(&f[6], s->host_mac, 6);
	*(__u32 *)&f[ND_IP6] = bpf_htonl(0x60000000);
	f[ND_PLEN] = 0;
	f[ND_PLEN + 1] = ND_FRAME_LEN - ND_ICMP6;
	addr_copy16(&f[ND_DADDR], &f[ND_SADDR]);
	addr_copy16(&f[ND_SADDR], &f[ND_TARGET]);
	f[ND_ICMP6] = ICMP6_NEIGH_ADVERT;
	*(__u16 *)&f[ND_ICMP6 + 2] = 0;
	*(__u32 *)&f[ND_ICMP6 + 4] = bpf_htonl(0xe0000000); /* router, solicited, override */
	f[ND_OPT] = 2;					       /* target link-layer address */
	f[ND_OPT + 1] = 1;				       /* 8 bytes */
	__builtin_memcpy(&f[ND_OPT + 2], s->host_mac, 6);
	s->plen = ND_FRAME_LEN - ND_ICMP6;
	*(__u16 *)&f[ND_ICMP6 + 2] = ~nd_csum(s);
}

/* A solicitation for the router answered (TC_ACT_REDIRECT), or ND_PASS. What outlives a helper
 * call is in the scratch, so only skb and it stay in registers (invariant 4). */
static __always_inline int nd_answer(struct __sk_buff *skb, const struct endpoint_info *ep,
				     __u32 ifindex)
{
	struct nd_scratch *s = bpf_map_lookup_elem(&cilia_nd_scratch, &nd_scratch_slot);
	__u32 plen;

	if (!s || (ep->host_mac[0] | ep->host_mac[1] | ep->host_mac[2] | ep->host_mac[3] |
		   ep->host_mac[4] | ep->host_mac[5]) == 0)
		return ND_PASS;
	__builtin_memcpy(s->host_mac, ep->host_mac, 6);
	s->ifindex = ifindex;
	if (bpf_skb_load_bytes(skb, 0, s->f, ND_MIN_LEN) < 0)
		return ND_PASS;
	plen = ((__u32)s->f[ND_PLEN] << 8) | s->f[ND_PLEN + 1];
	if (plen != ND_MIN_LEN - ND_ICMP6 && plen != ND_FRAME_LEN - ND_ICMP6)
		return ND_PASS;
	if (skb->len < ND_ICMP6 + plen)
		return ND_PASS;
	s->plen = plen;
	if (plen == ND_FRAME_LEN - ND_ICMP6 &&
	    bpf_skb_load_bytes(skb, ND_OPT, &s->f[ND_OPT], ND_FRAME_LEN - ND_OPT) < 0)
		return ND_PASS;
	if (!nd_ns_valid(s))
		return ND_PASS;
	nd_na_build(s);
	/* Failures past this point may leave the packet half rewritten: never pass it on. */
	if (skb->len != ND_FRAME_LEN && bpf_skb_change_tail(skb, ND_FRAME_LEN, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, s->f, ND_FRAME_LEN, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(s->ifindex, 0);
}

/* What happens to ND/MLD from the pod (p: the parsed packet, icmp_type its ICMPv6 type):
 * answered (TC_ACT_REDIRECT), dropped silently (TC_ACT_SHOT, invariant 3) or ND_PASS. Not
 * inlined, and without stack of its own (invariant 4). */
static __noinline int nd_from_endpoint(struct __sk_buff *skb, const struct endpoint_info *ep,
				       __u32 ifindex, __u32 icmp_type)
{
	switch (icmp_type) {
	case ICMP6_NEIGH_SOLICIT:
		return nd_answer(skb, ep, ifindex);
	case ICMP6_MLD_REPORT:
	case ICMP6_MLD_DONE:
	case ICMP6_MLD2_REPORT:
	case ICMP6_ROUTER_SOLICIT:
		return TC_ACT_SHOT;
	default:
		return ND_PASS;
	}
}
