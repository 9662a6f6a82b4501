/* Session affinity (sessionAffinity: ClientIP), Cilium's shape, for both translators of a service:
 * the per-packet path (lb.h, where it is lb.h's 6. and 7.) and the socket LB (bpf/sock.c). One
 * implementation, two kinds of client in one pair of maps. It owns the maps; it picks no backend
 * by itself (the caller's slot hash does when there is no affinity) and rewrites nothing.
 *
 * - cilia_lb_affinity (LRU, written by the datapath only): {client, service id} → {backend id,
 *   time of the client's last new connection to the service}. The client is
 *   - an address (lb.h: the packet's source; family FAMILY_IPV4 or FAMILY_IPV6, IPv4 in the first
 *     4 bytes), or
 *   - a network namespace (sock.c: bpf_get_netns_cookie of the socket; family LB_AFFINITY_NETNS,
 *     the cookie's 8 bytes first, the rest 0): a socket has no source address before connect
 *     picks its route, and a pod is one network namespace (Cilium keys its socket LB's affinity
 *     the same way).
 * - cilia_lb_affinity_match (written by the agent): {backend id, service id} → {timeout in
 *   seconds}, one entry per backend of an affinity service that takes new connections.
 *
 * Invariants (lb.h's numbering):
 * 6. A new connection of a client with a live affinity entry (its last new connection to the
 *    service within the timeout) goes to that backend if {backend, service} is still in
 *    cilia_lb_affinity_match and the backend exists; otherwise (expired, removed from the
 *    service, terminating, gone) a backend is picked as usual and becomes the client's.
 *    An address key and a cookie key never meet: their family values differ (the key is
 *    compared whole), so a process in a pod that the socket LB serves and one that the tc path
 *    serves (outside the cgroup) each have their own entry, as in Cilium.
 * 7. Terminating backends are in neither the slots nor cilia_lb_affinity_match: they get no
 *    new connections, and keep their established ones (lb.h's 2.; sock.c: while they live).
 */
#pragma once

#include "lb_maps.h"

/* lb_affinity_key.family of a socket LB client: its network namespace's cookie (6.). */
#define LB_AFFINITY_NETNS 0xff

struct lb_affinity_key {
	__u8 addr[16]; /* the client's address (IPv4: the first 4 bytes) or netns cookie (6.) */
	__u16 svc_id;
	__u8 family; /* FAMILY_IPV4, FAMILY_IPV6 or LB_AFFINITY_NETNS */
	__u8 pad;
};
_Static_assert(sizeof(struct lb_affinity_key) == 20, "lb_affinity_key size");

struct lb_affinity {
	__u64 last_used; /* bpf_ktime_get_ns() of the client's last new connection */
	__u32 backend_id;
	__u32 pad;
};
_Static_assert(sizeof(struct lb_affinity) == 16, "lb_affinity size");

struct lb_affinity_match_key {
	__u32 backend_id;
	__u16 svc_id;
	__u16 pad;
};
_Static_assert(sizeof(struct lb_affinity_match_key) == 8, "lb_affinity_match_key size");

struct lb_affinity_match {
	__u32 timeout_s;
};
_Static_assert(sizeof(struct lb_affinity_match) == 4, "lb_affinity_match size");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity);
	__uint(max_entries, 65536);
} cilia_lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_affinity_match_key);
	__type(value, struct lb_affinity_match);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilia_lb_affinity_match SEC(".maps");

/* 6.: the client's live entry (within the timeout, its backend matched), or 0. */
static __always_inline struct lb_affinity *lb_affinity_live(const struct lb_affinity_key *ak,
							    __u64 now)
{
	struct lb_affinity_match_key mk = { .svc_id = ak->svc_id };
	struct lb_affinity_match *m;
	struct lb_affinity *a;

	a = bpf_map_lookup_elem(&cilia_lb_affinity, ak);
	if (!a)
		return 0;
	mk.backend_id = a->backend_id;
	m = bpf_map_lookup_elem(&cilia_lb_affinity_match, &mk);
	if (!m || now - a->last_used > (__u64)m->timeout_s * 1000000000ULL)
		return 0;
	return a;
}

/* 6.: the client's backend by affinity, or 0. */
static __always_inline __u32 lb_affinity_get(const struct lb_affinity_key *ak, __u64 now)
{
	struct lb_affinity *a = lb_affinity_live(ak, now);

	return a ? a->backend_id : 0;
}

/* 6.: backend_id becomes the client's, its last new connection now (lb.h's lb_choose writes the
 * same inline, its code kept as it was). */
static __always_inline void lb_affinity_set(const struct lb_affinity_key *ak, __u32 backend_id,
					    __u64 now)
{
	struct lb_affinity a = { .last_used = now, .backend_id = backend_id };

	bpf_map_update_elem(&cilia_lb_affinity, ak, &a, BPF_ANY);
}

/* 6.: the key of a socket LB client, its network namespace (the cookie in the first 8 bytes). */
static __always_inline void lb_affinity_netns_key(struct lb_affinity_key *ak, __u64 netns,
						  __u16 svc_id)
{
	__builtin_memcpy(ak->addr, &netns, 8);
	ak->svc_id = svc_id;
	ak->family = LB_AFFINITY_NETNS;
}
