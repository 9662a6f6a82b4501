/* Proxied connections that cross nodes through the overlay (overlay.c, tunnel.h). The proxy's
 * legs leave and enter this node from the proxy's own address (the pod gateway), which the lxc
 * hooks (proxy.h) never see for a peer on another node. Here, at the tunnel device:
 *
 * Invariants:
 * 1. Into the tunnel (before tunnel_dst), a packet from the proxy's address takes the address
 *    it stands for: the original server's (and port) for the proxy's answers to a client on
 *    another node (cilia_proxy_orig), the client's for the upstream leg to a server on another
 *    node (cilia_proxy_nat). tunnel_dst then puts that address's ipcache identity in the VNI,
 *    so the far side's policy sees the client, never reserved:remote-node, and the client sees
 *    the server it dialled.
 * 2. Out of the tunnel (after tunnel_decap, before routing), a reply to an upstream leg (server
 *    ip:port and the proxy's local port in cilia_proxy_nat, addressed to that entry's client)
 *    takes the proxy's address as destination, so the stack hands it to the proxy's socket.
 *    VXLAN read by BPF on the underlay (vxlan.h, 3.) leaves such replies to the device
 *    (proxy_overlay_reply()).
 * 3. Anything else is left as it is; a failed rewrite drops (DROP_PROXY_SET_FAILED).
 * 4. Out of the underlay unencapsulated (host.c's egress: native routing, or a client that is
 *    a node), the proxy's IPv4 answers to a client on another node take the original server's
 *    address as in 1. (without it the client sees the gateway's SYN-ACK and resets). Upstream
 *    legs still leave from the gateway there (no rewrite of 2. on the way back); IPv6 is not
 *    rewritten there yet.
 */
#pragma once

#include "proxy.h"
#include "tunnel.h"

/* The L4 ports of a TCP (or IPv4 UDP) packet the proxy may own, its IP header at `l3`; -1 for
 * anything else. */
static __always_inline int proxy_overlay_ports(struct __sk_buff *skb, __u32 l3, __u8 family,
					       struct l4_ports *ports)
{
	__u32 l4 = l3 + 40;
	__u8 h[10];

	if (family == FAMILY_IPV4) {
		if (bpf_skb_load_bytes(skb, l3, h, sizeof(h)) < 0)
			return -1;
		if (h[9] != PROTO_TCP && h[9] != PROTO_UDP)
			return -1;
		if ((((__u16)h[6] << 8) | h[7]) & 0x3fff)
			return -1; /* a fragment: no ports to match */
		l4 = l3 + (__u32)(h[0] & 0xf) * 4;
	} else if (bpf_skb_load_bytes(skb, l3 + 6, h, 1) < 0 || h[0] != PROTO_TCP) {
		return -1;
	}
	return bpf_skb_load_bytes(skb, l4, ports, sizeof(*ports)) < 0 ? -1 : 0;
}

/* 1. saddr/daddr: the packet's 16-byte addresses; saddr is updated when rewritten. `legs`: the
 * upstream legs too (4. leaves them alone). */
static __always_inline int proxy_overlay_egress(struct __sk_buff *skb, __u8 family, __u8 *saddr,
						const __u8 *daddr, int legs)
{
	struct proxy_cfg *cfg = proxy_config();
	struct proxy_orig_value *o;
	struct proxy_nat_value *n;
	struct proxy_orig_key ok = { .family = family };
	struct proxy_nat_key nk = { .family = family };
	struct l4_ports ports;
	__u8 gw[16];

	if (!cfg || !proxy_gw(cfg, family, gw) || !addr_eq16(saddr, gw) ||
	    proxy_overlay_ports(skb, ETH_HLEN, family, &ports) < 0)
		return 0;
	addr_copy16(ok.client_ip, daddr);
	ok.client_port = ports.dport;
	ok.proxy_port = ports.sport;
	o = bpf_map_lookup_elem(&cilia_proxy_orig, &ok);
	if (o) {
		if (proxy_rewrite(skb, family, 1, gw, o->orig_ip, ports.sport, o->orig_port))
			return DROP_PROXY_SET_FAILED;
		addr_copy16(saddr, o->orig_ip);
		return 0;
	}
	if (!legs)
		return 0;
	addr_copy16(nk.server_ip, daddr);
	nk.server_port = ports.dport;
	nk.local_port = ports.sport;
	n = bpf_map_lookup_elem(&cilia_proxy_nat, &nk);
	if (!n)
		return 0;
	if (proxy_rewrite(skb, family, 1, gw, n->client_ip, 0, 0))
		return DROP_PROXY_SET_FAILED;
	addr_copy16(saddr, n->client_ip);
	return 0;
}

/* 2.: the upstream leg a packet (its IP header at `l3`) answers, if any. */
static __always_inline int proxy_overlay_reply(struct __sk_buff *skb, __u32 l3, __u8 family,
					       const __u8 *saddr, const __u8 *daddr)
{
	struct proxy_cfg *cfg = proxy_config();
	struct proxy_nat_key nk = { .family = family };
	struct proxy_nat_value *n;
	struct l4_ports ports;

	if (!cfg || proxy_overlay_ports(skb, l3, family, &ports) < 0)
		return 0;
	addr_copy16(nk.server_ip, saddr);
	nk.server_port = ports.sport;
	nk.local_port = ports.dport;
	n = bpf_map_lookup_elem(&cilia_proxy_nat, &nk);
	return n && addr_eq16(n->client_ip, daddr);
}

/* 2. */
static __always_inline int proxy_overlay_ingress(struct __sk_buff *skb, __u8 family,
						 const __u8 *saddr, const __u8 *daddr)
{
	struct proxy_cfg *cfg = proxy_config();
	__u8 gw[16];

	if (!cfg || !proxy_gw(cfg, family, gw) ||
	    !proxy_overlay_reply(skb, ETH_HLEN, family, saddr, daddr))
		return 0;
	return proxy_rewrite(skb, family, 0, daddr, gw, 0, 0) ? DROP_PROXY_SET_FAILED : 0;
}

/* cil_to_overlay: 1. before tunnel_dst; 0 or a DROP_* reason. */
static __always_inline int proxy_to_overlay(struct __sk_buff *skb)
{
	struct tunnel_addrs a;

	if (tunnel_parse(skb, &a) < 0)
		return 0; /* tunnel_dst drops it */
	return proxy_overlay_egress(skb, a.family, a.saddr, a.daddr, 1);
}

/* 4.: is this IPv4 source (network order) the proxy's address? */
static __always_inline int proxy_is_gw4(__be32 saddr)
{
	struct proxy_cfg *cfg = proxy_config();

	return cfg && cfg->gw_ipv4 && cfg->gw_ipv4 == saddr;
}

/* cil_to_netdev: 4. for a packet from the proxy's address; 0 or a DROP_* reason. */
static __always_inline int proxy_to_netdev(struct __sk_buff *skb)
{
	struct tunnel_addrs a;

	if (tunnel_parse(skb, &a) < 0)
		return 0;
	return proxy_overlay_egress(skb, a.family, a.saddr, a.daddr, 0);
}

/* cil_from_overlay: 2. after tunnel_decap; 0 or a DROP_* reason. */
static __always_inline int proxy_from_overlay(struct __sk_buff *skb)
{
	struct tunnel_addrs a;

	if (tunnel_parse(skb, &a) < 0)
		return 0;
	return proxy_overlay_ingress(skb, a.family, a.saddr, a.daddr);
}
