/* VXLAN (RFC 7348) written and read by BPF on the underlay device, so that the common case skips
 * the kernel's VXLAN device: its transmit path (route lookup, UDP tunnel transmit, the IP output
 * path) and its receive path (IP and UDP receive, the VXLAN socket, the GRO cell's extra NAPI
 * round). Same wire format as the device (UDP to the tunnel port, VNI = source identity, UDP
 * checksum 0, an inner Ethernet header, outer TTL 64, DF clear), so a node on either path
 * accepts the other's packets (the outer TOS is 0: no ECN is carried across). enforce.h calls
 * vxlan_send_endpoint() once an endpoint's egress policy passed a packet, overlay.c
 * overlay_send() at the tunnel device's egress for what still reaches it, host.c
 * overlay_receive() at the underlay's ingress for UDP to the tunnel port. It owns no maps: the
 * node IP and the tunnel port are cilia_nat_cfg's (nat.h), the rest is tunnel.h's.
 *
 * Invariants:
 * 1. Only what the device would send is sent: the tunnel endpoint and VNI come from tunnel_dst()
 *    (tunnel.h, 1. and 2.), the outer source is the node IP, the outer next hop the FIB's. From
 *    an endpoint, only a packet whose own route is not the underlay the tunnel endpoint is
 *    reached through (remote pod CIDRs go to the tunnel device; node addresses straight out,
 *    tunnel.h, 6.) and that no NodePort entry must translate first (nat.h, NP_LOCAL).
 * 2. Anything the BPF path cannot do exactly as the device would goes to the device instead
 *    (the fallback, never a drop): no node IP or tunnel port in cilia_nat_cfg, the agent's
 *    NAT_CFG_F_TUNNEL_NETDEV, no FIB route or neighbour entry for the tunnel endpoint, a packet
 *    that does not fit the underlay MTU once encapsulated and is not GSO (the device fragments
 *    the outer packet, as it always did). A GSO packet whose segments would not fit once
 *    encapsulated (a pod whose MTU is the underlay's) gets its segment size lowered by the room
 *    the encapsulation takes (the kernel's default for BPF encapsulation); one whose segments
 *    fit keeps it.
 * 3. A received VNI is trusted by the rules of tunnel.h, 3. (DROP_UNKNOWN_SENDER,
 *    DROP_INVALID_VNI); a packet that passes is decapsulated here only when its inner packet is
 *    IPv4 for a local endpoint's veth (tunnel.h, 5.) and answers no proxy leg
 *    (proxy_overlay.h, 2.): it carries the identity in skb->mark (tunnel.h, 4.) into that
 *    veth's ingress policy. Everything else (IPv6, the node itself, the proxy's legs, a VXLAN
 *    header without the I flag) goes up the stack to the device unchanged.
 */
#pragma once

#include <linux/ip.h>
#include <linux/udp.h>
#include "tunnel.h"
#include "nat.h"
#include "proxy_overlay.h"

#define VXLAN_HLEN 8
#define VXLAN_F_VNI 0x08 /* the I flag: the VNI is valid */
/* Outer IPv4 + UDP + VXLAN + inner Ethernet: the room the encapsulation takes. */
#define VXLAN_ROOM (20 + 8 + VXLAN_HLEN + ETH_HLEN_)
#define VXLAN_INNER_L3 (ETH_HLEN_ + VXLAN_ROOM)
#define VXLAN_SPORT_MIN 32768 /* the kernel's default local port range, as the device's */
#define VXLAN_SPORT_SPAN (60999 - 32768 + 1)
#define NAT_CFG_F_TUNNEL_NETDEV (1 << 3) /* 2.: the device only (agent: tests and benchmarks) */
/* Linux 6.3's BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (newer than the uapi headers here). */
#define VXLAN_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)

/* The frame's first ETH_HLEN_ + VXLAN_ROOM bytes once encapsulated, written in one store from
 * `eth` on (pad0 keeps the IPv4 header 4-byte aligned for bpf_csum_diff). */
