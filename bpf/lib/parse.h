/* Packet parsing for the endpoint programs: Ethernet, IPv4, IPv6 (with extension headers) and
 * the first bytes of TCP, UDP, SCTP, ICMP and ICMPv6, including the inner header of ICMP errors.
 * Reads are bounds-checked (direct packet access for what is in the linear part, else
 * bpf_skb_load_bytes), so a truncated packet is a parse error, never an out-of-bounds read; an
 * IPv4/TCP packet takes two (Ethernet + IPv4 header, then TCP's first 14 bytes), without a
 * helper call when its headers are linear. It decides nothing: callers turn errors into drops.
 *
 * Invariants:
 * 1. Every field of struct pkt is written before parse_packet() returns PARSE_OK.
 * 2. Truncated or inconsistent IP headers give DROP_INVALID; truncated L4 headers give
 *    DROP_CT_INVALID_HDR; unparsable IPv6 extension header chains give DROP_INVALID_EXTHDR.
 * 3. Fragments are not supported: every IPv4 fragment (first or later) and every IPv6 packet
 *    with a fragment header is dropped with DROP_FRAG_NOSUPPORT. Later fragments carry no ports,
 *    so passing them would bypass L4 policy, and a first fragment alone is useless.
 * 4. The inner tuple of an ICMP error is best effort: if it cannot be read, has_inner is 0 and
 *    the packet is treated as a plain ICMP packet (policy applies).
 */
#pragma once

#include "common.h"

#define PARSE_OK 0
#define PARSE_NOT_IP 1 /* ARP and any other non-IP ethertype */

#define IPV6_MAX_EXT_HEADERS 8

/* A connection tuple as conntrack keys it. ICMP echo: the id is the "source port" of a request
 * and the "destination port" of a reply, so a reply reversed equals its request. */
struct ct_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};
_Static_assert(sizeof(struct ct_tuple) == 40, "ct_tuple size");

struct pkt {
	struct ct_tuple tuple;
	struct ct_tuple inner; /* ICMP errors: the embedded packet's tuple, if has_inner */
	__u16 policy_port;     /* host order: destination port, or the ICMP type */
	__u16 event_sport;     /* host order, for events */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 has_inner;
	__u8 is_nd; /* ICMPv6 neighbour discovery or MLD: link-local control traffic */
	__u8 l3_len; /* IPv4: the header's length (IHL × 4); 0 for IPv6 */
};

struct l4_ports {
	__be16 sport;
	__be16 dport;
};

/* PARSE_DIRECT_MAX: the largest offset parse_read() reads directly (a bound the verifier needs;
 * IPv4 headers end by ETH_HLEN + 60, IPv6 extension header chains may go further). */
#define PARSE_DIRECT_MAX 511

/* len bytes at off into buf: straight from the packet when they are in its linear part (no
 * helper call: the common case), else through bpf_skb_load_bytes, which also reads paged data;
 * < 0 when the packet is shorter. */
static __always_inline int parse_read(struct __sk_buff *skb, __u32 off, __u8 *buf, __u32 len)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	void *at;

	if (off <= PARSE_DIRECT_MAX) {
		at = data + off;
		if (at + len <= end) {
			__builtin_memcpy(buf, at, len);
			return 0;
		}
	}
	return bpf_skb_load_bytes(skb, off, buf, len);
}

