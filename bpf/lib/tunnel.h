/* The overlay between nodes: VXLAN in external (collect-metadata) mode on one `cilia_vxlan`
 * device per node, with the source's security identity carried in the VNI, as Cilium does.
 * overlay.c uses tunnel_dst() and tunnel_set_key() (tc egress) and tunnel_decap() (tc ingress) on
 * that device; the node routes remote pod CIDRs to it. vxlan.h writes and reads the same VXLAN
 * in BPF on the underlay for the common case, with the checks of 1. to 4. enforce.h asks tunnel_src_identity() for the peer of
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
 *    namespaces, so a pod cannot forge it. Natively routed packets take the same way from the
 *    underlay's ingress, with the ipcache's identity for the source that nat.h looked up there
 *    (nodeport.h, 7.). Without the mark (local traffic, the rest of native routing) the ingress
 *    identity is the ipcache's for the source address.
 * 5. A decapsulated IPv4 packet (or, natively routed, one arriving on the underlay for this
 *    node's pod CIDR, nodeport.h 7.) for a local endpoint's address (cilia_lxc_ipv4,
 *    endpoint.h: its veth and MACs, no FIB lookup) or, on a miss there, whose route (the FIB)
 *    leads to a local endpoint's host-side veth is sent straight out of that veth (bpf_redirect
 *    to its egress, TTL decremented, MACs from that entry or the FIB's neighbour entry; the
 *    agent writes the pod's MAC and the veth's, which the neighbour entry holds): the stack's
 *    routing and forwarding are skipped, the endpoint's ingress policy (cil_to_container at that
 *    egress) is not. A miss is never a drop. At the
 *    underlay's ingress (host.o: native routing, and VXLAN read by BPF, vxlan.h 3.) the veth
 *    pair is skipped too, as for local traffic in 6.: the endpoint's ingress policy runs there in
 *    a tail call and the packet enters the pod with bpf_redirect_peer (peer.h, 4.); at the
 *    veth's egress only when that call cannot run, and always for what the tunnel device
 *    decapsulated (overlay.o). Anything else (the node itself, no neighbour entry yet, a TTL
 *    that would expire, IPv6) goes up the stack as before.
 * 6. Likewise, an IPv4 packet an endpoint's egress policy passed (enforce.h) is sent straight
 *    to the device its route names when that is a local endpoint's host-side veth (as in 5.;
 *    the node's IP forwarding and netfilter are skipped, as Cilium's host routing skips them;
 *    then, past the veth pair too, peer.h: the destination's ingress policy runs in a tail call
 *    at the source's veth and the packet enters the pod with bpf_redirect_peer; at the
 *    destination veth's egress only when that call cannot run), when it goes to an address
 *    with a tunnel endpoint (the tunnel device, whose egress program encapsulates it as in 1.
 *    and 2.; vxlan.h does that before and sends it straight out of the underlay when it can)
 *    or, in native routing, to another node's pod (a cluster identity in the ipcache; the
 *    underlay device, whose egress program then only looks for a NodePort reply's entry:
 *    MARK_MAGIC_NATIVE, nodeport.h 10.). Other destinations (the world, CIDR
 *    identities, this node) take the stack, so host firewalling and masquerading apply as
 *    before.
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

/* Invariants 1 and 2: the tunnel endpoint (host order) and VNI of a packet the node routed
 * into the tunnel device; 0, or the DROP_* reason. */
static __always_inline int tunnel_dst(struct __sk_buff *skb, __u32 *remote, __u32 *vni)
{
	struct ipcache_value *dst;
	struct tunnel_addrs a;

	if (tunnel_parse(skb, &a) < 0)
		return DROP_UNKNOWN_L3;
	dst = ipcache_entry(a.family, a.daddr);
	if (!dst || dst->tunnel_endpoint == 0)
		return DROP_NO_TUNNEL_ENDPOINT;
	*remote = dst->tunnel_endpoint;
	*vni = ipcache_identity(a.family, a.saddr);
	if (*vni == IDENTITY_HOST)
		*vni = IDENTITY_REMOTE_NODE;
	return 0;
}

