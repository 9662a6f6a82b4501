/* IP prefix → security identity (and, for later multi-node use, the tunnel endpoint). One LPM
 * trie for IPv4 and IPv6: the family byte and its padding are part of the matched prefix, so an
 * IPv4 prefix can never match an IPv6 address. A missing address is reserved:world (2).
 */
#pragma once

#include "common.h"

struct ipcache_key {
	__u32 prefixlen; /* 32 (family + pad) + address prefix length */
	__u8 family;     /* FAMILY_IPV4 | FAMILY_IPV6 */
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes, network order */
};
_Static_assert(sizeof(struct ipcache_key) == 24, "ipcache_key size");

struct ipcache_value {
	__u32 identity;
	__u32 tunnel_endpoint; /* IPv4, host order; 0 = local */
	__u8 flags;
	__u8 pad[3];
};
_Static_assert(sizeof(struct ipcache_value) == 12, "ipcache_value size");

/* --bpf-ipcache-max (-DCILIA_IPCACHE_MAX); nodes are allocated on demand, so the cap is free. */
#ifndef CILIA_IPCACHE_MAX
#define CILIA_IPCACHE_MAX 524288
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, CILIA_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilia_ipcache SEC(".maps");

static __always_inline __u32 ipcache_identity(__u8 family, const __u8 *addr)
{
	struct ipcache_key key = { .prefixlen = 32 + 128, .family = family };
	struct ipcache_value *v;

	addr_copy16(key.addr, addr);
	v = bpf_map_lookup_elem(&cilia_ipcache, &key);
	return v ? v->identity : IDENTITY_WORLD;
}
