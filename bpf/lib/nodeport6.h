/* NodePort and LoadBalancer over IPv6 on the node's underlay device (host.c, through two hooks
 * in nodeport.h): the IPv6 twin of nodeport.h's SNAT mode, with its own translation map and a
 * one-entry config map, so nat.h's IPv4 structs stay as they are. A packet to
 * [node IPv6]:nodePort (or [LoadBalancer address]:port) picks a backend the way lb.h does (same
 * slots, same hash) and is translated with entries of cilia_snat6:
 *   NP_FWD   ingress {C:c → S:s}     → dst = B:b; remote backend: src = node6:n  (redirect)
 *   NP_REV   ingress {B:b → node6:n} → dst = C:c, src = S:s                     (redirect)
 *   NP_LOCAL egress  {B:b → C:c}     → src = S:s
 *   HOST     ingress {D:d → node6:n} → nothing: the node's own flow holds port n towards D:d
 * (C client, S the frontend, B backend, n a NAT port from nat.h's range.) It decides no policy:
 * the backend's endpoint program does, as for any packet.
 *
 * Invariants:
 * 1. Only TCP and UDP to a frontend flagged LB_SVC_F_EXTERNAL of family 6 is translated; every
 *    other IPv6 packet is left to the rest of the hook (NP6_CONTINUE): ICMPv6, neighbour
 *    discovery, the node's own traffic, routed pod traffic.
 * 2. A backend in this node's IPv6 pod CIDR gets the packet with the client's address (DNAT
 *    only; the stack routes it to the endpoint); its replies leave through this device and get
 *    the frontend back (NP_LOCAL). A backend elsewhere gets it from the node's IPv6 address and
 *    a NAT port (SNAT, nat.h 3.'s allocation), is routed with a FIB lookup and redirected; its
 *    replies come back here and are turned back to the client (NP_REV).
 * 3. A connection keeps its backend while that backend exists (the NP_FWD entry); a removed
 *    backend makes the next packet pick again. A frontend without backends answers ICMPv6 port
 *    unreachable from the frontend (unreach.h), counted as DROP_NO_SERVICE.
 * 4. A packet to a frontend with extension headers before TCP/UDP is dropped
 *    (DROP_INVALID_EXTHDR), never passed untranslated; fragments never get here (parse.h 3.:
 *    they are left to the stack like every packet parse_packet refuses).
 * 5. --node-port-mode dsr has no IPv6 form yet (no extension header carries the frontend): the
 *    agent refuses IPv6 NodePort/LoadBalancer services in that mode, and one stored before
 *    the switch is served with SNAT (2.), never half translated.
 * 6. A rewrite that fails drops (DROP_CSUM_L4); IPv6 has no header checksum, the TCP/UDP one
 *    covers the addresses (lb6_rewrite).
 */
#pragma once

#include "nat.h"
#include "lb.h"
#include "unreach.h"

#define AF_INET6_ 10
#define NP6_CONTINUE -1 /* not an IPv6 NodePort packet: the hook goes on */

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
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct np6_scratch);
	__uint(max_entries, 1);
} cilia_np6_scratch SEC(".maps");

static __always_inline int np6_drop(struct __sk_buff *skb, int reason, __u8 dir)
{
	metrics_count(reason, dir, skb->len);
	return TC_ACT_SHOT;
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

/* 2.: is addr in the node's IPv6 pod CIDR? Word by word, each with its part of the prefix. */
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

/* 6.: destination first, then source; the tuple follows the packet. */
static __always_inline int nat6_apply(struct __sk_buff *skb, struct ct_tuple *t,
				      const struct nat6_entry *e)
{
	int ret;

	if (!addr_zero16(e->daddr)) {
		ret = lb6_rewrite(skb, 0, t->daddr, e->daddr, t->dport, e->dport, t->proto);
		if (ret)
			return ret;
		addr_copy16(t->daddr, e->daddr);
		t->dport = e->dport;
	}
	if (!addr_zero16(e->saddr)) {
		ret = lb6_rewrite(skb, 1, t->saddr, e->saddr, t->sport, e->sport, t->proto);
		if (ret)
			return ret;
		addr_copy16(t->saddr, e->saddr);
		t->sport = e->sport;
	}
	return 0;
}

/* 2.: inserts rv at rk = {B:b → node6:?} for a free port (nat.h 3.); the port or 0. */
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

/* 2.: the packet goes to its (new) destination by the FIB's next hop. */
static __always_inline int np6_redirect(struct __sk_buff *skb, struct np6_scratch *w)
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
			return np6_drop(skb, DROP_WRITE_ERROR, DIR_INGRESS);
		return bpf_redirect(f->ifindex, 0);
	}
	if (r == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(f->ifindex, 0, 0, 0);
	return np6_drop(skb, DROP_NO_FIB, DIR_INGRESS);
}

