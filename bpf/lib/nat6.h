/* The IPv6 NodePort state (nodeport6.h's): its config, its translation map cilia_snat6, the
 * per-CPU scratch that holds one packet's working set off the stack, and the helpers that read
 * and apply entries. IPv6 twin of nat.h's structs, kept apart so those stay as they are. Numbers
 * in comments refer to nodeport6.h's invariants.
 */
#pragma once

#include "nat.h"
#include "lb.h"
#include "dsr6.h"

#define AF_INET6_ 10
#define NP6_CONTINUE -1 /* not an IPv6 NodePort packet: the hook goes on */
#define NP6_ICMP_ERROR 1 /* np6_parse: an ICMPv6 error (nat_icmp6.h) */

struct nat6_cfg {
	__u8 node_ip[16]; /* the node's IPv6 underlay address; all zero: IPv6 NodePort off */
	__u8 pod_net[16]; /* the node's IPv6 pod CIDR */
	__u8 pod_prefix;  /* its length; 0: none */
	__u8 pad[3];
};
_Static_assert(sizeof(struct nat6_cfg) == 36, "nat6_cfg size");

struct nat6_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* NAT_DIR_* */
	__u16 pad;
};
_Static_assert(sizeof(struct nat6_key) == 40, "nat6_key size");

struct nat6_entry {
	__u8 daddr[16]; /* new destination (all zero: keep) */
	__u8 saddr[16]; /* new source (all zero: keep) */
	__be16 dport;
	__be16 sport;
	__u32 backend_id; /* NP_FWD: the backend chosen, to notice its removal */
	__u8 kind;        /* NAT_K_* (nat.h) */
	__u8 flags;       /* NAT_F_* (nat.h) */
	__u16 pad;
};
_Static_assert(sizeof(struct nat6_entry) == 44, "nat6_entry size");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nat6_cfg);
	__uint(max_entries, 1);
} cilia_nat6_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nat6_key);
	__type(value, struct nat6_entry);
	__uint(max_entries, CILIA_NAT_MAX);
} cilia_snat6 SEC(".maps");

/* The working set of one packet, off the stack: the hook's IPv4 path already holds most of the
 * 512 bytes the verifier allows for the whole call chain. */
struct np6_scratch {
	struct pkt p;
	struct nat6_key k;
	struct nat6_key rk;
	struct nat6_entry fwd;
	struct nat6_entry rev;
	struct bpf_fib_lookup f;
	__u8 ext[DSR6_EXT_LEN]; /* dsr6.h's header, built or read */
	__u32 mtu;
	__u32 inner_l4; /* nat_icmp6.h: the embedded TCP/UDP header's offset */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct np6_scratch);
	__uint(max_entries, 1);
} cilia_np6_scratch SEC(".maps");

/* nodeport.h 11.: counted and sent as an event (np_event.h); the service is not known here. */
static __always_inline int np6_drop(struct __sk_buff *skb, int reason, __u8 dir)
{
	return np_event_drop(skb, reason, dir, 0);
}

static __always_inline void nat6_key_of(struct nat6_key *k, const struct ct_tuple *t, __u8 dir)
{
	addr_copy16(k->saddr, t->saddr);
	addr_copy16(k->daddr, t->daddr);
	k->sport = t->sport;
	k->dport = t->dport;
	k->proto = t->proto;
	k->dir = dir;
	k->pad = 0;
}

/* nodeport6.h 2.: is addr in the node's IPv6 pod CIDR? Word by word, each with its part of the
 * prefix. */
static __always_inline int nat6_in_pods(const struct nat6_cfg *cfg, const __u8 *addr)
{
	const __u32 *a = (const __u32 *)addr, *net = (const __u32 *)cfg->pod_net;
	int i, bits;

	if (cfg->pod_prefix == 0 || cfg->pod_prefix > 128)
		return 0;
#pragma unroll
	for (i = 0; i < 4; i++) {
		__u32 mask;

		bits = (int)cfg->pod_prefix - 32 * i;
		if (bits <= 0)
			break;
		mask = bits >= 32 ? 0xffffffff : ~((1U << (32 - bits)) - 1);
		if ((a[i] ^ net[i]) & bpf_htonl(mask))
			return 0;
	}
	return 1;
}

/* nodeport6.h 6.: the destination half of an entry; the tuple follows the packet. */
static __always_inline int nat6_apply_dst(struct __sk_buff *skb, struct ct_tuple *t,
					  const struct nat6_entry *e)
{
	int ret;

	if (addr_zero16(e->daddr))
		return 0;
	ret = lb6_rewrite(skb, 0, t->daddr, e->daddr, t->dport, e->dport, t->proto);
	if (ret)
		return ret;
	addr_copy16(t->daddr, e->daddr);
	t->dport = e->dport;
	return 0;
}

/* The source half. */
static __always_inline int nat6_apply_src(struct __sk_buff *skb, struct ct_tuple *t,
					  const struct nat6_entry *e)
{
	int ret;

	if (addr_zero16(e->saddr))
		return 0;
	ret = lb6_rewrite(skb, 1, t->saddr, e->saddr, t->sport, e->sport, t->proto);
	if (ret)
		return ret;
	addr_copy16(t->saddr, e->saddr);
	t->sport = e->sport;
	return 0;
}

/* Destination first, then source. */
static __always_inline int nat6_apply(struct __sk_buff *skb, struct ct_tuple *t,
				      const struct nat6_entry *e)
{
	int ret = nat6_apply_dst(skb, t, e);

	return ret ? ret : nat6_apply_src(skb, t, e);
}

/* nodeport6.h 2.: inserts rv at rk = {B:b → node6:?} for a free port (nat.h 3.); the port or
 * 0. */
static __always_inline __be16 nat6_alloc(struct nat6_key *rk, const struct nat6_entry *rv,
					 __u32 seed)
{
	const __u32 size = NAT_PORT_MAX - NAT_PORT_MIN + 1;
	__u32 i, pick = seed;

	for (i = 0; i < NAT_RETRIES; i++) {
		rk->dport = bpf_htons((__u16)(NAT_PORT_MIN + pick % size));
		if (bpf_map_update_elem(&cilia_snat6, rk, rv, BPF_NOEXIST) == 0)
			return rk->dport;
		pick = bpf_get_prandom_u32();
	}
	return 0;
}

/* nodeport6.h 2.: the packet goes to its (new) destination by the FIB's next hop. */
static __always_inline int np6_redirect(struct __sk_buff *skb, struct np6_scratch *w, __u32 svc)
{
	struct bpf_fib_lookup *f = &w->f;
	int r;

	__builtin_memset(f, 0, sizeof(*f));
	f->family = AF_INET6_;
	f->l4_protocol = w->p.tuple.proto;
	f->sport = w->p.tuple.sport;
	f->dport = w->p.tuple.dport;
	__builtin_memcpy(f->ipv6_src, w->p.tuple.saddr, 16);
	__builtin_memcpy(f->ipv6_dst, w->p.tuple.daddr, 16);
	f->ifindex = skb->ifindex;
	r = bpf_fib_lookup(skb, f, sizeof(*f), 0);
	if (r == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, f->dmac, 6, 0) < 0 ||
		    bpf_skb_store_bytes(skb, 6, f->smac, 6, 0) < 0)
			return np_event_drop(skb, DROP_WRITE_ERROR, DIR_INGRESS, svc);
		return bpf_redirect(f->ifindex, 0);
	}
	if (r == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(f->ifindex, 0, 0, 0);
	return np_event_drop(skb, DROP_NO_FIB, DIR_INGRESS, svc);
}
