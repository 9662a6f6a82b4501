/* Socket termination's map and walk (bpf/sock_term.c's iterators call sock_term()): which socket
 * the socket LB translated to a removed (service, backend) pair, and its end. The agent writes
 * cilia_lb_sock_term (agent/datapath/sock_term.ts); cilia_lb_sock_revnat is sock.c's (sock_lb.h).
 * The kernel's types below are stubs with only the fields read; CO-RE relocates them.
 *
 * Invariants:
 * 1. A socket ends only if its peer is a removed backend AND its cookie and that backend have an
 *    entry in cilia_lb_sock_revnat whose service address is the pair's service: the socket LB
 *    translated it for that very service. A direct connection to the backend's own address (no
 *    entry), or one through another service that keeps the backend, is left alone.
 * 2. TCP: bpf_sock_destroy aborts it (the process sees ECONNABORTED, the backend a reset); a
 *    TIME_WAIT or request socket is refused by the kernel and skipped. UDP: the socket is
 *    disconnected and its pending error is ECONNABORTED.
 * 3. Nothing is printed: a read of the iterator returns 0 bytes after one pass.
 */
#pragma once

#include "sock_lb.h"

#define SOCK_AF_INET 2
#define SOCK_AF_INET6 10

struct in6_addr {
	union {
		__u32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be16 skc_dport;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

struct udp_sock;

struct bpf_iter__tcp {
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* A (service, backend) pair whose connections are to end: the agent writes the pairs a service
 * update removed, runs the iterators in every local network namespace, then deletes them. */
struct sock_term_key {
	__u8 addr[16];     /* the backend */
	__u8 svc_addr[16]; /* the service address the socket asked for */
	__be16 port;       /* the backend's */
	__be16 svc_port;
	__u8 family;
	__u8 proto;
	__u8 pad[2];
};
_Static_assert(sizeof(struct sock_term_key) == 40, "sock_term_key size");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sock_term_key);
	__type(value, __u8);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cilia_lb_sock_term SEC(".maps");

/* 1. */
static __always_inline int sock_term(struct sock_common *sk, __u8 proto)
{
	struct sock_revnat_key rk = {};
	struct sock_term_key tk = { .proto = proto };
	struct lb_revnat *rn;
	__u32 *w = (__u32 *)rk.addr;
	unsigned short af;

	if (!sk)
		return 0;
	af = sk->skc_family;
	if (af == SOCK_AF_INET) {
		rk.family = FAMILY_IPV4;
		w[0] = sk->skc_daddr;
	} else if (af == SOCK_AF_INET6) {
		rk.family = FAMILY_IPV6;
		w[0] = sk->skc_v6_daddr.in6_u.u6_addr32[0];
		w[1] = sk->skc_v6_daddr.in6_u.u6_addr32[1];
		w[2] = sk->skc_v6_daddr.in6_u.u6_addr32[2];
		w[3] = sk->skc_v6_daddr.in6_u.u6_addr32[3];
	} else {
		return 0;
	}
	rk.port = sk->skc_dport;
	if (rk.port == 0)
		return 0; /* not connected */
	rk.cookie = bpf_get_socket_cookie(sk);
	rn = bpf_map_lookup_elem(&cilia_lb_sock_revnat, &rk);
	if (!rn || rn->family != rk.family)
		return 0;
	__builtin_memcpy(tk.addr, rk.addr, 16);
	__builtin_memcpy(tk.svc_addr, rn->addr, 16);
	tk.port = rk.port;
	tk.svc_port = rn->port;
	tk.family = rk.family;
	if (bpf_map_lookup_elem(&cilia_lb_sock_term, &tk))
		bpf_sock_destroy(sk); /* 2. */
	return 0;
}
