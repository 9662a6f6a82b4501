/* Service load balancing (ClusterIP) for the endpoint programs, per packet with conntrack: a new
 * connection from an endpoint to a service address (VIP:port/proto) picks a backend, is DNATed
 * to it, and the choice is kept in conntrack; the replies get the service address back as their
 * source at the client's hook. It runs before conntrack and policy (enforce.h), so both see the
 * real backend and its identity. It decides no policy. It owns four maps the agent writes as
 * diffs (agent/service/lb_state.ts):
 *
 * - cilia_lb_services: {VIP, port, proto, family} → {slot count, service id, flags}.
 * - cilia_lb_slots: {service id, slot} → backend id. The agent fills the slots: a Maglev table
 *   (algorithm maglev: M slots, minimal disruption) or each backend once per weight unit
 *   (algorithm random). The datapath does the same for both: slot = hash(5-tuple) % slots.
 * - cilia_lb_backends: backend id → {address, port, proto, family, flags}.
 * - cilia_lb_revnat: service id → {VIP, port}: the source the client's replies get back.
 *
 * Conntrack (DIR_SERVICE entries of cilia_ct, the client endpoint's id):
 * - forward: the tuple to the VIP → peer_identity = backend id, rev_nat = service id;
 * - reverse: the tuple to the backend → rev_nat = service id (replies are matched against it).
 *
 * Invariants:
 * 1. Only IPv4 TCP and UDP to a service address are translated; everything else is untouched.
 * 2. A connection keeps its backend while the backend exists (the forward entry); a connection
 *    whose backend was removed picks a new one (its TCP peer then resets it): removing a
 *    backend ends only the connections to it.
 * 3. A service with no slots, or a slot or backend that is missing, drops the new connection with
 *    DROP_NO_SERVICE (158): never passed to the VIP, which no one owns.
 * 4. The reverse NAT rewrites the packet only: conntrack and policy at the client's ingress see
 *    the backend (the tuple the client's egress entry was created with).
 * 5. A rewrite that fails drops (DROP_CSUM_L4); the IP and TCP/UDP checksums are fixed (a UDP
 *    checksum of 0 stays "none").
 * Not yet: IPv6, NodePort, session affinity, hairpin (a backend connecting to its own service).
 */
#pragma once

#include "common.h"
#include "parse.h"
#include "conntrack.h"

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
	__u8 flags;
	__u8 pad;
};
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

static __always_inline __u32 lb_hash(const struct ct_tuple *t)
{
	__u32 h = lb_mix(*(const __u32 *)t->saddr ^ 0x9e3779b9);

	h = lb_mix(h ^ *(const __u32 *)t->daddr);
	h = lb_mix(h ^ (((__u32)t->sport << 16) | t->dport));
	return lb_mix(h ^ t->proto);
}

/* 5.: rewrites the source (src = 1) or destination address and port of an IPv4 TCP/UDP packet. */
static __always_inline int lb_rewrite(struct __sk_buff *skb, int src, __be32 old_ip,
				      __be32 new_ip, __be16 old_port, __be16 new_port, __u8 proto)
{
	__u8 vhl;
	__u32 l4, csum_off = proto == PROTO_UDP ? 6 : 16;
	__u64 mangled = proto == PROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &vhl, 1) < 0)
		return DROP_CSUM_L4;
	l4 = ETH_HLEN + (__u32)(vhl & 0xf) * 4;
	if (bpf_l4_csum_replace(skb, l4 + csum_off, old_ip, new_ip,
				BPF_F_PSEUDO_HDR | mangled | 4) < 0 ||
	    bpf_l3_csum_replace(skb, ETH_HLEN + 10, old_ip, new_ip, 4) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + (src ? 12 : 16), &new_ip, 4, 0) < 0)
		return DROP_CSUM_L4;
	if (old_port == new_port)
		return 0;
	if (bpf_l4_csum_replace(skb, l4 + csum_off, old_port, new_port, mangled | 2) < 0 ||
	    bpf_skb_store_bytes(skb, l4 + (src ? 0 : 2), &new_port, 2, 0) < 0)
		return DROP_CSUM_L4;
	return 0;
}

/* Records a service connection in conntrack (forward and reverse entries). */
static __always_inline int lb_ct_create(const struct pkt *p, const struct ct_tuple *to_backend,
					__u16 ep_id, __u32 backend_id, __u16 svc_id, __u32 len,
					__u64 now)
{
	struct ct_key key = { .ep_id = ep_id, .dir = DIR_SERVICE };
	struct ct_entry e = { .peer_identity = backend_id, .rev_nat = svc_id, .packets = 1,
			      .bytes = len };

	if (p->tuple.proto == PROTO_TCP)
		e.tcp_flags = p->tcp_flags | TCP_SYN;
	e.expires = now + ct_lifetime(&e);
	key.tuple = p->tuple;
	if (bpf_map_update_elem(&cilia_ct, &key, &e, BPF_ANY) < 0)
		return DROP_CT_CREATE_FAILED;
	key.tuple = *to_backend;
	e.peer_identity = 0;
	return bpf_map_update_elem(&cilia_ct, &key, &e, BPF_ANY) < 0 ? DROP_CT_CREATE_FAILED : 0;
}