static __always_inline int is_icmp4_error(__u8 type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

static __always_inline int is_icmp6_error(__u8 type)
{
	return type >= 1 && type <= 4;
}

/* ICMP echo ids as ports (see struct ct_tuple); other ICMP messages have no ports. */
static __always_inline void icmp_ports(struct ct_tuple *t, __u8 type, __be16 id, int v6)
{
	__u8 req = v6 ? 128 : 8, rep = v6 ? 129 : 0;

	t->sport = type == req ? id : 0;
	t->dport = type == rep ? id : 0;
}

/* Reads the first 8 bytes at off into the tuple's ports; 0 or a DROP_* reason. */
static __always_inline int parse_l4_ports(struct __sk_buff *skb, __u32 off, struct ct_tuple *t)
{
	__u8 b[8];

	if (t->proto == PROTO_TCP || t->proto == PROTO_UDP || t->proto == PROTO_SCTP) {
		if (parse_read(skb, off, b, 4) < 0)
			return DROP_CT_INVALID_HDR;
		t->sport = *(__be16 *)&b[0];
		t->dport = *(__be16 *)&b[2];
	} else if (t->proto == PROTO_ICMP || t->proto == PROTO_ICMPV6) {
		if (bpf_skb_load_bytes(skb, off, b, 8) < 0)
			return DROP_CT_INVALID_HDR;
		icmp_ports(t, b[0], *(__be16 *)&b[4], t->proto == PROTO_ICMPV6);
	} else {
		t->sport = 0;
		t->dport = 0;
	}
	return 0;
}

/* The embedded IPv4 header + 8 bytes of an ICMP error at off. */
static __always_inline void parse_inner4(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	__u8 h[20];
	__u32 ihl;

	p->has_inner = 0;
	if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0 || (h[0] >> 4) != 4)
		return;
	ihl = (h[0] & 0xf) * 4;
	if (ihl < 20)
		return;
	__builtin_memset(&p->inner, 0, sizeof(p->inner));
	p->inner.family = FAMILY_IPV4;
	p->inner.proto = h[9];
	__builtin_memcpy(p->inner.saddr, &h[12], 4);
	__builtin_memcpy(p->inner.daddr, &h[16], 4);
	if (parse_l4_ports(skb, off + ihl, &p->inner) == 0)
		p->has_inner = 1;
}

/* The embedded IPv6 header + 8 bytes of an ICMPv6 error at off (no extension headers). */
static __always_inline void parse_inner6(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	__u8 h[40];

	p->has_inner = 0;
	if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0 || (h[0] >> 4) != 6)
		return;
	__builtin_memset(&p->inner, 0, sizeof(p->inner));
	p->inner.family = FAMILY_IPV6;
	p->inner.proto = h[6];
	__builtin_memcpy(p->inner.saddr, &h[8], 16);
	__builtin_memcpy(p->inner.daddr, &h[24], 16);
	if (parse_l4_ports(skb, off + 40, &p->inner) == 0)
		p->has_inner = 1;
}

/* L4 of the outer packet at off: ports, TCP flags, ICMP type and inner tuple. TCP's ports,
 * data offset and flags come from one read of its first 14 bytes. */
static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	__u8 b[14];
	__u8 proto = p->tuple.proto;
	int ret;

	if (proto == PROTO_TCP) {
		if (parse_read(skb, off, b, 14) < 0)
			return DROP_CT_INVALID_HDR;
		if ((b[12] >> 4) < 5)
			return DROP_CT_INVALID_HDR;
		p->tuple.sport = *(__be16 *)&b[0];
		p->tuple.dport = *(__be16 *)&b[2];
		p->tcp_flags = b[13];
		p->policy_port = bpf_ntohs(p->tuple.dport);
		p->event_sport = bpf_ntohs(p->tuple.sport);
		return 0;
	}
	ret = parse_l4_ports(skb, off, &p->tuple);
	if (ret)
		return ret;
	p->policy_port = bpf_ntohs(p->tuple.dport);
	p->event_sport = bpf_ntohs(p->tuple.sport);
	if (proto == PROTO_ICMP || proto == PROTO_ICMPV6) {
		if (bpf_skb_load_bytes(skb, off, b, 1) < 0)
			return DROP_CT_INVALID_HDR;
		p->icmp_type = b[0];
		p->policy_port = b[0];
		p->event_sport = 0;
		if (proto == PROTO_ICMP && is_icmp4_error(b[0]))
			parse_inner4(skb, off + 8, p);
		if (proto == PROTO_ICMPV6 && is_icmp6_error(b[0]))
			parse_inner6(skb, off + 8, p);
		/* 130-132, 143: MLD; 133-137: router/neighbour discovery and redirect. */
		if (proto == PROTO_ICMPV6 &&
		    ((b[0] >= 130 && b[0] <= 137) || b[0] == 143))
			p->is_nd = 1;
	}
	return 0;
}