struct vxlan_outer {
	__u8 pad0[2]; /* not written */
	__u8 eth[ETH_HLEN_]; /* outer Ethernet: the next hop's MAC, the underlay's, IPv4 */
	struct iphdr ip;
	struct udphdr udp;
	__be32 vx_flags;
	__be32 vx_vni; /* VNI << 8 */
	__u8 inner[ETH_HLEN_];
	__u8 pad[2]; /* not written */
};
_Static_assert(sizeof(struct vxlan_outer) == 2 + ETH_HLEN_ + VXLAN_ROOM + 2, "vxlan_outer size");
_Static_assert(__builtin_offsetof(struct vxlan_outer, ip) == 2 + ETH_HLEN_, "vxlan_outer ip");

/* The node IP and tunnel port when the BPF path is on (2.), else 0. */
static __always_inline struct nat_cfg *vxlan_config(void)
{
	struct nat_cfg *cfg = nat_config();

	if (!cfg || !cfg->node_ip || !cfg->tunnel_port || (cfg->flags & NAT_CFG_F_TUNNEL_NETDEV))
		return 0;
	return cfg;
}

/* Does each segment of this TCP GSO packet fit `mtu` once encapsulated? (Its IP and TCP
 * headers plus gso_size plus the room; 0 when unsure.) */
static __always_inline int vxlan_gso_fits(struct __sk_buff *skb, __u32 mtu)
{
	__u32 hdrs;
	__u8 b[10];

	if (bpf_skb_load_bytes(skb, ETH_HLEN_, b, sizeof(b)) < 0)
		return 0;
	if (skb->protocol == bpf_htons(ETH_P_IP) && b[9] == PROTO_TCP)
		hdrs = (b[0] & 0xf) * 4;
	else if (skb->protocol == bpf_htons(ETH_P_IPV6) && b[6] == PROTO_TCP)
		hdrs = 40;
	else
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN_ + hdrs + 12, b, 1) < 0)
		return 0;
	hdrs += (b[0] >> 4) * 4;
	return skb->gso_size + hdrs + VXLAN_ROOM - ETH_HLEN_ <= mtu;
}

/* 1. and 2.: encapsulates towards `remote` (host order) and redirects to the underlay; TC_ACT_OK
 * with nothing changed when the device must do it, or when the underlay is `direct` (the
 * packet's own route leaves through it: no tunnel). `f` is the caller's room for the FIB lookup
 * (the lxc programs' stack has none to spare); it is overwritten. */
