/* Local endpoints keyed by the ifindex of their host-side veth. The lxc programs find their
 * endpoint here on every packet; an interface without an entry fails closed (DROP_NO_CONFIG).
 * cilia_lxc_ipv4 maps a local endpoint's IPv4 address to that veth and the two MACs a packet
 * delivered to it carries (tunnel.h, 5.: the receive path skips the FIB on a hit). The agent
 * writes both entries before it attaches the endpoint's programs and deletes both before it
 * detaches them (agent/datapath/datapath.ts); a miss only means the FIB decides.
 */
#pragma once

#include "common.h"

struct endpoint_key {
	__u32 ifindex;
};
_Static_assert(sizeof(struct endpoint_key) == 4, "endpoint_key size");

struct endpoint_info {
	__u16 ep_id;
	__u8 flags; /* EP_F_* (constants.generated.h) */
	__u8 pad;
	__u32 identity;
	__u32 ipv4; /* network order; 0 = none (no source check) */
	__u8 ipv6[16]; /* all zero = none (no source check) */
	__u8 mac[6];
	__u8 host_mac[6]; /* the host side's: nd.h answers for the pods' IPv6 router with it */
};
_Static_assert(sizeof(struct endpoint_info) == 40, "endpoint_info size");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, 4096);
} cilia_endpoints SEC(".maps");

static __always_inline struct endpoint_info *endpoint_lookup(__u32 ifindex)
{
	struct endpoint_key key = { .ifindex = ifindex };

	return bpf_map_lookup_elem(&cilia_endpoints, &key);
}

struct lxc_ipv4_info {
	__u32 ifindex; /* the endpoint's host-side veth */
	__u8 mac[6]; /* the pod's: the destination MAC (the FIB's neighbour entry) */
	__u8 host_mac[6]; /* the veth's: the source MAC */
};
_Static_assert(sizeof(struct lxc_ipv4_info) == 16, "lxc_ipv4_info size");
_Static_assert(sizeof(__be32) == 4, "lxc_ipv4 key size");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct lxc_ipv4_info);
	__uint(max_entries, 4096);
} cilia_lxc_ipv4 SEC(".maps");

static __always_inline struct lxc_ipv4_info *lxc_ipv4_lookup(__be32 addr)
{
	return bpf_map_lookup_elem(&cilia_lxc_ipv4, &addr);
}
