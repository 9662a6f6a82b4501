/* The L7 redirect: hands connections whose policy verdict is REDIRECT to the agent's proxy and
 * restores addresses on the way back, without IP_TRANSPARENT (the proxy is a Deno process and
 * cannot set it). It owns three maps the agent shares with the proxy:
 *
 * - cilia_proxy_cfg: the node's proxy addresses (the pod gateways on cilia_host, IPv4 and IPv6)
 *   and that device's ifindex and MAC, written by the agent at start.
 * - cilia_proxy_orig: client ip:port + proxy port → the original destination, the endpoint and
 *   direction whose policy redirected, and both identities. Written here on the SYN, before the
 *   DNAT; the proxy reads it for each accepted connection; replies from the proxy are
 *   reverse-NATed with it.
 * - cilia_proxy_nat: server ip:port + the proxy's local port → the client's address and identity.
 *   Written by the proxy BEFORE it connects upstream (it picks its local port), read here to put
 *   the client's address on the proxy → server leg and to send the server's replies back to it.
 *
 * UDP (the DNS proxy) uses the same maps: every redirected datagram (re)writes its
 * cilia_proxy_orig entry, since a datagram has no SYN; the proxy answers from the gateway and the
 * answer is reverse-NATed like a TCP reply, so the pod sees it come from the server it asked.
 *
 * Addresses are 16 bytes (IPv4 in the first 4, the rest zero) and keys carry the family.
 *
 * Invariants (fail closed):
 * 1. Only TCP and UDP (IPv4 or IPv6) can be redirected; any other redirected packet drops
 *    (DROP_PROXY_UNKNOWN_PROTO). The agent gives UDP entries a proxy port only for DNS rules.
 *    An IPv6 redirect needs the IPv6 proxy address, and IPv6 packets with extension headers
 *    cannot be rewritten (DROP_PROXY_SET_FAILED).
 * 2. A redirect needs the proxy address (cfg), a proxy port in the entry, and, for every new
 *    connection (SYN) and every UDP datagram, a socket there: bpf_sk_lookup_tcp() /
 *    bpf_sk_lookup_udp() must find one, so a proxy that is down drops
 *    (DROP_PROXY_LOOKUP_FAILED), never passes.
 * 3. A connection that started redirected stays redirected; an established connection that did
 *    not start redirected is never handed to the proxy mid-stream (it drops, 178, when its
 *    policy now redirects): L7 rules are never skipped.
 * 4. The upstream leg keeps the client's identity: the receiving endpoint's policy is looked up
 *    with the identity the proxy wrote, and it skips the redirect only when the proxy judged this
 *    very (endpoint, direction). Any other redirect on the upstream leg (an egress L7 rule and an
 *    ingress L7 rule on one path) drops (DROP_PROXY_UNKNOWN_PROTO). Two L7 hops on one node
 *    are judged by the first proxy: it judges the server's ingress policy too and names that
 *    endpoint in the entry (ingress_ep_id).
 * 5. Address rewrites fix the IP and TCP/UDP checksums (a UDP checksum of 0 stays "none"); a
 *    failed rewrite drops (DROP_PROXY_SET_FAILED).
 */
#pragma once

#include <linux/in.h>
#include "common.h"
#include "parse.h"

/* TCP flags, as conntrack.h has them (proxy.h also serves overlay.o, which has no conntrack). */
#define TCP_SYN 0x02
#define TCP_ACK 0x10

struct proxy_cfg {
	__be32 gw_ipv4; /* the proxy's address; 0 = no proxy on this node */
	__u32 host_ifindex; /* cilia_host: ingress redirects enter the stack there */
	__u8 host_mac[6];
	__u8 pad[2];
	__u8 gw_ipv6[16]; /* zero = no IPv6 redirects */
};
_Static_assert(sizeof(struct proxy_cfg) == 32, "proxy_cfg size");

