/* The overlay between nodes: VXLAN in external (collect-metadata) mode on one `cilia_vxlan`
 * device per node, with the source's security identity carried in the VNI, as Cilium does.
 * overlay.c attaches tunnel_encap() (tc egress) and tunnel_decap() (tc ingress) to that device;
 * the node routes remote pod CIDRs to it. enforce.h asks tunnel_src_identity() for the peer of
 * an endpoint's ingress policy. It owns no maps: the tunnel endpoint of a destination is the
 * ipcache's (ipcache.h), written by the agent from the other nodes' records.
 *
 * Invariants:
 * 1. A packet leaves through the tunnel only towards an ipcache entry that has a tunnel
 *    endpoint; anything else is dropped (DROP_NO_TUNNEL_ENDPOINT), never sent in the clear.
 * 2. The VNI is the source's identity from the ipcache. Sources are endpoints whose address the
 *    lxc programs checked (enforce.h, 3.), or this node (the L7 proxy's legs first take the
 *    address they stand for, proxy_overlay.h). reserved:host leaves as
 *    reserved:remote-node, so a peer never sees "host" for another node's traffic; a source
 *    the ipcache does not know leaves as reserved:world.
 * 3. A received VNI is trusted only when the outer source is a node the ipcache knows
 *    (reserved:remote-node or kube-apiserver); otherwise DROP_UNKNOWN_SENDER. A VNI of 0, of
 *    reserved:host or above the cluster-wide identity range is dropped (DROP_INVALID_VNI).
 * 4. The identity travels from the overlay to the endpoint's ingress policy in skb->mark
 *    (MARK_MAGIC_IDENTITY). The kernel clears the mark whenever a packet crosses network
 *    namespaces, so a pod cannot forge it. Without the mark (native routing, local traffic) the
 *    ingress identity is the ipcache's for the source address.
 * 5. A decapsulated IPv4 packet (or, natively routed, one arriving on the underlay for this
 *    node's pod CIDR, nodeport.h 7.) whose route (the FIB) leads to a local endpoint's
 *    host-side veth is sent straight out of that veth (bpf_redirect to its egress, TTL
 *    decremented, MACs from the FIB's neighbour entry): the stack's routing and forwarding are
 *    skipped, the endpoint's ingress policy (cil_to_container at that egress) is not. Anything
 *    else (the node itself, no neighbour entry yet, a TTL that would expire, IPv6) goes up the
 *    stack as before.
 * 6. Likewise, an IPv4 packet an endpoint's egress policy passed (enforce.h) is sent straight
 *    to the device its route names when it goes to an address with a tunnel endpoint (the
 *    tunnel device, whose egress program encapsulates it as in 1. and 2.) or, in native
 *    routing, to another node's pod (a cluster identity in the ipcache; the underlay device,
 *    whose egress programs still run). Other destinations (the world, CIDR identities, this
 *    node, local pods) take the stack, so host firewalling and masquerading apply as before.
 */
#pragma once

#include "common.h"
#include "ipcache.h"
#include "metrics.h"
#include "endpoint.h"

#define TUNNEL_TTL 64
/* The first cluster-wide (endpoint) identity; reserved ones are below (identity/allocator.ts). */
#define TUNNEL_FIRST_CLUSTER_ID 256
#define ETH_HLEN_ 14
#define PACKET_HOST_ 0

struct tunnel_addrs {
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 family;
};

static __always_inline __u32 mark_from_identity(__u32 identity)
{
	return ((identity & 0xffff) << 16) | MARK_MAGIC_IDENTITY | ((identity >> 16) & 0xff);
}

static __always_inline __u32 mark_identity(__u32 mark)
{
	return ((mark >> 16) & 0xffff) | ((mark & 0xff) << 16);
}

/* Invariant 4. */
static __always_inline __u32 tunnel_src_identity(const struct __sk_buff *skb, __u8 family,
						 const __u8 *saddr)
{
	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_IDENTITY)
		return mark_identity(skb->mark);
	return ipcache_identity(family, saddr);
}

/* Source and destination of an Ethernet frame's IP packet; -1 for anything else. */
static __always_inline int tunnel_parse(struct __sk_buff *skb, struct tunnel_addrs *a)
{
	__be16 proto;

	__builtin_memset(a, 0, sizeof(*a));
	if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0)
		return -1;
	if (proto == bpf_htons(ETH_P_IP)) {
		a->family = FAMILY_IPV4;
		if (bpf_skb_load_bytes(skb, ETH_HLEN_ + 12, a->saddr, 4) < 0 ||
		    bpf_skb_load_bytes(skb, ETH_HLEN_ + 16, a->daddr, 4) < 0)
			return -1;
		return 0;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		a->family = FAMILY_IPV6;
		if (bpf_skb_load_bytes(skb, ETH_HLEN_ + 8, a->saddr, 16) < 0 ||
		    bpf_skb_load_bytes(skb, ETH_HLEN_ + 24, a->daddr, 16) < 0)
			return -1;
		return 0;
	}
	return -1;
}

static __always_inline int tunnel_drop(struct __sk_buff *skb, __u8 reason, __u8 dir)
{
	metrics_count(reason, dir, skb->len);
	return TC_ACT_SHOT;
}

