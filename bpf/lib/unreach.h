/* Answers an IPv4 or IPv6 packet the way kube-proxy's REJECT does for a service without
 * endpoints: an ICMP (ICMPv6) destination unreachable (port unreachable) from the address the
 * packet was sent to, back to its sender, built in place over the packet (lb.h for ClusterIP from
 * a pod, nodeport.h for NodePort and LoadBalancer from outside). The caller sends it on
 * (redirect). The IPv6 builder also answers ICMPv6 Packet Too Big for dsr6.h (a packet that the
 * DSR extension header would push over the device's MTU). It owns no maps.
 *
 * Invariants:
 * 1. Only a packet that is not itself an ICMP error is answered (no ICMP storms between two
 *    datapaths); the caller passes only TCP and UDP.
 * 2. The answer carries the offending IP header and the first 8 bytes after it (RFC 792); IP
 *    options are not copied back (a header with options is answered without them). IPv6: the
 *    fixed header and the 8 bytes after it (RFC 4443 asks for no more than fits the minimum
 *    MTU), the ICMPv6 checksum over the pseudo header.
 * 3. Any failure returns a DROP_* reason and the caller drops: never a half-written packet.
 */
#pragma once

#include "common.h"

#define UNREACH_LEN (14 + 20 + 8 + 20 + 8)

struct unreach_pkt {
	__u8 eth[14];
	__u8 ip[20];
	__u8 icmp[8];
	__u8 orig_ip[20];
	__u8 orig_l4[8];
	__u8 pad[2]; /* bpf_csum_diff wants multiples of 4 */
};

static __always_inline __u16 unreach_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* Rewrites skb into the ICMP answer (ethernet addresses swapped); 0 or a DROP_* reason. */
static __always_inline int unreach_build(struct __sk_buff *skb)
{
	struct unreach_pkt u = {};
	__u8 vhl, eth[14];
	__u32 ihl;
	__s64 sum;
	__u16 c;

	if (bpf_skb_load_bytes(skb, 0, eth, 14) < 0 || bpf_skb_load_bytes(skb, 14, &vhl, 1) < 0)
		return DROP_INVALID;
	ihl = (__u32)(vhl & 0xf) * 4;
	if (ihl < 20 || ihl > 60)
		return DROP_INVALID;
	if (bpf_skb_load_bytes(skb, 14, u.orig_ip, 20) < 0 ||
	    bpf_skb_load_bytes(skb, 14 + ihl, u.orig_l4, 8) < 0)
		return DROP_INVALID;
	if (ihl > 20) { /* 2.: the copy has no options; its length and checksum say so */
		__u16 len = ((__u16)u.orig_ip[2] << 8 | u.orig_ip[3]) - (ihl - 20);

		u.orig_ip[0] = 0x45;
		u.orig_ip[2] = len >> 8;
		u.orig_ip[3] = len & 0xff;
		u.orig_ip[10] = 0;
		u.orig_ip[11] = 0;
		c = unreach_fold(bpf_csum_diff(0, 0, (__be32 *)u.orig_ip, 20, 0));
		u.orig_ip[10] = c & 0xff; /* the fold is in network order in memory */
		u.orig_ip[11] = c >> 8;
	}
	__builtin_memcpy(u.eth, &eth[6], 6);
	__builtin_memcpy(&u.eth[6], eth, 6);
	u.eth[12] = 0x08;
	u.ip[0] = 0x45;
	u.ip[3] = UNREACH_LEN - 14;
	u.ip[8] = 64;
	u.ip[9] = PROTO_ICMP;
	__builtin_memcpy(&u.ip[12], &u.orig_ip[16], 4);
	__builtin_memcpy(&u.ip[16], &u.orig_ip[12], 4);
	c = unreach_fold(bpf_csum_diff(0, 0, (__be32 *)u.ip, 20, 0));
	u.ip[10] = c & 0xff;
	u.ip[11] = c >> 8;
	u.icmp[0] = 3; /* destination unreachable */
	u.icmp[1] = 3; /* port unreachable */
	sum = bpf_csum_diff(0, 0, (__be32 *)u.icmp, 36, 0);
	c = unreach_fold(sum);
	u.icmp[2] = c & 0xff;
	u.icmp[3] = c >> 8;
	if (bpf_skb_change_tail(skb, UNREACH_LEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, &u, UNREACH_LEN, 0) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}

#define UNREACH6_LEN (14 + 40 + 8 + 40 + 8)

struct unreach6_pkt {
	__u8 eth[14];
	__u8 ip[40];
	__u8 icmp[8];
	__u8 orig[48]; /* the offending IPv6 header and the 8 bytes after it */
	__u8 pad[2];
};

/* The IPv6 twin of unreach_build, for any ICMPv6 error type/code; info is the 32-bit field after
 * the checksum (Packet Too Big: the MTU, dsr6.h), host order. */
static __always_inline int icmp6_error_build(struct __sk_buff *skb, __u8 type, __u8 code,
					     __u32 info)
{
	struct unreach6_pkt u = {};
	__u8 eth[14], pseudo[8] = { 0, 0, 0, 56, 0, 0, 0, PROTO_ICMPV6 };
	__s64 sum;
	__u16 c;

	if (bpf_skb_load_bytes(skb, 0, eth, 14) < 0 ||
	    bpf_skb_load_bytes(skb, 14, u.orig, 48) < 0 || (u.orig[0] >> 4) != 6)
		return DROP_INVALID;
	__builtin_memcpy(u.eth, &eth[6], 6);
	__builtin_memcpy(&u.eth[6], eth, 6);
	u.eth[12] = 0x86;
	u.eth[13] = 0xdd;
	u.ip[0] = 0x60;
	u.ip[5] = 56; /* payload: ICMPv6 header + 48 bytes */
	u.ip[6] = PROTO_ICMPV6;
	u.ip[7] = 64;
	__builtin_memcpy(&u.ip[8], &u.orig[24], 16);
	__builtin_memcpy(&u.ip[24], &u.orig[8], 16);
	u.icmp[0] = type;
	u.icmp[1] = code;
	u.icmp[4] = info >> 24;
	u.icmp[5] = (info >> 16) & 0xff;
	u.icmp[6] = (info >> 8) & 0xff;
	u.icmp[7] = info & 0xff;
	sum = bpf_csum_diff(0, 0, (__be32 *)&u.ip[8], 32, 0);
	sum = bpf_csum_diff(0, 0, (__be32 *)pseudo, 8, (__u32)sum);
	sum = bpf_csum_diff(0, 0, (__be32 *)u.icmp, 56, (__u32)sum);
	c = unreach_fold(sum);
	u.icmp[2] = c & 0xff; /* the fold is in network order in memory */
	u.icmp[3] = c >> 8;
	if (bpf_skb_change_tail(skb, UNREACH6_LEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, &u, UNREACH6_LEN, 0) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}

/* ICMPv6 destination unreachable, port unreachable (1/4). */
static __always_inline int unreach6_build(struct __sk_buff *skb)
{
	return icmp6_error_build(skb, 1, 4, 0);
}
