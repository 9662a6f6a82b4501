/* The packet rewrites of lib/lb.h (its invariant 5.: a rewrite that fails drops with
 * DROP_CSUM_L4; the IP and TCP/UDP checksums are fixed, a UDP checksum of 0 stays 0): the address
 * and port of a service connection's packet, IPv4 and IPv6. lb.h and nat6.h use them.
 */
#pragma once

#include "common.h"
#include "parse.h"

/* 5.: the port half of a rewrite (after the address): the source (src = 1) or destination port
 * at l4 and its TCP/UDP checksum at l4 + csum_off. */
static __always_inline int lb_rewrite_port(struct __sk_buff *skb, __u32 l4, __u32 csum_off,
					   __u64 mangled, int src, __be16 old_port,
					   __be16 new_port)
{
	if (old_port == new_port)
		return 0;
	if (bpf_l4_csum_replace(skb, l4 + csum_off, old_port, new_port, mangled | 2) < 0 ||
	    bpf_skb_store_bytes(skb, l4 + (src ? 0 : 2), &new_port, 2, 0) < 0)
		return DROP_CSUM_L4;
	return 0;
}
/* 5.: rewrites the source (src = 1) or destination address and port of an IPv4 TCP/UDP packet. */
static __always_inline int lb_rewrite(struct __sk_buff *skb, int src, __be32 old_ip,
				      __be32 new_ip, __be16 old_port, __be16 new_port, __u8 proto)
{
	__u8 vhl;
	__u32 l4, csum_off = proto == PROTO_UDP ? 6 : 16;
	__u64 mangled = proto == PROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &vhl, 1) < 0)
		return DROP_CSUM_L4;
	l4 = ETH_HLEN + (__u32)(vhl & 0xf) * 4;
	if (bpf_l4_csum_replace(skb, l4 + csum_off, old_ip, new_ip,
				BPF_F_PSEUDO_HDR | mangled | 4) < 0 ||
	    bpf_l3_csum_replace(skb, ETH_HLEN + 10, old_ip, new_ip, 4) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + (src ? 12 : 16), &new_ip, 4, 0) < 0)
		return DROP_CSUM_L4;
	return lb_rewrite_port(skb, l4, csum_off, mangled, src, old_port, new_port);
}

/* 5., IPv6: rewrites the source (src = 1) or destination address and port; the TCP/UDP checksum
 * gets the address change through its pseudo header. TCP/UDP must follow the fixed header. */
static __always_inline int lb6_rewrite(struct __sk_buff *skb, int src, const __u8 *old_ip,
				       const __u8 *new_ip, __be16 old_port, __be16 new_port,
				       __u8 proto)
{
	__u32 l4 = ETH_HLEN + 40, csum_off = proto == PROTO_UDP ? 6 : 16;
	__u64 mangled = proto == PROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u8 from[16], to[16], nh;
	__s64 sum;

	if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &nh, 1) < 0 || nh != proto)
		return DROP_INVALID_EXTHDR;
	__builtin_memcpy(from, old_ip, 16);
	__builtin_memcpy(to, new_ip, 16);
	sum = bpf_csum_diff((__be32 *)from, 16, (__be32 *)to, 16, 0);
	if (sum < 0 ||
	    bpf_l4_csum_replace(skb, l4 + csum_off, 0, sum, BPF_F_PSEUDO_HDR | mangled) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + (src ? 8 : 24), to, 16, 0) < 0)
		return DROP_CSUM_L4;
	return lb_rewrite_port(skb, l4, csum_off, mangled, src, old_port, new_port);
}

/* 5.: lb_rewrite or lb6_rewrite by family; addresses as 16 bytes (IPv4: the first 4). */
static __always_inline int lb_rewrite_addr(struct __sk_buff *skb, int src, const __u8 *old_ip,
					   const __u8 *new_ip, __be16 old_port, __be16 new_port,
					   const struct ct_tuple *t)
{
	if (t->family == FAMILY_IPV6)
		return lb6_rewrite(skb, src, old_ip, new_ip, old_port, new_port, t->proto);
	return lb_rewrite(skb, src, *(const __be32 *)old_ip, *(const __be32 *)new_ip, old_port,
			  new_port, t->proto);
}
