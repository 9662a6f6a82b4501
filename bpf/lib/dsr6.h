/* Direct server return over IPv6 (`--node-port-mode dsr`, native routing), the IPv6 twin of
 * dsr.h: the node that got the client's packet DNATs it to a backend on another node without
 * SNAT and carries the frontend in an IPv6 Destination Options extension header inserted right
 * after the IPv6 header, as Cilium does (24 bytes):
 *   next header | hdr ext len 2 | option type 0x1b | option len 20 | address (16) | port (2) | 0 0
 * Option type 0x1b: the two high bits 00 say "skip it if unknown", the third 0 "does not change
 * en route". The backend's node learns it (nodeport6.h writes the NP_LOCAL egress entry) and its
 * replies leave straight to the client with the frontend as their source. This file builds,
 * reads and judges the header; nodeport6.h decides when. It owns no maps.
 *
 * Invariants:
 * 1. The header is added to the first packet of a connection and to every TCP SYN, only to a
 *    packet whose next header is TCP or UDP (a packet to a frontend with extension headers of its
 *    own was already dropped, nodeport6.h 4.; here it would be DROP_INVALID_EXTHDR). The DNAT is
 *    done before (its TCP/UDP checksum covers the new destination, not the header: the
 *    pseudo-header's length is the upper-layer length, unchanged), the payload length grows by
 *    24 and the next-header chain is IPv6 → 60 → TCP/UDP.
 * 2. MTU: a packet the 24 bytes would push over the device's MTU is not sent (it would vanish at
 *    the next hop): the client gets ICMPv6 Packet Too Big with MTU - 24 from the frontend
 *    address (Cilium's DSR does the same), counted as DROP_FRAG_NEEDED, and the new connection's
 *    entry is forgotten, so the smaller packet it sends again is a first packet too. Only first
 *    packets and SYNs grow, so TCP data never meets this; a large first UDP datagram does. A GSO
 *    packet passes: its segments shrink by the 24 bytes (bpf_skb_adjust_room).
 * 3. A backend's node trusts the header only if its address is a node of the cluster (ipcache:
 *    remote-node / kube-apiserver) or one of its own external frontends, and only for a
 *    destination in its IPv6 pod CIDR (nodeport6.h checks that): a client cannot make a pod
 *    answer from any address it likes.
 * 4. The header stays in the packet the pod receives (Linux skips the unknown option, 1.).
 */
#pragma once

#include "common.h"
#include "lb.h"
#include "ipcache.h"

#define DSR6_NEXTHDR 60 /* IPv6 Destination Options */
#define DSR6_OPT_TYPE 0x1b
#define DSR6_OPT_LEN 20 /* address, port, 2 bytes of padding to a multiple of 8 */
#define DSR6_EXT_LEN 24
#define DSR6_HDR_EXT_LEN ((DSR6_EXT_LEN - 8) / 8)

/* The header for frontend addr:port (next header filled by dsr6_add_ext) into ext[24]. */
static __always_inline void dsr6_ext_of(__u8 *ext, const __u8 *addr, __be16 port)
{
	ext[0] = 0;
	ext[1] = DSR6_HDR_EXT_LEN;
	ext[2] = DSR6_OPT_TYPE;
	ext[3] = DSR6_OPT_LEN;
	addr_copy16(&ext[4], addr);
	__builtin_memcpy(&ext[20], &port, 2);
	ext[22] = 0;
	ext[23] = 0;
}

/* 2.: would the header push this packet over the device's MTU? *mtu: the device's MTU. */
static __always_inline int dsr6_too_big(struct __sk_buff *skb, __u32 *mtu)
{
	*mtu = 0;
	return bpf_check_mtu(skb, 0, mtu, DSR6_EXT_LEN, 0) == BPF_MTU_CHK_RET_FRAG_NEEDED;
}

/* 1.: inserts ext (dsr6_ext_of) after the IPv6 header; 0 or a DROP_* reason. */
static __always_inline int dsr6_add_ext(struct __sk_buff *skb, __u8 *ext)
{
	__u8 h[8];
	__u16 plen;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, h, sizeof(h)) < 0 || (h[0] >> 4) != 6)
		return DROP_INVALID;
	if (h[6] != PROTO_TCP && h[6] != PROTO_UDP)
		return DROP_INVALID_EXTHDR;
	plen = ((__u16)h[4] << 8 | h[5]) + DSR6_EXT_LEN;
	ext[0] = h[6];
	h[4] = plen >> 8;
	h[5] = plen & 0xff;
	h[6] = DSR6_NEXTHDR;
	if (bpf_skb_adjust_room(skb, DSR6_EXT_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return DROP_WRITE_ERROR;
	if (bpf_skb_store_bytes(skb, ETH_HLEN + 4, &h[4], 3, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + 40, ext, DSR6_EXT_LEN, 0) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}

/* At the backend's node: 1 if the packet carries our header (right after the IPv6 header, before
 * the TCP/UDP header proto), read into ext[24]. */
static __always_inline int dsr6_read(struct __sk_buff *skb, __u8 *ext, __u8 proto)
{
	__u8 nh;

	if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &nh, 1) < 0 || nh != DSR6_NEXTHDR ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 40, ext, DSR6_EXT_LEN) < 0)
		return 0;
	return ext[0] == proto && ext[1] == DSR6_HDR_EXT_LEN && ext[2] == DSR6_OPT_TYPE &&
	       ext[3] == DSR6_OPT_LEN;
}

/* 3.: the frontend in ext (dsr6_read) is a cluster node or one of our external frontends. */
static __always_inline int dsr6_trusted(const __u8 *ext, __u8 proto)
{
	struct lb_service_key sk = { .proto = proto, .family = FAMILY_IPV6 };
	struct lb_service_value *svc;
	__u32 id;

	addr_copy16(sk.addr, &ext[4]);
	__builtin_memcpy(&sk.port, &ext[20], 2);
	id = ipcache_identity(FAMILY_IPV6, sk.addr);
	if (id == IDENTITY_REMOTE_NODE || id == IDENTITY_KUBE_APISERVER)
		return 1;
	svc = bpf_map_lookup_elem(&cilia_lb_services, &sk);
	return svc && (svc->flags & LB_SVC_F_EXTERNAL);
}