/* The kernel device encapsulates (the key's remote is host order, as the helper wants it). */
static __always_inline int tunnel_set_key(struct __sk_buff *skb, __u32 remote, __u32 vni)
{
	struct bpf_tunnel_key key = {};

	key.remote_ipv4 = remote;
	key.tunnel_id = vni;
	key.tunnel_ttl = TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return tunnel_drop(skb, DROP_WRITE_ERROR, DIR_EGRESS);
	return TC_ACT_OK;
}

/* Invariant 3: 0 when a VNI from this outer source (network order) is to be trusted, else the
 * DROP_* reason. */
static __always_inline int tunnel_accept(__be32 outer_saddr, __u32 vni)
{
	__u8 outer[16] = {};
	__u32 node;

	*(__be32 *)outer = outer_saddr;
	node = ipcache_identity(FAMILY_IPV4, outer);
	if (node != IDENTITY_REMOTE_NODE && node != IDENTITY_KUBE_APISERVER)
		return DROP_UNKNOWN_SENDER;
	if (vni == IDENTITY_ANY || vni == IDENTITY_HOST || vni > IDENTITY_GLOBAL_MAX)
		return DROP_INVALID_VNI;
	return 0;
}

/* Invariants 3 and 4: a packet the VXLAN device decapsulated. */
static __always_inline int tunnel_decap(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	int ret;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return tunnel_drop(skb, DROP_NO_TUNNEL_KEY, DIR_INGRESS);
	ret = tunnel_accept(bpf_htonl(key.remote_ipv4), key.tunnel_id);
	if (ret)
		return tunnel_drop(skb, ret, DIR_INGRESS);
	skb->mark = mark_from_identity(key.tunnel_id);
	/* The inner destination MAC is the sender's device's, not ours: take the packet as ours. */
	bpf_skb_change_type(skb, PACKET_HOST_);
	return TC_ACT_OK;
}

/* Invariants 5 and 6: the FIB route of the IPv4 header `ip` (read at `off`, arriving on
 * skb->ifindex) when it may bypass the stack: TUNNEL_ROUTE_ENDPOINT (a local endpoint's veth) or
 * 1, with the next hop in f; 0 for any other packet or route (the stack). With `to_endpoint`, a
 * cilia_lxc_ipv4 hit for the destination answers first (f's ifindex and MACs only, no FIB).
 * `dst_identity`: the destination's ipcache identity when the caller has it (saves a second
 * lookup), else 0. */
#define TUNNEL_ROUTE_ENDPOINT 2
/* skb->cb word carrying that endpoint's host veth ifindex from vxlan_send_endpoint() into
 * peer.h's tail call (0: none). */