static __always_inline struct ipcache_value *ipcache_entry(__u8 family, const __u8 *addr)
{
	struct ipcache_key key = { .prefixlen = 32 + 128, .family = family };

	addr_copy16(key.addr, addr);
	return bpf_map_lookup_elem(&cilia_ipcache, &key);
}

/* Invariants 1 and 2: a packet the node routed into the tunnel device. */
static __always_inline int tunnel_encap(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct ipcache_value *dst;
	struct tunnel_addrs a;
	__u32 identity;

	if (tunnel_parse(skb, &a) < 0)
		return tunnel_drop(skb, DROP_UNKNOWN_L3, DIR_EGRESS);
	dst = ipcache_entry(a.family, a.daddr);
	if (!dst || dst->tunnel_endpoint == 0)
		return tunnel_drop(skb, DROP_NO_TUNNEL_ENDPOINT, DIR_EGRESS);
	identity = ipcache_identity(a.family, a.saddr);
	if (identity == IDENTITY_HOST)
		identity = IDENTITY_REMOTE_NODE;
	key.remote_ipv4 = dst->tunnel_endpoint; /* host order, as the helper wants it */
	key.tunnel_id = identity;
	key.tunnel_ttl = TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return tunnel_drop(skb, DROP_WRITE_ERROR, DIR_EGRESS);
	return TC_ACT_OK;
}

/* Invariants 3 and 4: a packet the VXLAN device decapsulated. */
static __always_inline int tunnel_decap(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	__u8 outer[16] = {};
	__u32 node, identity;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return tunnel_drop(skb, DROP_NO_TUNNEL_KEY, DIR_INGRESS);
	*(__u32 *)outer = bpf_htonl(key.remote_ipv4);
	node = ipcache_identity(FAMILY_IPV4, outer);
	if (node != IDENTITY_REMOTE_NODE && node != IDENTITY_KUBE_APISERVER)
		return tunnel_drop(skb, DROP_UNKNOWN_SENDER, DIR_INGRESS);
	identity = key.tunnel_id;
	if (identity == IDENTITY_ANY || identity == IDENTITY_HOST || identity > IDENTITY_GLOBAL_MAX)
		return tunnel_drop(skb, DROP_INVALID_VNI, DIR_INGRESS);
	skb->mark = mark_from_identity(identity);
	/* The inner destination MAC is the sender's device's, not ours: take the packet as ours. */
	bpf_skb_change_type(skb, PACKET_HOST_);
	return TC_ACT_OK;
}

/* Invariants 5 and 6: an IPv4 packet out of the device its FIB route names, bypassing the
 * stack; TC_ACT_OK (the stack) for any other packet or route. */
static __always_inline int tunnel_fib_redirect(struct __sk_buff *skb, int to_endpoint)
{
	struct bpf_fib_lookup f = {};
	__u8 ip[20];
	__u16 old, new;
	int r;

	if (skb->protocol != bpf_htons(ETH_P_IP) || bpf_skb_load_bytes(skb, ETH_HLEN_, ip, 20) < 0)
		return TC_ACT_OK;
	if ((ip[0] >> 4) != 4 || ip[8] <= 1)
		return TC_ACT_OK;
	f.family = 2; /* AF_INET */
	f.tos = ip[1];
	f.l4_protocol = ip[9];
	f.tot_len = ((__u16)ip[2] << 8) | ip[3];
	f.ipv4_src = *(__u32 *)&ip[12];
	f.ipv4_dst = *(__u32 *)&ip[16];
	f.ifindex = skb->ifindex;
	r = bpf_fib_lookup(skb, &f, sizeof(f), 0);
	if (r != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	if (to_endpoint) {
		if (!endpoint_lookup(f.ifindex))
			return TC_ACT_OK;
	} else {
		__u8 daddr[16] = {};
		struct ipcache_value *dst;

		__builtin_memcpy(daddr, &ip[16], 4);
		dst = ipcache_entry(FAMILY_IPV4, daddr);
		if (!dst || endpoint_lookup(f.ifindex))
			return TC_ACT_OK;
		if (dst->tunnel_endpoint == 0 &&
		    (dst->identity < TUNNEL_FIRST_CLUSTER_ID || dst->identity > IDENTITY_GLOBAL_MAX))
			return TC_ACT_OK;
	}
	old = *(__u16 *)&ip[8]; /* TTL and protocol: the checksum's 16-bit word */
	ip[8]--;
	new = *(__u16 *)&ip[8];
	if (bpf_l3_csum_replace(skb, ETH_HLEN_ + 10, old, new, 2) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN_ + 8, &ip[8], 1, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, f.dmac, 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 6, f.smac, 6, 0) < 0)
		return tunnel_drop(skb, DROP_WRITE_ERROR, to_endpoint ? DIR_INGRESS : DIR_EGRESS);
	return bpf_redirect(f.ifindex, 0);
}

/* Invariant 5: after tunnel_decap (and anything that rewrites the destination). */
static __always_inline int tunnel_deliver(struct __sk_buff *skb)
{
	return tunnel_fib_redirect(skb, 1);
}

/* Invariant 6: an endpoint's packet its egress policy passed. */
static __always_inline int tunnel_send(struct __sk_buff *skb)
{
	return tunnel_fib_redirect(skb, 0);
}