static __always_inline int vxlan_encap(struct __sk_buff *skb, __u32 remote, __u32 vni,
				       __u32 direct, struct bpf_fib_lookup *f)
{
	struct nat_cfg *cfg = vxlan_config();
	struct vxlan_outer h = {};
	__u64 flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
		      BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN_);
	__u32 len = skb->len, mtu = 0;
	void *data, *end;
	int r;

	if (!cfg)
		return TC_ACT_OK;
	__builtin_memset(f, 0, sizeof(*f));
	f->family = 2; /* AF_INET */
	f->l4_protocol = PROTO_UDP;
	f->ipv4_src = cfg->node_ip;
	f->ipv4_dst = bpf_htonl(remote);
	f->ifindex = skb->ifindex;
	if (bpf_fib_lookup(skb, f, sizeof(*f), 0) != BPF_FIB_LKUP_RET_SUCCESS ||
	    f->ifindex == direct)
		return TC_ACT_OK; /* 2.: the device resolves the neighbour */
	/* 2.: one packet must fit as it is; GSO segments keep their size if they fit, else shrink
	 * by the room (below). */
	r = bpf_check_mtu(skb, f->ifindex, &mtu, VXLAN_ROOM, 0);
	if (!skb->gso_size && r != BPF_MTU_CHK_RET_SUCCESS)
		return TC_ACT_OK;
	if (skb->gso_size && vxlan_gso_fits(skb, mtu))
		flags |= BPF_F_ADJ_ROOM_FIXED_GSO;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN_ <= end) /* the inner Ethernet header, without a helper call if linear */
		__builtin_memcpy(h.inner, data, ETH_HLEN_);
	else if (bpf_skb_load_bytes(skb, 0, h.inner, ETH_HLEN_) < 0)
		return TC_ACT_OK;
	__builtin_memcpy(h.eth, f->dmac, 6);
	__builtin_memcpy(h.eth + 6, f->smac, 6);
	h.eth[12] = ETH_P_IP >> 8;
	h.eth[13] = ETH_P_IP & 0xff;
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tot_len = bpf_htons(len + VXLAN_ROOM - ETH_HLEN_);
	h.ip.id = (__be16)bpf_get_prandom_u32();
	h.ip.ttl = TUNNEL_TTL;
	h.ip.protocol = PROTO_UDP;
	h.ip.saddr = cfg->node_ip;
	h.ip.daddr = bpf_htonl(remote);
	h.ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&h.ip, sizeof(h.ip), 0));
	/* Source port from the inner flow's hash, as the device's, so underlay ECMP spreads flows. */
	h.udp.source = bpf_htons(VXLAN_SPORT_MIN +
				 (__u16)(((__u64)bpf_get_hash_recalc(skb) * VXLAN_SPORT_SPAN) >> 32));
	h.udp.dest = cfg->tunnel_port;
	h.udp.len = bpf_htons(len + VXLAN_ROOM - ETH_HLEN_ - 20);
	h.vx_flags = bpf_htonl(VXLAN_F_VNI << 24);
	h.vx_vni = bpf_htonl(vni << 8);
	if (bpf_skb_adjust_room(skb, VXLAN_ROOM, BPF_ADJ_ROOM_MAC, flags) < 0)
		return TC_ACT_OK; /* nothing changed yet */
	if (bpf_skb_store_bytes(skb, 0, h.eth, ETH_HLEN_ + VXLAN_ROOM, 0) < 0)
		return tunnel_drop(skb, DROP_WRITE_ERROR, DIR_EGRESS);
	return bpf_redirect(f->ifindex, 0);
}

/* cil_to_overlay, after NAT and the proxy: BPF encapsulation, else the device's. */
static __always_inline int overlay_send(struct __sk_buff *skb)
{
	struct bpf_fib_lookup f;
	__u32 remote = 0, vni = 0;
	int ret = tunnel_dst(skb, &remote, &vni);

	if (ret)
		return tunnel_drop(skb, ret, DIR_EGRESS);
	ret = vxlan_encap(skb, remote, vni, 0, &f);
	return ret == TC_ACT_OK ? tunnel_set_key(skb, remote, vni) : ret;
}

/* 3.: a UDP packet to the tunnel port at the underlay's ingress (IPv4 without options, not a
 * fragment: nodeport.h checked). TC_ACT_OK leaves it to the stack and the device. */
static __always_inline int overlay_receive(struct __sk_buff *skb)
{
	struct bpf_fib_lookup f = {};
	__u8 ip[20], addr[2][16] = {};
	__u32 hdr[2], vni;
	__be32 outer_saddr;
	__be16 inner_proto;
	int ret;

	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;

	if (!vxlan_config())
		return TC_ACT_OK;
	if (data + VXLAN_INNER_L3 <= end) { /* the outer headers without a helper call if linear */
		__builtin_memcpy(&outer_saddr, data + ETH_HLEN_ + 12, 4);
		__builtin_memcpy(hdr, data + ETH_HLEN_ + 28, sizeof(hdr));
		__builtin_memcpy(&inner_proto, data + VXLAN_INNER_L3 - 2, 2);
	} else if (bpf_skb_load_bytes(skb, ETH_HLEN_ + 12, &outer_saddr, 4) < 0 ||
		   bpf_skb_load_bytes(skb, ETH_HLEN_ + 28, hdr, sizeof(hdr)) < 0 ||
		   bpf_skb_load_bytes(skb, VXLAN_INNER_L3 - 2, &inner_proto, 2) < 0) {
		return TC_ACT_OK;
	}
	if (!(bpf_ntohl(hdr[0]) & (VXLAN_F_VNI << 24)))
		return TC_ACT_OK;
	vni = bpf_ntohl(hdr[1]) >> 8;
	ret = tunnel_accept(outer_saddr, vni);
	if (ret)
		return tunnel_drop(skb, ret, DIR_INGRESS);
	if (inner_proto != bpf_htons(ETH_P_IP) ||
	    !tunnel_fib_route(skb, VXLAN_INNER_L3, ip, &f, 1, 0))
		return TC_ACT_OK;
	__builtin_memcpy(addr[0], &ip[12], 4);
	__builtin_memcpy(addr[1], &ip[16], 4);
	if (proxy_overlay_reply(skb, VXLAN_INNER_L3, FAMILY_IPV4, addr[0], addr[1]))
		return TC_ACT_OK;
	if (bpf_skb_adjust_room(skb, -VXLAN_ROOM, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | VXLAN_ADJ_ROOM_DECAP_L3_IPV4) < 0)
		return TC_ACT_OK; /* nothing changed yet */
	skb->mark = mark_from_identity(vni);
	skb->cb[PEER_CB_IFINDEX] = f.ifindex; /* the caller's delivery into its netns (peer.h, 4.) */
	return tunnel_fib_apply(skb, ip, &f, DIR_INGRESS);
}