/* Picks a backend of svc for a new connection (or one whose backend is gone); 0 if none (3.). */
static __always_inline __u32 lb_select(const struct lb_service_value *svc, const struct pkt *p)
{
	struct lb_slot_key k = { .svc_id = svc->svc_id };
	struct lb_slot_value *v;

	if (svc->slots == 0)
		return 0;
	k.slot = lb_hash(&p->tuple) % svc->slots;
	v = bpf_map_lookup_elem(&cilia_lb_slots, &k);
	return v ? v->backend_id : 0;
}

/* From the client: a packet to a service address is DNATed to its connection's backend. */
static __always_inline int lb_dnat(struct __sk_buff *skb, struct pkt *p, __u16 ep_id)
{
	struct lb_service_key sk = { .port = p->tuple.dport, .proto = p->tuple.proto,
				     .family = FAMILY_IPV4 };
	struct ct_key key = { .ep_id = ep_id, .dir = DIR_SERVICE };
	struct lb_service_value *svc;
	struct lb_backend_key bk = {};
	struct lb_backend *be = 0;
	struct ct_entry *e;
	struct ct_tuple to;
	__be32 vip = *(const __be32 *)p->tuple.daddr, bip;
	__u64 now;
	__u16 svc_id;
	int ret;

	*(__be32 *)sk.addr = vip;
	svc = bpf_map_lookup_elem(&cilia_lb_services, &sk);
	if (!svc)
		return 0;
	svc_id = svc->svc_id;
	now = bpf_ktime_get_ns();
	key.tuple = p->tuple;
	e = ct_find(&key, now);
	if (e && e->rev_nat == svc_id) {
		bk.backend_id = e->peer_identity;
		be = bpf_map_lookup_elem(&cilia_lb_backends, &bk);
		if (be)
			ct_update(e, p, 0, skb->len, now);
	}
	if (!be) { /* a new connection, or its backend was removed (2.) */
		bk.backend_id = lb_select(svc, p);
		be = bk.backend_id ? bpf_map_lookup_elem(&cilia_lb_backends, &bk) : 0;
		if (!be)
			return DROP_NO_SERVICE;
		e = 0;
	}
	bip = *(const __be32 *)be->addr;
	to = p->tuple;
	*(__be32 *)to.daddr = bip;
	to.dport = be->port;
	if (!e) {
		ret = lb_ct_create(p, &to, ep_id, bk.backend_id, svc_id, skb->len, now);
		if (ret)
			return ret;
	} else {
		key.tuple = to; /* keep the reverse entry as fresh as the forward one */
		e = ct_find(&key, now);
		if (e)
			ct_update(e, p, 0, skb->len, now);
	}
	ret = lb_rewrite(skb, 0, vip, bip, p->tuple.dport, to.dport, p->tuple.proto);
	if (ret)
		return ret;
	p->tuple = to;
	p->policy_port = bpf_ntohs(to.dport);
	return 0;
}

/* To the client: a reply of a service connection gets the service address as its source (4.). */
static __always_inline int lb_rev_nat(struct __sk_buff *skb, const struct pkt *p, __u16 ep_id)
{
	struct ct_key key = { .ep_id = ep_id, .dir = DIR_SERVICE };
	struct lb_revnat_key rk = {};
	struct lb_revnat *rn;
	struct ct_entry *e;
	__u64 now = bpf_ktime_get_ns();
	__be32 vip;
	__be16 vport;

	ct_reverse(&key.tuple, &p->tuple);
	e = ct_find(&key, now);
	if (!e || !e->rev_nat)
		return 0;
	ct_update(e, p, 1, skb->len, now);
	rk.svc_id = e->rev_nat;
	rn = bpf_map_lookup_elem(&cilia_lb_revnat, &rk);
	if (!rn)
		return 0; /* the service is gone: the client resets the connection */
	vip = *(const __be32 *)rn->addr;
	vport = rn->port;
	*(__be32 *)key.tuple.daddr = vip; /* the forward entry: keep it as fresh */
	key.tuple.dport = vport;
	e = ct_find(&key, now);
	if (e)
		ct_update(e, p, 1, skb->len, now);
	return lb_rewrite(skb, 1, *(const __be32 *)p->tuple.saddr, vip, p->tuple.sport, vport,
			  p->tuple.proto);
}

/* The hook enforce.h calls after the source check, before conntrack and policy: 0 or a DROP_*. */
static __always_inline int lb_translate(struct __sk_buff *skb, struct pkt *p, __u16 ep_id,
					__u8 dir)
{
	if (p->tuple.family != FAMILY_IPV4 ||
	    (p->tuple.proto != PROTO_TCP && p->tuple.proto != PROTO_UDP))
		return 0; /* 1. */
	return dir == DIR_EGRESS ? lb_dnat(skb, p, ep_id) : lb_rev_nat(skb, p, ep_id);
}