#define PEER_CB_IFINDEX 0
static __always_inline int tunnel_fib_route(struct __sk_buff *skb, __u32 off, __u8 *ip,
					    struct bpf_fib_lookup *f, int to_endpoint,
					    __u32 dst_identity)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;

	/* Read straight from the packet when the header is in its linear part (no helper call). */
	if (data + off + 20 <= end)
		__builtin_memcpy(ip, data + off, 20);
	else if (bpf_skb_load_bytes(skb, off, ip, 20) < 0)
		return 0;
	if ((ip[0] >> 4) != 4 || ip[8] <= 1)
		return 0;
	if (to_endpoint) {
		/* 5.: a local endpoint's address names its veth and MACs without the FIB */
		struct lxc_ipv4_info *lxc = lxc_ipv4_lookup(*(__be32 *)&ip[16]);

		if (lxc) {
			f->ifindex = lxc->ifindex;
			__builtin_memcpy(f->dmac, lxc->mac, 6);
			__builtin_memcpy(f->smac, lxc->host_mac, 6);
			return TUNNEL_ROUTE_ENDPOINT;
		}
	}
	f->family = 2; /* AF_INET */
	f->tos = ip[1];
	f->l4_protocol = ip[9];
	/* A GSO packet's length is all its segments': let the helper check the skb instead. */
	f->tot_len = skb->gso_size ? 0 : ((__u16)ip[2] << 8) | ip[3];
	f->ipv4_src = *(__u32 *)&ip[12];
	f->ipv4_dst = *(__u32 *)&ip[16];
	f->ifindex = skb->ifindex;
	if (bpf_fib_lookup(skb, f, sizeof(*f), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	if (endpoint_lookup(f->ifindex))
		return TUNNEL_ROUTE_ENDPOINT; /* 5. and 6.: the endpoint's ingress policy decides */
	if (to_endpoint)
		return 0;
	/* 6.: another node's pod by the identity the caller took from the ipcache (0: unknown) */
	if (dst_identity >= TUNNEL_FIRST_CLUSTER_ID && dst_identity <= IDENTITY_GLOBAL_MAX)
		return 1;
	{
		__u8 daddr[16] = {};
		struct ipcache_value *dst;

		__builtin_memcpy(daddr, &ip[16], 4);
		dst = ipcache_entry(FAMILY_IPV4, daddr);
		if (!dst)
			return 0;
		if (dst->tunnel_endpoint == 0 &&
		    (dst->identity < TUNNEL_FIRST_CLUSTER_ID || dst->identity > IDENTITY_GLOBAL_MAX))
			return 0;
	}
	return 1;
}

/* ... then out of that device: TTL decremented, MACs from the FIB's neighbour entry. The IPv4
 * header (as tunnel_fib_route read it) is at ETH_HLEN_ now. One write: both MACs, the ethertype
 * (IPv4, as the caller checked) and the header's first 12 bytes with the TTL decremented and
 * the checksum updated for it (RFC 1624, as bpf_l3_csum_replace computes it). */
static __always_inline int tunnel_fib_apply(struct __sk_buff *skb, __u8 *ip,
					    const struct bpf_fib_lookup *f, __u8 dir)
{
	__u8 h[ETH_HLEN_ + 12];
	__u16 old, new, hc;
	__u32 sum;

	old = ((__u16)ip[8] << 8) | ip[9]; /* TTL and protocol: the checksum's 16-bit word */
	ip[8]--;
	new = ((__u16)ip[8] << 8) | ip[9];
	hc = ((__u16)ip[10] << 8) | ip[11];
	sum = (__u32)(__u16)~hc + (__u16)~old + new;
	hc = csum_fold(sum);
	ip[10] = hc >> 8;
	ip[11] = hc & 0xff;
	__builtin_memcpy(h, f->dmac, 6);
	__builtin_memcpy(h + 6, f->smac, 6);
	h[12] = ETH_P_IP >> 8;
	h[13] = ETH_P_IP & 0xff;
	__builtin_memcpy(h + ETH_HLEN_, ip, 12);
	if (bpf_skb_store_bytes(skb, 0, h, sizeof(h), 0) < 0)
		return tunnel_drop(skb, DROP_WRITE_ERROR, dir);
	return bpf_redirect(f->ifindex, 0);
}

static __always_inline int tunnel_fib_redirect(struct __sk_buff *skb, int to_endpoint)
{
	struct bpf_fib_lookup f = {};
	__u8 ip[20];

	if (skb->protocol != bpf_htons(ETH_P_IP) ||
	    !tunnel_fib_route(skb, ETH_HLEN_, ip, &f, to_endpoint, 0))
		return TC_ACT_OK;
	if (to_endpoint)
		skb->cb[PEER_CB_IFINDEX] = f.ifindex; /* for the underlay's delivery (peer.h, 4.) */
	return tunnel_fib_apply(skb, ip, &f, to_endpoint ? DIR_INGRESS : DIR_EGRESS);
}

/* Invariant 5: after tunnel_decap (and anything that rewrites the destination). A redirect to
 * an endpoint's veth leaves its ifindex in skb->cb[PEER_CB_IFINDEX] (host.o: peer.h, 4.). */
static __always_inline int tunnel_deliver(struct __sk_buff *skb)
{
	return tunnel_fib_redirect(skb, 1);
}

/* Invariant 6: an endpoint's packet its egress policy passed. */
static __always_inline int tunnel_send(struct __sk_buff *skb)
{
	return tunnel_fib_redirect(skb, 0);
}