/* h: the 20 bytes at off (parse_packet read them with the Ethernet header). */
static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 off, struct pkt *p,
				      const __u8 *h)
{
	__u8 last;
	__u32 ihl;
	__u16 tot_len, frag;

	ihl = (h[0] & 0xf) * 4;
	tot_len = ((__u16)h[2] << 8) | h[3];
	if ((h[0] >> 4) != 4 || ihl < 20 || (tot_len != 0 && tot_len < ihl))
		return DROP_INVALID;
	if (ihl > 20 && bpf_skb_load_bytes(skb, off + ihl - 1, &last, 1) < 0)
		return DROP_INVALID; /* options cut short */
	frag = (((__u16)h[6] << 8) | h[7]) & 0x3fff; /* MF | fragment offset */
	if (frag)
		return DROP_FRAG_NOSUPPORT;
	p->tuple.family = FAMILY_IPV4;
	p->tuple.proto = h[9];
	__builtin_memcpy(p->tuple.saddr, &h[12], 4);
	__builtin_memcpy(p->tuple.daddr, &h[16], 4);
	p->l3_len = ihl;
	return parse_l4(skb, off + ihl, p);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	__u8 h[40];
	__u8 nh;
	int i;

	if (parse_read(skb, off, h, sizeof(h)) < 0 || (h[0] >> 4) != 6)
		return DROP_INVALID;
	p->tuple.family = FAMILY_IPV6;
	__builtin_memcpy(p->tuple.saddr, &h[8], 16);
	__builtin_memcpy(p->tuple.daddr, &h[24], 16);
	nh = h[6];
	off += 40;
#pragma unroll
	for (i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		__u8 e[2];

		if (nh == 44)
			return DROP_FRAG_NOSUPPORT;
		if (nh != 0 && nh != 43 && nh != 60 && nh != 51)
			break;
		if (bpf_skb_load_bytes(skb, off, e, 2) < 0)
			return DROP_INVALID_EXTHDR;
		off += nh == 51 ? ((__u32)e[1] + 2) * 4 : ((__u32)e[1] + 1) * 8;
		nh = e[0];
	}
	if (nh == 0 || nh == 43 || nh == 60 || nh == 51 || nh == 44)
		return nh == 44 ? DROP_FRAG_NOSUPPORT : DROP_INVALID_EXTHDR;
	p->tuple.proto = nh;
	return parse_l4(skb, off, p);
}

/* PARSE_OK, PARSE_NOT_IP, or a DROP_* reason. The Ethernet header and the first 20 bytes after
 * it are one read (an IPv4 header without options, the common case); a frame too short for
 * that is read again for its Ethernet header alone: an IP one is then truncated (DROP_INVALID),
 * anything else is not IP. */
static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt *p)
{
	__u8 h[ETH_HLEN + 20];
	__u16 proto;

	__builtin_memset(p, 0, sizeof(*p));
	if (parse_read(skb, 0, h, sizeof(h)) < 0) {
		if (bpf_skb_load_bytes(skb, 0, h, ETH_HLEN) < 0)
			return DROP_INVALID;
		proto = ((__u16)h[12] << 8) | h[13];
		return proto == ETH_P_IP || proto == ETH_P_IPV6 ? DROP_INVALID : PARSE_NOT_IP;
	}
	proto = ((__u16)h[12] << 8) | h[13];
	if (proto == ETH_P_IP)
		return parse_ipv4(skb, ETH_HLEN, p, &h[ETH_HLEN]);
	if (proto == ETH_P_IPV6)
		return parse_ipv6(skb, ETH_HLEN, p);
	return PARSE_NOT_IP;
}
