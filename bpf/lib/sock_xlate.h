/* The translation behind bpf/sock.c's entry points (Cilium's socket LB): a service address in
 * connect/sendmsg becomes a backend (with session affinity, lb_affinity.h), recvmsg and
 * getpeername get the service address back. Its invariants are sock.c's (the numbers below refer
 * there); only sock.c includes it.
 */
#pragma once

#include "sock_trace.h"
#include "lb_affinity.h"

#define SOCK_ECONNREFUSED 111
#define SOCK_IPV6_MAPPED bpf_htonl(0xffff)

/* The socket's address (the destination of connect/sendmsg, the source of recvmsg, the peer of
 * getpeername) as 16 bytes and its port. */
static __always_inline void sock_addr_get(const struct bpf_sock_addr *ctx, __u8 family,
					  __u8 *addr, __be16 *port)
{
	__u32 *w = (__u32 *)addr;

	if (family == FAMILY_IPV4) {
		w[0] = ctx->user_ip4;
	} else {
		w[0] = ctx->user_ip6[0];
		w[1] = ctx->user_ip6[1];
		w[2] = ctx->user_ip6[2];
		w[3] = ctx->user_ip6[3];
	}
	*port = (__be16)ctx->user_port;
}

static __always_inline void sock_addr_set(struct bpf_sock_addr *ctx, __u8 family,
					  const __u8 *addr, __be16 port)
{
	const __u32 *w = (const __u32 *)addr;

	if (family == FAMILY_IPV4) {
		ctx->user_ip4 = w[0];
	} else {
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
	}
	ctx->user_port = (__u32)port;
}

/* 3. */
static __always_inline int sock_refuse(void)
{
	bpf_set_retval(-SOCK_ECONNREFUSED);
	return 0;
}

/* 2.: the slot's backend id, or 0 (3.). */
static __always_inline __u32 sock_select(const struct lb_service_value *svc,
					 const struct lb_service_key *sk, __u64 cookie)
{
	struct lb_slot_key slot = { .svc_id = svc->svc_id };
	struct lb_slot_value *sv;
	__u32 h;

	if (svc->slots == 0)
		return 0;
	h = lb_mix(lb_fold(sk->addr) ^ 0x9e3779b9);
	h = lb_mix(h ^ (__u32)cookie);
	h = lb_mix(h ^ (__u32)(cookie >> 32));
	h = lb_mix(h ^ (((__u32)sk->port << 16) | sk->proto));
	slot.slot = h % svc->slots;
	sv = bpf_map_lookup_elem(&cilia_lb_slots, &slot);
	return sv ? sv->backend_id : 0;
}

/* The backend of this translation: the network namespace's by affinity (7.), else the slot's
 * (2.); 0 when there is none or it is of another family (3.). */
static __always_inline struct lb_backend *sock_choose(struct bpf_sock_addr *ctx,
						      const struct lb_service_value *svc,
						      const struct lb_service_key *sk, __u64 cookie)
{
	struct lb_affinity_key ak = {};
	struct lb_backend_key bk = {};
	struct lb_backend *be;
	struct lb_affinity *a;
	__u64 now = 0;

	if (svc->flags & LB_SVC_F_AFFINITY) {
		now = bpf_ktime_get_ns();
		lb_affinity_netns_key(&ak, bpf_get_netns_cookie(ctx), svc->svc_id);
		a = lb_affinity_live(&ak, now);
		if (a) {
			bk.backend_id = a->backend_id;
			be = bpf_map_lookup_elem(&cilia_lb_backends, &bk);
			if (be && be->family == sk->family) {
				a->last_used = now; /* refreshed in place: no LRU update */
				return be;
			}
		}
	}
	bk.backend_id = sock_select(svc, sk, cookie);
	be = bk.backend_id ? bpf_map_lookup_elem(&cilia_lb_backends, &bk) : 0;
	if (!be || be->family != sk->family)
		return 0;
	if (svc->flags & LB_SVC_F_AFFINITY)
		lb_affinity_set(&ak, bk.backend_id, now);
	return be;
}

/* connect and sendmsg: a service address becomes its backend (1.–4., 7.). 1 lets the call go
 * on. */
static __always_inline int sock_xlate_fwd(struct bpf_sock_addr *ctx, __u8 family)
{
	struct lb_service_key sk = { .family = family };
	struct sock_revnat_key rk = { .family = family };
	struct lb_revnat rn = { .family = family };
	struct lb_revnat *old;
	struct lb_service_value *svc;
	struct lb_backend *be;
	__u32 proto = ctx->protocol;
	__u64 cookie;

	if (proto != PROTO_TCP && proto != PROTO_UDP)
		return 1;
	sock_addr_get(ctx, family, sk.addr, &sk.port);
	if (family == FAMILY_IPV6 && ((__u32 *)sk.addr)[0] == 0 && ((__u32 *)sk.addr)[1] == 0 &&
	    ((__u32 *)sk.addr)[2] == SOCK_IPV6_MAPPED)
		return 1; /* left to the tc path */
	sk.proto = proto;
	svc = bpf_map_lookup_elem(&cilia_lb_services, &sk);
	if (!svc || (svc->flags & LB_SVC_F_EXTERNAL))
		return 1;
	cookie = bpf_get_socket_cookie(ctx);
	be = sock_choose(ctx, svc, &sk, cookie);
	if (!be)
		return sock_refuse();
	rk.cookie = cookie;
	__builtin_memcpy(rk.addr, be->addr, 16);
	rk.port = be->port;
	__builtin_memcpy(rn.addr, sk.addr, 16);
	rn.port = sk.port;
	old = bpf_map_lookup_elem(&cilia_lb_sock_revnat, &rk);
	if (!old || !addr_eq16(old->addr, rn.addr) || old->port != rn.port || old->family != family) {
		bpf_map_update_elem(&cilia_lb_sock_revnat, &rk, &rn, BPF_ANY);
		if (proto == PROTO_UDP) /* TCP: at BPF_SOCK_OPS_TCP_CONNECT_CB (6.) */
			sock_trace_udp(ctx, family, &rk, svc->svc_id);
	}
	sock_addr_set(ctx, family, be->addr, be->port);
	return 1;
}

/* recvmsg and getpeername: a backend this socket was translated to becomes the service again. */
static __always_inline int sock_xlate_rev(struct bpf_sock_addr *ctx, __u8 family)
{
	struct sock_revnat_key rk = { .family = family };
	struct lb_revnat *rn;

	sock_addr_get(ctx, family, rk.addr, &rk.port);
	rk.cookie = bpf_get_socket_cookie(ctx);
	rn = bpf_map_lookup_elem(&cilia_lb_sock_revnat, &rk);
	if (rn && rn->family == family)
		sock_addr_set(ctx, family, rn->addr, rn->port);
	return 1;
}
