/* Shared definitions for every cilia BPF program: includes, directions, address families and the
 * small helpers all headers use. It owns no maps and must not grow logic of its own.
 */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "drop_reasons.generated.h"
/* Directions (DIR_* for the datapath, POLICY_DIR_* for policy keys), endpoint and policy flags,
 * policy prefix lengths, event types, trace points, conntrack states. */
#include "constants.generated.h"

#define FAMILY_IPV4 4
#define FAMILY_IPV6 6

#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define PROTO_SCTP 132

/* Reserved identities (POLICY-SEMANTICS.md §10). */
#define IDENTITY_ANY 0
#define IDENTITY_WORLD 2

/* Metrics reason for packets that were passed on. */
#define REASON_FORWARDED 0

/* The Internet checksum of a ones' complement sum (bpf_csum_diff's, or a 32-bit one): folded to
 * 16 bits and inverted. */
static __always_inline __u16 csum_fold(__s64 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

static __always_inline int addr_eq16(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

static __always_inline int addr_zero16(const __u8 *a)
{
	const __u32 *x = (const __u32 *)a;

	return (x[0] | x[1] | x[2] | x[3]) == 0;
}

static __always_inline void addr_copy16(__u8 *dst, const __u8 *src)
{
	__u32 *d = (__u32 *)dst;
	const __u32 *s = (const __u32 *)src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
	d[3] = s[3];
}
