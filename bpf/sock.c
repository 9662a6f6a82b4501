/* Socket-level load balancing (Cilium's "socket LB", bpf_sock), attached to a cgroup v2 by the
 * agent with --bpf-lb-sock true (agent/datapath/sock_loader.ts): a process in that cgroup that
 * connects (or sends a UDP datagram) to a service address gets the backend's address in its
 * socket at once, so its packets carry the backend from the first one: the tc path (lib/lb.h)
 * finds no service in them, and conntrack and policy see the backend as they do after lb.h's DNAT.
 *
 * - cil_sock4_connect / cil_sock6_connect (connect(2), TCP and connected UDP): once per socket.
 * - cil_sock4_sendmsg / cil_sock6_sendmsg: every datagram of an unconnected UDP socket.
 * - cil_sock4_recvmsg / cil_sock6_recvmsg: a UDP reply's source back to the service address (a
 *   DNS client such as dig drops an answer from an address it did not ask).
 * - cil_sock4_getpeername / cil_sock6_getpeername: the peer a process sees is the service.
 * - cil_sock_ops (sockops, BPF_SOCK_OPS_TCP_CONNECT_CB): the trace event of a translated TCP
 *   connection, once its source address and port are chosen (6.).
 *
 * It reads the same maps as lib/lb.h (lib/lb_maps.h: cilia_lb_services, cilia_lb_slots,
 * cilia_lb_backends), written by the agent as diffs: the same backends, the same slot table
 * (random: each backend once per weight unit; maglev: the Maglev table), so weights and Maglev
 * hold as in lb.h; and session affinity's maps and code (lib/lb_affinity.h: cilia_lb_affinity,
 * written here too, and the agent's cilia_lb_affinity_match; 7.). Its own map,
 * cilia_lb_sock_revnat (LRU, lib/sock_lb.h): {socket cookie, backend address, port, family} →
 * the service address, for recvmsg and getpeername, and for sock_term.c to tell a translated
 * connection (TCP or UDP) from a direct one. It also shares the lxc objects'
 * cilia_ipcache (read) and cilia_events ring (written: 6.).
 *
 * Invariants:
 * 1. Only TCP and UDP to a service address:port of the socket's family are translated; anything
 *    else passes untouched (return 1), to the tc path if it goes to a service after all.
 * 2. Slot = hash(socket cookie, service address, port, protocol) % slots: a socket keeps one
 *    backend for all its datagrams to a service while the slots stay, and sockets spread over
 *    the slots as lb.h's 5-tuple hash spreads connections (the socket's source address and port
 *    are not known yet at connect). A connection is translated once, so it keeps its backend
 *    for its lifetime, agent restarts and slot changes included.
 * 3. A service with no slots, or a slot or backend that is missing or of another family (lb.h's
 *    3.): the call fails with ECONNREFUSED (bpf_set_retval; Cilium's answer), at once, never a
 *    hang and never a packet to the service address.
 * 4. Reverse entries are written before the socket is changed; a missing one (evicted, or the
 *    socket was translated by an older object with another map) only leaves the backend visible
 *    to recvmsg/getpeername: TCP is unaffected, a UDP reply then looks foreign to its client.
 * 5. Programs of two objects may run on one socket (a restart attaches the new ones before it
 *    detaches the old, agent/datapath/sock_loader.ts): the second sees the backend's address,
 *    which is no service (1.), and a reply already turned into the service address has no
 *    reverse entry: each translation happens once.
 * 6. Every translation that writes a reverse entry is reported as one trace event into the shared
 *    cilia_events ring (lib/sock_trace.h: frontend by svc_id, backend, the client as far as it is
 *    known): TCP by cil_sock_ops, UDP here. A reverse entry that is already there with the same
 *    service (an unconnected UDP socket's next datagram to the same backend) is neither written
 *    again nor reported. While two objects run (5.), a TCP connection may be reported twice.
 * 7. Session affinity (LB_SVC_F_AFFINITY; lib/lb_affinity.h, 6. and 7.) is keyed by the socket's
 *    network namespace (bpf_get_netns_cookie: a pod is one), not by a client address, which a
 *    socket does not have before connect picks its route; the key's family (LB_AFFINITY_NETNS)
 *    keeps it apart from lb.h's address keys in the same map. A live entry whose backend is still
 *    matched gives that backend and its time is refreshed in place (no LRU update); otherwise
 *    the slot is chosen as in 2. (ECONNREFUSED as in 3.) and written as the namespace's entry.
 *    Every translation counts as a new connection (Cilium's rule): each connect, and each
 *    datagram of an unconnected UDP socket, so a socket that keeps sending keeps its entry
 *    alive (lb.h: its conntrack entry keeps the flow). Terminating backends get no new
 *    connections (not matched, in no slot). A process outside the cgroup, served by lb.h, has
 *    an address entry of its own and may get another backend.
 *
 * Left to the tc path (passed untouched here, translated per packet by lib/lb.h exactly as before):
 * - NodePort and LoadBalancer frontends (LB_SVC_F_EXTERNAL): lb.h does not serve them from pods
 *   either (lib/nodeport.h does, on the underlay).
 * - IPv4-mapped IPv6 destinations (::ffff:a.b.c.d on an IPv6 socket): their packets are IPv4.
 * Differs from the tc path: a pod that is a backend of the service it connects to reaches itself
 * over loopback (the backend sees its own address, Cilium's behaviour), not from lb.h's
 * 169.254.42.1 (hairpin, lb.h 8.); nothing here sees a connection again, so a connected socket
 * whose backend is removed from the service is ended by sock_term.c (socket iterators and
 * bpf_sock_destroy, run by the agent in every local network namespace, kernel >= 6.5; without
 * it, the socket keeps talking to that backend while it lives, where lb.h would reset it: its
 * 2.); sockets of processes outside the cgroup are not seen at all.
 */
#include "lib/sock_trace.h"
#include "lib/lb_affinity.h"

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

SEC("cgroup/connect4")
int cil_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, FAMILY_IPV4);
}

SEC("cgroup/sendmsg4")
int cil_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, FAMILY_IPV4);
}

SEC("cgroup/recvmsg4")
int cil_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, FAMILY_IPV4);
}

SEC("cgroup/getpeername4")
int cil_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, FAMILY_IPV4);
}

SEC("cgroup/connect6")
int cil_sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, FAMILY_IPV6);
}

SEC("cgroup/sendmsg6")
int cil_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, FAMILY_IPV6);
}

SEC("cgroup/recvmsg6")
int cil_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, FAMILY_IPV6);
}

SEC("cgroup/getpeername6")
int cil_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, FAMILY_IPV6);
}

/* 6.: TCP connections, IPv4 and IPv6; 1 lets every operation go on with its defaults. */
SEC("sockops")
int cil_sock_ops(struct bpf_sock_ops *ctx)
{
	if (ctx->op == BPF_SOCK_OPS_TCP_CONNECT_CB)
		sock_trace_tcp_connect(ctx);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