struct proxy_orig_key {
	__u8 client_ip[16];
	__be16 client_port;
	__be16 proxy_port;
	__u8 family;
	__u8 pad[3];
};
_Static_assert(sizeof(struct proxy_orig_key) == 24, "proxy_orig_key size");

struct proxy_orig_value {
	__u8 orig_ip[16];
	__be16 orig_port;
	__u16 ep_id; /* the endpoint whose policy redirected */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 cookie; /* the redirecting policy entry's */
	__u8 dir;     /* DIR_* of that policy */
	__u8 pad[3];
};
_Static_assert(sizeof(struct proxy_orig_value) == 36, "proxy_orig_value size");

struct proxy_nat_key {
	__u8 server_ip[16];
	__be16 server_port;
	__be16 local_port; /* the proxy's upstream port */
	__u8 family;
	__u8 pad[3];
};
_Static_assert(sizeof(struct proxy_nat_key) == 24, "proxy_nat_key size");

struct proxy_nat_value {
	__u8 client_ip[16];
	__u32 identity; /* the client's */
	__u16 ep_id;    /* the proxy judged this endpoint's policy… */
	__u8 dir;       /* …in this DIR_* */
	__u8 pad;
	__u16 ingress_ep_id; /* and also this endpoint's ingress policy (0 = none) */
	__u16 pad2;
};
_Static_assert(sizeof(struct proxy_nat_value) == 28, "proxy_nat_value size");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct proxy_cfg);
	__uint(max_entries, 1);
} cilia_proxy_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct proxy_orig_key);
	__type(value, struct proxy_orig_value);
	__uint(max_entries, 65536);
} cilia_proxy_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct proxy_nat_key);
	__type(value, struct proxy_nat_value);
	__uint(max_entries, 65536);
} cilia_proxy_nat SEC(".maps");

/* What proxy_restore() found out about a packet of the proxy → server leg. */
struct proxy_hop {
	__u32 identity; /* the client's, when from_proxy */
	__u8 from_proxy;
	__u8 judged; /* the proxy judged this endpoint's policy in this direction */
	__u16 pad;
};

static __always_inline struct proxy_cfg *proxy_config(void)
{
	__u32 zero = 0;
	struct proxy_cfg *cfg = bpf_map_lookup_elem(&cilia_proxy_cfg, &zero);

	return cfg && cfg->gw_ipv4 ? cfg : 0;
}

/* Is this a packet the proxy can take (invariant 1)? */
static __always_inline int proxy_proto_ok(const struct pkt *p)
{
	return (p->tuple.family == FAMILY_IPV4 || p->tuple.family == FAMILY_IPV6) &&
	       (p->tuple.proto == PROTO_TCP || p->tuple.proto == PROTO_UDP);
}

/* The proxy's address in the packet's family, as 16 bytes; 0 when it has none. */
static __always_inline int proxy_gw(const struct proxy_cfg *cfg, __u8 family, __u8 *gw)
{
	__builtin_memset(gw, 0, 16);
	if (family == FAMILY_IPV4) {
		*(__be32 *)gw = cfg->gw_ipv4;
		return 1;
	}
	addr_copy16(gw, cfg->gw_ipv6);
	return !addr_zero16(gw);
}

/* IPv6: rewrites the source (src = 1) or destination address and port of a TCP or UDP packet
 * without extension headers (1.); the pseudo-header sum changes by the address difference (5.:
 * the UDP checksum sits at offset 6 and is mandatory over IPv6, so a result of 0 is written as
 * 0xffff, which BPF_F_MARK_MANGLED_0 does). */
