/* ICMPv6 errors about IPv6 NodePort flows (nodeport6.h, 7.), the IPv6 counterpart of what
 * nat_icmp.h does for masquerade: a Destination Unreachable, Packet Too Big, Time Exceeded or
 * Parameter Problem about a translated packet reaches the peer that sent the original, with the
 * outer and the embedded headers translated the way cilia_snat6's entry translates the flow, so
 * that the client's socket (it knows only the frontend) or PMTU discovery sees it. It owns no
 * maps and decides no policy.
 *
 * Invariants:
 * 1. Only an ICMPv6 error directly after the IPv6 header whose embedded packet is TCP or UDP
 *    (parse.h's inner tuple; no extension headers inside but dsr6.h's, which a DSR backend got
 *    and sends back) is looked at; the entry is the one
 *    that translates the reply direction of the embedded packet at this hook. Anything else
 *    goes on unchanged (NP6_CONTINUE), as today.
 * 2. Egress, NP_LOCAL (a backend of this node answering, or a DSR backend, dsr6.h): the
 *    embedded {C:c → B:b} becomes {C:c → S:s}, and an outer source B becomes S (an error from
 *    a router keeps its own address).
 * 3. Ingress, NP_REV (a remote backend reached with SNAT): the error sent to node6 about
 *    {node6:n → B:b} becomes one to C about {C:c → S:s}, outer source B → S likewise, and is
 *    redirected like the flow's replies.
 * 4. The ICMPv6 checksum is updated for every changed byte (outer addresses through the pseudo
 *    header, embedded bytes as data). The embedded TCP/UDP checksum is left as it is (the
 *    kernel's NAT does the same; nobody checks it). A write that fails drops (DROP_CSUM_L4).
 */
#pragma once

#include "nat6.h"

#define ICMP6_CSUM_OFF (ETH_HLEN + 40 + 2)
#define ICMP6_INNER (ETH_HLEN + 40 + 8) /* the embedded IPv6 header */

/* 4.: 16 bytes at off from old to new, the ICMPv6 checksum with them. */
static __always_inline int icmp6_set_addr(struct __sk_buff *skb, __u32 off, const __u8 *old,
					  const __u8 *new, int pseudo)
{
	__s64 sum = bpf_csum_diff((__be32 *)old, 16, (__be32 *)new, 16, 0);

	if (sum < 0 ||
	    bpf_l4_csum_replace(skb, ICMP6_CSUM_OFF, 0, sum, pseudo ? BPF_F_PSEUDO_HDR : 0) < 0 ||
	    bpf_skb_store_bytes(skb, off, new, 16, 0) < 0)
		return DROP_CSUM_L4;
	return 0;
}

/* 4.: a 2-byte port at off. */
static __always_inline int icmp6_set_port(struct __sk_buff *skb, __u32 off, __be16 old, __be16 new)
{
	if (bpf_l4_csum_replace(skb, ICMP6_CSUM_OFF, old, new, 2) < 0 ||
	    bpf_skb_store_bytes(skb, off, &new, 2, 0) < 0)
		return DROP_CSUM_L4;
	return 0;
}

/* 2./3.: rewrites the error in place by e; 0 or a DROP_* reason. w->p.tuple follows the outer
 * header (for the redirect). */
static __always_inline int nat6_icmp_rewrite(struct __sk_buff *skb, struct np6_scratch *w,
					     const struct nat6_entry *e)
{
	struct ct_tuple *in = &w->p.inner, *out = &w->p.tuple;
	int ret = 0;

	if (addr_eq16(out->saddr, in->daddr)) { /* the backend itself answered: S */
		ret = icmp6_set_addr(skb, ETH_HLEN + 8, out->saddr, e->saddr, 1);
		addr_copy16(out->saddr, e->saddr);
	}
	if (!ret && !addr_zero16(e->daddr)) { /* 3.: to the client, about its own packet */
		ret = icmp6_set_addr(skb, ETH_HLEN + 24, out->daddr, e->daddr, 1);
		if (!ret)
			ret = icmp6_set_addr(skb, ICMP6_INNER + 8, in->saddr, e->daddr, 0);
		if (!ret)
			ret = icmp6_set_port(skb, w->inner_l4, in->sport, e->dport);
		addr_copy16(out->daddr, e->daddr);
	}
	if (!ret)
		ret = icmp6_set_addr(skb, ICMP6_INNER + 24, in->daddr, e->saddr, 0);
	if (!ret)
		ret = icmp6_set_port(skb, w->inner_l4 + 2, in->dport, e->sport);
	return ret;
}

/* 1.: the entry for the error in w->p at dir's hook, or 0. */
static __always_inline struct nat6_entry *nat6_icmp_entry(struct __sk_buff *skb,
							  struct np6_scratch *w, __u8 dir)
{
	struct ct_tuple *in = &w->p.inner;
	struct nat6_entry *e;
	__u8 nh;

	if (!w->p.has_inner || in->family != FAMILY_IPV6 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 6, &nh, 1) < 0 || nh != PROTO_ICMPV6)
		return 0;
	w->inner_l4 = ICMP6_INNER + 40;
	if (in->proto == DSR6_NEXTHDR) { /* 1.: the packet as a DSR backend got it */
		if (bpf_skb_load_bytes(skb, ICMP6_INNER + 40, w->ext, 2) < 0 ||
		    w->ext[1] != DSR6_HDR_EXT_LEN ||
		    bpf_skb_load_bytes(skb, ICMP6_INNER + 40 + DSR6_EXT_LEN, &w->ext[2], 4) < 0)
			return 0;
		in->proto = w->ext[0];
		__builtin_memcpy(&in->sport, &w->ext[2], 2);
		__builtin_memcpy(&in->dport, &w->ext[4], 2);
		w->inner_l4 += DSR6_EXT_LEN;
	}
	if (in->proto != PROTO_TCP && in->proto != PROTO_UDP)
		return 0;
	addr_copy16(w->rk.saddr, in->daddr);
	addr_copy16(w->rk.daddr, in->saddr);
	w->rk.sport = in->dport;
	w->rk.dport = in->sport;
	w->rk.proto = in->proto;
	w->rk.dir = dir;
	w->rk.pad = 0;
	e = bpf_map_lookup_elem(&cilia_snat6, &w->rk);
	if (!e || e->kind != (dir == NAT_DIR_EGRESS ? NAT_K_NP_LOCAL : NAT_K_NP_REV))
		return 0;
	return e;
}