/* A new connection to an external IPv6 frontend: 1 if w->fwd is its new entry, 0 if the
 * destination is no frontend, or -DROP_*. */
static __always_inline int np6_new(const struct nat6_cfg *cfg, struct np6_scratch *w, int exthdr)
{
	struct lb_service_key sk = { .port = w->p.tuple.dport, .proto = w->p.tuple.proto,
				     .family = FAMILY_IPV6 };
	struct nat6_entry *fwd = &w->fwd, *rev = &w->rev;
	struct nat6_key *rk = &w->rk;
	struct lb_service_value *svc;
	struct lb_backend_key bk;
	struct lb_backend *be;

	addr_copy16(sk.addr, w->p.tuple.daddr);
	svc = bpf_map_lookup_elem(&cilia_lb_services, &sk);
	if (!svc || !(svc->flags & LB_SVC_F_EXTERNAL))
		return 0; /* 1. */
	if (exthdr)
		return -DROP_INVALID_EXTHDR; /* 4. */
	bk.backend_id = lb_select(svc, &w->p);
	be = bk.backend_id ? bpf_map_lookup_elem(&cilia_lb_backends, &bk) : 0;
	if (!be || be->family != FAMILY_IPV6)
		return -DROP_NO_SERVICE; /* 3. */
	__builtin_memset(fwd, 0, sizeof(*fwd));
	__builtin_memset(rev, 0, sizeof(*rev));
	__builtin_memset(rk, 0, sizeof(*rk));
	fwd->kind = NAT_K_NP_FWD;
	addr_copy16(fwd->daddr, be->addr);
	fwd->dport = be->port;
	fwd->backend_id = bk.backend_id;
	addr_copy16(rk->saddr, be->addr);
	rk->sport = be->port;
	rk->proto = w->p.tuple.proto;
	if (nat6_in_pods(cfg, be->addr)) { /* 2., local: the reply's egress entry */
		rev->kind = NAT_K_NP_LOCAL;
		addr_copy16(rev->saddr, w->p.tuple.daddr);
		rev->sport = w->p.tuple.dport;
		addr_copy16(rk->daddr, w->p.tuple.saddr);
		rk->dport = w->p.tuple.sport;
		rk->dir = NAT_DIR_EGRESS;
		if (bpf_map_update_elem(&cilia_snat6, rk, rev, BPF_ANY) < 0)
			return -DROP_NAT_NO_MAPPING;
	} else { /* 2., remote (and 5.) */
		rev->kind = NAT_K_NP_REV;
		rev->flags = NAT_F_REDIRECT;
		addr_copy16(rev->daddr, w->p.tuple.saddr);
		rev->dport = w->p.tuple.sport;
		addr_copy16(rev->saddr, w->p.tuple.daddr);
		rev->sport = w->p.tuple.dport;
		addr_copy16(rk->daddr, cfg->node_ip);
		rk->dir = NAT_DIR_INGRESS;
		fwd->sport = nat6_alloc(rk, rev, lb_hash(&w->p.tuple));
		if (!fwd->sport)
			return -DROP_NAT_NO_MAPPING;
		addr_copy16(fwd->saddr, cfg->node_ip);
		fwd->flags = NAT_F_REDIRECT;
	}
	if (bpf_map_update_elem(&cilia_snat6, &w->k, fwd, BPF_ANY) < 0)
		return -DROP_NAT_NO_MAPPING;
	return 1;
}

/* The IPv6 TCP/UDP packet of the hook in w->p and its key for dir in w->k, whether extension
 * headers come first; 0, or NP6_CONTINUE for a packet that is not this file's. */
static __always_inline int np6_parse(struct __sk_buff *skb, struct np6_scratch **w,
				     struct nat6_cfg **cfg, int *exthdr, __u8 dir)
{
	__u32 zero = 0;
	__u8 nh;