static __always_inline int proxy_rewrite6(struct __sk_buff *skb, int src, const __u8 *old_ip,
					  const __u8 *new_ip, __be16 old_port, __be16 new_port)
{
	__u32 l4 = ETH_HLEN + 40, csum_off = l4 + 16;
	__u64 mangled = 0;
	__u8 nh;
	__s64 diff;

	if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &nh, 1) < 0 ||
	    (nh != PROTO_TCP && nh != PROTO_UDP))
		return DROP_PROXY_SET_FAILED;
	if (nh == PROTO_UDP) {
		csum_off = l4 + 6;
		mangled = BPF_F_MARK_MANGLED_0;
	}
	diff = bpf_csum_diff((__be32 *)old_ip, 16, (__be32 *)new_ip, 16, 0);
	if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR | mangled) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + (src ? 8 : 24), new_ip, 16, 0) < 0)
		return DROP_PROXY_SET_FAILED;
	if (old_port == new_port)
		return 0;
	if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | 2) < 0 ||
	    bpf_skb_store_bytes(skb, l4 + (src ? 0 : 2), &new_port, 2, 0) < 0)
		return DROP_PROXY_SET_FAILED;
	return 0;
}

/* Rewrites the source (src = 1) or destination address and port of an IPv4 TCP or UDP packet
 * (5.: the UDP checksum sits at offset 6, and 0 there means "none", which must stay 0). */
static __always_inline int proxy_rewrite4(struct __sk_buff *skb, int src, __be32 old_ip,
					  __be32 new_ip, __be16 old_port, __be16 new_port)
{
	__u32 ip_off = ETH_HLEN + (src ? 12 : 16);
	__u32 l4, port_off, csum_off = 16;
	__u64 mangled = 0;
	__u8 vhl, proto;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &vhl, 1) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 9, &proto, 1) < 0)
		return DROP_PROXY_SET_FAILED;
	if (proto == PROTO_UDP) {
		csum_off = 6;
		mangled = BPF_F_MARK_MANGLED_0;
	}
	l4 = ETH_HLEN + (__u32)(vhl & 0xf) * 4;
	port_off = l4 + (src ? 0 : 2);
	if (bpf_l4_csum_replace(skb, l4 + csum_off, old_ip, new_ip,
				BPF_F_PSEUDO_HDR | mangled | 4) < 0 ||
	    bpf_l3_csum_replace(skb, ETH_HLEN + 10, old_ip, new_ip, 4) < 0 ||
	    bpf_skb_store_bytes(skb, ip_off, &new_ip, 4, 0) < 0)
		return DROP_PROXY_SET_FAILED;
	if (old_port == new_port)
		return 0;
	if (bpf_l4_csum_replace(skb, l4 + csum_off, old_port, new_port, mangled | 2) < 0 ||
	    bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0) < 0)
		return DROP_PROXY_SET_FAILED;
	return 0;
}

/* Either family; addresses are 16 bytes (IPv4 in the first 4). */
static __always_inline int proxy_rewrite(struct __sk_buff *skb, __u8 family, int src,
					 const __u8 *old_ip, const __u8 *new_ip, __be16 old_port,
					 __be16 new_port)
{
	if (family == FAMILY_IPV6)
		return proxy_rewrite6(skb, src, old_ip, new_ip, old_port, new_port);
	return proxy_rewrite4(skb, src, *(const __be32 *)old_ip, *(const __be32 *)new_ip,
			      old_port, new_port);
}

/* Before conntrack: give the packets of proxied connections the addresses their endpoint expects.
 * Toward an endpoint: proxy → client replies get the original destination back as source;
 * proxy → server packets get the client's address (and hop says whose identity). From an
 * endpoint: server → proxy replies are steered to the proxy (the packet only: conntrack and
 * policy keep seeing the client's address, the tuple the server knows). 0 or a DROP_* reason. */
