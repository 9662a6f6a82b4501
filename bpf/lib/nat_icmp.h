/* ICMP errors about masqueraded flows (nat.h, invariant 5): an error a host outside sends to the
 * node about a packet a pod sent through masquerade goes to that pod, with the embedded header
 * translated back, so PMTU discovery and unreachables work for pods as for the node. Called from
 * the underlay's ingress (nodeport.h). It owns no maps.
 */
#pragma once

#include "nat.h"

/* 5.: an ICMP error to the node about a masqueraded flow goes to the pod, inner header too. */
static __always_inline int nat_icmp_error_in(struct __sk_buff *skb, struct nat_pkt *n)
{
	struct nat_key rk = {};
	struct nat_entry *e;
	__u32 inner = n->l4 + 8, ihl, sum_off;
	__be32 old_ip, new_ip;
	__be16 old_port, new_port;
	__u8 vhl;

	if (!n->p.has_inner || n->p.inner.family != FAMILY_IPV4)
		return 0;
	/* The embedded packet is one the node sent: {node:n → D:d}; its reply key is reversed. */
	rk.saddr = *(const __be32 *)n->p.inner.daddr;
	rk.daddr = *(const __be32 *)n->p.inner.saddr;
	rk.sport = n->p.inner.dport;
	rk.dport = n->p.inner.sport;
	rk.proto = n->p.inner.proto;
	rk.dir = NAT_DIR_INGRESS;
	e = bpf_map_lookup_elem(&cilia_snat, &rk);
	if (!e || e->kind != NAT_K_MASQ)
		return 0;
	old_ip = rk.daddr;
	new_ip = e->daddr;
	old_port = rk.dport;
	new_port = e->dport;
	if (bpf_skb_load_bytes(skb, inner, &vhl, 1) < 0)
		return 0;
	ihl = (__u32)(vhl & 0xf) * 4;
	if (ihl < 20 || ihl > 60)
		return 0;
	/* The embedded source address and its header checksum: their sum is unchanged, so the
	 * ICMP checksum is too. */
	if (bpf_l3_csum_replace(skb, inner + 10, old_ip, new_ip, 4) < 0 ||
	    bpf_skb_store_bytes(skb, inner + 12, &new_ip, 4, 0) < 0)
		return DROP_CSUM_L4;
	/* The embedded source port (TCP/UDP) or echo id; its own checksum is beyond 8 bytes
	 * for TCP and left as is (as the kernel's NAT does). */
	sum_off = rk.proto == PROTO_ICMP ? 4 : 0;
	if (bpf_skb_store_bytes(skb, inner + ihl + sum_off, &new_port, 2, 0) < 0 ||
	    bpf_l4_csum_replace(skb, n->l4 + 2, old_port, new_port, 2) < 0)
		return DROP_CSUM_L4;
	/* The outer destination: only the IP header checksum covers it (ICMP has no pseudo header). */
	if (bpf_l3_csum_replace(skb, ETH_HLEN + 10, n->daddr, new_ip, 4) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + 16, &new_ip, 4, 0) < 0)
		return DROP_CSUM_L4;
	return 0;
}