	*cfg = bpf_map_lookup_elem(&cilia_nat6_cfg, &zero);
	*w = bpf_map_lookup_elem(&cilia_np6_scratch, &zero);
	if (!*cfg || !*w || addr_zero16((*cfg)->node_ip))
		return NP6_CONTINUE;
	if (parse_packet(skb, &(*w)->p) != PARSE_OK || (*w)->p.tuple.family != FAMILY_IPV6 ||
	    ((*w)->p.tuple.proto != PROTO_TCP && (*w)->p.tuple.proto != PROTO_UDP) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 6, &nh, 1) < 0)
		return NP6_CONTINUE;
	*exthdr = nh != (*w)->p.tuple.proto;
	nat6_key_of(&(*w)->k, &(*w)->p.tuple, dir);
	return 0;
}

/* tc ingress of the underlay device, IPv6: a verdict, or NP6_CONTINUE (1.). Inlined: the
 * verifier counts a BPF-to-BPF call's stack on top of the hook's, which is more than 512 bytes,
 * while clang lets the two paths share one frame. nat_flags: nat_cfg's. */
static __always_inline int nodeport6_ingress(struct __sk_buff *skb, __u16 nat_flags)
{
	struct np6_scratch *w;
	struct nat6_entry *e;
	struct nat6_cfg *cfg;
	int exthdr = 0, ret;

	if (np6_parse(skb, &w, &cfg, &exthdr, NAT_DIR_INGRESS))
		return NP6_CONTINUE;
	e = bpf_map_lookup_elem(&cilia_snat6, &w->k);
	if (e && e->kind == NAT_K_HOST)
		return NP6_CONTINUE;
	if (e && e->kind == NAT_K_NP_FWD) {
		struct lb_backend_key bk = { .backend_id = e->backend_id };

		if (!bpf_map_lookup_elem(&cilia_lb_backends, &bk))
			e = 0; /* 3. */
	}
	if (!e) {
		if (!(nat_flags & NAT_CFG_F_NODEPORT))
			return NP6_CONTINUE;
		ret = np6_new(cfg, w, exthdr);
		if (ret == -DROP_NO_SERVICE) { /* 3. */
			np6_drop(skb, DROP_NO_SERVICE, DIR_INGRESS);
			return unreach6_build(skb) ? TC_ACT_SHOT : bpf_redirect(skb->ifindex, 0);
		}
		if (ret < 0)
			return np6_drop(skb, -ret, DIR_INGRESS);
		if (ret == 0)
			return NP6_CONTINUE;
		e = &w->fwd;
	}
	ret = nat6_apply(skb, &w->p.tuple, e);
	if (ret)
		return np6_drop(skb, ret, DIR_INGRESS);
	return (e->flags & NAT_F_REDIRECT) ? np6_redirect(skb, w) : TC_ACT_OK;
}

/* tc egress of the underlay device, IPv6: a local backend's reply gets the frontend (NP_LOCAL);
 * the node's own flows from a NAT-range port keep it (HOST). A verdict, or NP6_CONTINUE. */
static __always_inline int nodeport6_egress(struct __sk_buff *skb)
{
	struct np6_scratch *w;
	struct nat6_entry *e;
	struct nat6_cfg *cfg;
	int exthdr = 0, ret;
	__u16 sport;

	if (np6_parse(skb, &w, &cfg, &exthdr, NAT_DIR_EGRESS))
		return NP6_CONTINUE;
	e = bpf_map_lookup_elem(&cilia_snat6, &w->k);
	if (e) {
		ret = nat6_apply(skb, &w->p.tuple, e);
		return ret ? np6_drop(skb, ret, DIR_EGRESS) : TC_ACT_OK;
	}
	sport = bpf_ntohs(w->p.tuple.sport);
	if (!addr_eq16(w->p.tuple.saddr, cfg->node_ip) || sport < NAT_PORT_MIN ||
	    sport > NAT_PORT_MAX)
		return NP6_CONTINUE;
	__builtin_memset(&w->rev, 0, sizeof(w->rev));
	w->rev.kind = NAT_K_HOST;
	addr_copy16(w->rk.saddr, w->p.tuple.daddr);
	addr_copy16(w->rk.daddr, w->p.tuple.saddr);
	w->rk.sport = w->p.tuple.dport;
	w->rk.dport = w->p.tuple.sport;
	w->rk.proto = w->p.tuple.proto;
	w->rk.dir = NAT_DIR_INGRESS;
	w->rk.pad = 0;
	if (!bpf_map_lookup_elem(&cilia_snat6, &w->rk))
		bpf_map_update_elem(&cilia_snat6, &w->rk, &w->rev, BPF_NOEXIST);
	return NP6_CONTINUE;
}