/* A local NodePort backend's reply to a client on another node (nat.h's NP_LOCAL egress entry):
 * cil_to_overlay gives it its frontend back before it encapsulates. */
static __always_inline int vxlan_np_local(const struct pkt *p)
{
	struct nat_key k = { .sport = p->tuple.sport, .dport = p->tuple.dport,
			     .proto = p->tuple.proto, .dir = NAT_DIR_EGRESS };
	struct nat_entry *e;

	k.saddr = *(const __be32 *)p->tuple.saddr;
	k.daddr = *(const __be32 *)p->tuple.daddr;
	e = bpf_map_lookup_elem(&cilia_snat, &k);
	return e && e->kind == NAT_K_NP_LOCAL;
}

/* tunnel.h, 6., in one step with 1. and 2.: an IPv4 packet an endpoint's egress policy passed,
 * routed into the tunnel (its FIB route is not the underlay the tunnel endpoint is reached
 * through), is encapsulated here and leaves through the underlay without the tunnel device; a
 * NodePort reply (vxlan_np_local), IPv6 and whatever vxlan_encap() cannot do go to the device
 * their route names, as tunnel_send() does. One routed to a local endpoint's veth is redirected
 * there with that veth's ifindex left in skb->cb[PEER_CB_IFINDEX] (the caller clears it first),
 * so that enforce.h can deliver it into the endpoint's netns instead (peer.h). In native routing
 * one sent straight to the underlay carries MARK_MAGIC_NATIVE (nodeport.h, 10.). `dst_identity`:
 * the destination's ipcache identity, as enforce.h looked it up after any service translation. */
static __always_inline int vxlan_send_endpoint(struct __sk_buff *skb, const struct pkt *p,
					       __u32 dst_identity)
{
	struct bpf_fib_lookup f = {};
	__u32 remote = 0, vni = 0;
	__u8 ip[20];
	int ret;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ret = tunnel_fib_route(skb, ETH_HLEN_, ip, &f, 0, dst_identity);
	if (!ret)
		return TC_ACT_OK;
	if (ret == TUNNEL_ROUTE_ENDPOINT) {
		skb->cb[PEER_CB_IFINDEX] = f.ifindex; /* for enforce.h's delivery into its netns (peer.h) */
		return tunnel_fib_apply(skb, ip, &f, DIR_EGRESS);
	}
	if (p->tuple.family == FAMILY_IPV4 && vxlan_config() && !tunnel_dst(skb, &remote, &vni) &&
	    !vxlan_np_local(p)) {
		ret = vxlan_encap(skb, remote, vni, f.ifindex, &f);
		/* f is the tunnel endpoint's route now: the device path looks up the packet's again */
		return ret != TC_ACT_OK ? ret : tunnel_send(skb);
	}
	{
		struct nat_cfg *cfg = nat_config();

		if (cfg && !cfg->tunnel_port) /* native routing: nodeport.h, 10. */
			skb->mark = MARK_MAGIC_NATIVE;
	}
	return tunnel_fib_apply(skb, ip, &f, DIR_EGRESS);
}
