/* The load-balancing maps and their structs, shared by the per-packet path (lb.h, tc) and the
 * socket path (sock.c, cgroup hooks): both read the same services, slots and backends, so a
 * service has one backend set and one selection table whatever translates it. lb.h describes the
 * maps and their invariants; this header holds only their layout and the slot hash's mixer.
 */
#pragma once

#include "common.h"

/* Session affinity (sessionAffinity: ClientIP): lb_affinity.h, 6. */
#define LB_SVC_F_AFFINITY (1 << 0)

struct lb_service_key {
	__u8 addr[16]; /* IPv4: the first 4 bytes, the rest 0 */
	__be16 port;
	__u8 proto;
	__u8 family;
};
_Static_assert(sizeof(struct lb_service_key) == 20, "lb_service_key size");

struct lb_service_value {
	__u32 slots;   /* entries in cilia_lb_slots; 0 = no backends (3.) */
	__u16 svc_id;  /* the service's id, and its reverse-NAT id */
	__u8 flags;    /* LB_SVC_F_* */
	__u8 pad;
};

/* A NodePort or LoadBalancer frontend: served on the underlay by nodeport.h, not here (its
 * replies would need this frontend, not the service's ClusterIP, as their source). */
#define LB_SVC_F_EXTERNAL (1 << 7)
_Static_assert(sizeof(struct lb_service_value) == 8, "lb_service_value size");

struct lb_slot_key {
	__u32 svc_id;
	__u32 slot;
};
_Static_assert(sizeof(struct lb_slot_key) == 8, "lb_slot_key size");

struct lb_slot_value {
	__u32 backend_id;
};
_Static_assert(sizeof(struct lb_slot_value) == 4, "lb_slot_value size");

struct lb_backend_key {
	__u32 backend_id;
};
_Static_assert(sizeof(struct lb_backend_key) == 4, "lb_backend_key size");

struct lb_backend {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 family;
	__u8 flags;
	__u8 pad[3];
};
_Static_assert(sizeof(struct lb_backend) == 24, "lb_backend size");

struct lb_revnat_key {
	__u16 svc_id;
	__u16 pad;
};
_Static_assert(sizeof(struct lb_revnat_key) == 4, "lb_revnat_key size");

struct lb_revnat {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad;
};
_Static_assert(sizeof(struct lb_revnat) == 20, "lb_revnat size");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_service_key);
	__type(value, struct lb_service_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilia_lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_slot_key);
	__type(value, struct lb_slot_value);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilia_lb_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_backend_key);
	__type(value, struct lb_backend);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilia_lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_revnat_key);
	__type(value, struct lb_revnat);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilia_lb_revnat SEC(".maps");

/* The slot hash: murmur3's finalizer over the 5-tuple. Deterministic, so a connection whose
 * forward entry expired lands on the same slot again. agent/service/maglev.ts mirrors it. */
static __always_inline __u32 lb_mix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The four words of an address XORed: an IPv4 address is its first word (the rest are 0), so
 * IPv4 hashes as before IPv6 came; an IPv6 address contributes all 16 bytes. */
static __always_inline __u32 lb_fold(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] ^ w[1] ^ w[2] ^ w[3];
}