static __always_inline int proxy_restore(struct __sk_buff *skb, struct pkt *p, __u8 dir,
					 __u16 ep_id, struct proxy_hop *hop)
{
	struct proxy_cfg *cfg;
	__u8 gw[16];

	__builtin_memset(hop, 0, sizeof(*hop));
	if (!proxy_proto_ok(p))
		return 0;
	cfg = proxy_config();
	if (!cfg || !proxy_gw(cfg, p->tuple.family, gw))
		return 0;
	if (dir == DIR_INGRESS && addr_eq16(p->tuple.saddr, gw)) {
		struct proxy_orig_key ok = { .client_port = p->tuple.dport,
					     .proxy_port = p->tuple.sport,
					     .family = p->tuple.family };
		struct proxy_nat_key nk = { .server_port = p->tuple.dport,
					    .local_port = p->tuple.sport,
					    .family = p->tuple.family };
		struct proxy_orig_value *o;
		struct proxy_nat_value *n;

		addr_copy16(ok.client_ip, p->tuple.daddr);
		addr_copy16(nk.server_ip, p->tuple.daddr);
		o = bpf_map_lookup_elem(&cilia_proxy_orig, &ok);
		if (o) {
			if (proxy_rewrite(skb, p->tuple.family, 1, gw, o->orig_ip, p->tuple.sport,
					  o->orig_port))
				return DROP_PROXY_SET_FAILED;
			addr_copy16(p->tuple.saddr, o->orig_ip);
			p->tuple.sport = o->orig_port;
			p->event_sport = bpf_ntohs(o->orig_port);
			return 0;
		}
		n = bpf_map_lookup_elem(&cilia_proxy_nat, &nk);
		if (!n)
			return 0;
		if (proxy_rewrite(skb, p->tuple.family, 1, gw, n->client_ip, 0, 0))
			return DROP_PROXY_SET_FAILED;
		addr_copy16(p->tuple.saddr, n->client_ip);
		hop->from_proxy = 1;
		hop->identity = n->identity;
		hop->judged = (n->ep_id == ep_id && n->dir == dir) || n->ingress_ep_id == ep_id;
		return 0;
	}
	if (dir == DIR_EGRESS) {
		struct proxy_nat_key nk = { .server_port = p->tuple.sport,
					    .local_port = p->tuple.dport,
					    .family = p->tuple.family };
		struct proxy_nat_value *n;

		addr_copy16(nk.server_ip, p->tuple.saddr);
		n = bpf_map_lookup_elem(&cilia_proxy_nat, &nk);
		if (n && addr_eq16(n->client_ip, p->tuple.daddr) &&
		    proxy_rewrite(skb, p->tuple.family, 0, p->tuple.daddr, gw, 0, 0))
			return DROP_PROXY_SET_FAILED;
	}
	return 0;
}

/* After policy: adjusts a verdict for the proxy (invariants 1–4). redirected: the connection
 * started redirected (conntrack); established: it is not new. */
static __always_inline void proxy_decide(__u8 *verdict, __u8 *reason, __be16 proxy_port,
					 const struct pkt *p, const struct proxy_hop *hop,
					 int established, int redirected)
{
	struct proxy_cfg *cfg;
	__u8 gw[16];

	if (*reason)
		return;
	if (*verdict == VERDICT_REDIRECT && hop->from_proxy) {
		if (hop->judged)
			*verdict = VERDICT_ALLOW; /* 4. the proxy judged this request */
		else
			*reason = DROP_PROXY_UNKNOWN_PROTO; /* 4. no chains */
		return;
	}
	if (established && redirected != (*verdict == VERDICT_REDIRECT)) {
		*reason = DROP_PROXY_LOOKUP_FAILED; /* 3. */
		return;
	}
	if (*verdict != VERDICT_REDIRECT)
		return;
	cfg = proxy_config();
	if (!proxy_proto_ok(p))
		*reason = DROP_PROXY_UNKNOWN_PROTO; /* 1. */
	else if (!proxy_port || !cfg || !proxy_gw(cfg, p->tuple.family, gw))
		*reason = DROP_PROXY_LOOKUP_FAILED; /* 2. (and 1.: no IPv6 proxy address) */
}

