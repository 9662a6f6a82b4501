/* Local endpoints keyed by the ifindex of their host-side veth. The lxc programs find their
 * endpoint here on every packet; an interface without an entry fails closed (DROP_NO_CONFIG).
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