/* 2. Is the proxy listening on its port? Asked for every SYN and every UDP datagram. */
static __always_inline int proxy_alive(struct __sk_buff *skb, const struct pkt *p,
				       const __u8 *gw, __be16 proxy_port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	if (p->tuple.family == FAMILY_IPV6) {
		__builtin_memcpy(t.ipv6.saddr, p->tuple.saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, gw, 16);
		t.ipv6.sport = p->tuple.sport;
		t.ipv6.dport = proxy_port;
		if (p->tuple.proto == PROTO_UDP)
			sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
		else
			sk = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		bpf_sk_release(sk);
		return 1;
	}
	t.ipv4.saddr = *(const __be32 *)p->tuple.saddr;
	t.ipv4.sport = p->tuple.sport;
	t.ipv4.daddr = *(const __be32 *)gw;
	t.ipv4.dport = proxy_port;
	if (p->tuple.proto == PROTO_UDP)
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* 1 when cilia_proxy_orig already holds `v` for `k`: then the datagram writes nothing (every UDP
 * datagram of a redirected flow used to replace its LRU entry: an element taken and one freed,
 * per datagram, for the same 36 bytes). */
static __always_inline int proxy_orig_held(const struct proxy_orig_key *k,
					   const struct proxy_orig_value *v)
{
	const __u32 *cur = bpf_map_lookup_elem(&cilia_proxy_orig, k);
	const __u32 *want = (const __u32 *)v;

	if (!cur)
		return 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*v) / 4); i++)
		if (cur[i] != want[i])
			return 0;
	return 1;
}

/* Hands a packet of a redirected connection to the proxy: records the original destination on a
 * SYN, DNATs to the proxy, and for packets toward the endpoint (already routed) redirects them
 * into the stack on cilia_host. Sets *action (TC_ACT_*); 0 or a DROP_* reason. */
static __always_inline int proxy_redirect(struct __sk_buff *skb, const struct pkt *p, __u8 dir,
					  __u16 ep_id, __u32 src_identity, __u32 dst_identity,
					  __u32 cookie, __be16 proxy_port, int *action)
{
	struct proxy_cfg *cfg = proxy_config();
	__u32 ifindex;
	__u8 gw[16];

	if (!cfg || !proxy_gw(cfg, p->tuple.family, gw))
		return DROP_PROXY_LOOKUP_FAILED;
	if (p->tuple.proto == PROTO_UDP || (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
		struct proxy_orig_key k = { .client_port = p->tuple.sport,
					    .proxy_port = proxy_port,
					    .family = p->tuple.family };
		struct proxy_orig_value v = { .orig_port = p->tuple.dport,
					      .ep_id = ep_id, .src_identity = src_identity,
					      .dst_identity = dst_identity, .cookie = cookie,
					      .dir = dir };

		addr_copy16(k.client_ip, p->tuple.saddr);
		addr_copy16(v.orig_ip, p->tuple.daddr);
		if (!proxy_alive(skb, p, gw, proxy_port))
			return DROP_PROXY_LOOKUP_FAILED;
		if (!proxy_orig_held(&k, &v) &&
		    bpf_map_update_elem(&cilia_proxy_orig, &k, &v, BPF_ANY) < 0)
			return DROP_PROXY_SET_FAILED;
	}
	ifindex = cfg->host_ifindex;
	if (proxy_rewrite(skb, p->tuple.family, 0, p->tuple.daddr, gw, p->tuple.dport,
			  proxy_port))
		return DROP_PROXY_SET_FAILED;
	*action = TC_ACT_OK;
	if (dir == DIR_EGRESS)
		return 0; /* tc ingress of the client's veth: the stack delivers it locally */
	cfg = proxy_config(); /* the helpers above invalidate nothing, but keep the verifier sure */
	if (!cfg || bpf_skb_store_bytes(skb, 0, cfg->host_mac, 6, 0) < 0)
		return DROP_PROXY_SET_FAILED;
	*action = bpf_redirect(ifindex, BPF_F_INGRESS);
	return 0;
}
