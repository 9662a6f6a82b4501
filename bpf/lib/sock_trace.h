/* The socket LB's trace events (Cilium's "trace sock", Hubble's sock_xlate_point
 * POST_DIRECTION_FWD): a connection or datagram the socket LB translated never carries the service
 * address in a packet, so sock.c says which service it was for here, once per translation, as
 * one record of the shared cilia_events ring (lib/events.h; sock_loader.ts reuses the lxc
 * objects' pinned ring, so the agent's one monitor reads it). Only sock.c includes it.
 *
 * The record is a struct cilia_event like any other, so the monitor needs no second parser:
 * type EVENT_TRACE, subtype TRACE_SOCK_XLATE, svc_id the service, family, proto, sport (the local
 * port, 0 while unbound) and dport (the backend's port, host order), the identities of both ends
 * from the ipcache (the source's only when its address is known, else 0), ep_id 0 and dir 0 (no
 * endpoint program saw it: the monitor attributes the source by its address), orig_len 0 (no
 * packet) and, since a sock event has no interface, ifindex = the socket cookie's low 32 bits. Its
 * data is a synthesized packet: an Ethernet header (zero addresses, the family's ethertype), an
 * IPv4 or IPv6 header with the local address (0.0.0.0 / :: when unknown) and the backend, and the
 * first 4 bytes of TCP/UDP (the ports): 38 or 58 bytes.
 *
 * Invariants:
 * 1. One event per translation that reaches the network: TCP from the sockops hook at
 *    BPF_SOCK_OPS_TCP_CONNECT_CB (the source address and port are chosen by then; connect4/6
 *    emit nothing for TCP), a connected UDP socket at connect, an unconnected one at the first
 *    datagram to a backend (sock.c writes its reverse entry then; later datagrams find it and
 *    send nothing, until the LRU evicts it).
 * 2. An event that finds the ring full is counted in cilia_events_lost, as every other event; the
 *    translation itself never depends on the event.
 */
#pragma once

#include "sock_lb.h"
#include "events.h"
#include "ipcache.h"

#define SOCK_TRACE_ETH_LEN 14
#define SOCK_TRACE_CAP4 (SOCK_TRACE_ETH_LEN + 20 + 4)
#define SOCK_TRACE_CAP6 (SOCK_TRACE_ETH_LEN + 40 + 4)
_Static_assert(SOCK_TRACE_CAP6 <= EVENT_CAPTURE_LEN, "sock trace fits the capture");

/* What a translation's event says: addresses as 16 bytes (IPv4: the first 4), ports in network
 * order, saddr all zero when unknown. */
struct sock_trace {
	__u8 saddr[16];
	__u8 daddr[16];
	__u64 cookie;
	__be16 sport;
	__be16 dport;
	__u16 svc_id;
	__u8 family;
	__u8 proto;
};

/* The synthesized packet: Ethernet, the IP header and the ports (everything else zero). */
static __always_inline __u32 sock_trace_packet(__u8 *d, const struct sock_trace *t)
{
	__u8 *l4;

	if (t->family == FAMILY_IPV4) {
		d[12] = 0x08;
		d[14] = 0x45; /* version 4, 20-byte header */
		d[22] = 64;   /* TTL */
		d[23] = t->proto;
		__builtin_memcpy(d + 26, t->saddr, 4);
		__builtin_memcpy(d + 30, t->daddr, 4);
		l4 = d + SOCK_TRACE_ETH_LEN + 20;
	} else {
		d[12] = 0x86;
		d[13] = 0xdd;
		d[14] = 0x60; /* version 6 */
		d[20] = t->proto;
		d[21] = 64; /* hop limit */
		__builtin_memcpy(d + 22, t->saddr, 16);
		__builtin_memcpy(d + 38, t->daddr, 16);
		l4 = d + SOCK_TRACE_ETH_LEN + 40;
	}
	__builtin_memcpy(l4, &t->sport, 2);
	__builtin_memcpy(l4 + 2, &t->dport, 2);
	return t->family == FAMILY_IPV4 ? SOCK_TRACE_CAP4 : SOCK_TRACE_CAP6;
}

/* Sends the event of one translation (1., 2.). */
static __always_inline void sock_trace_send(const struct sock_trace *t)
{
	struct cilia_event_rec *rec;
	__u32 zero = 0;
	__u64 *lost;

	rec = bpf_ringbuf_reserve(&cilia_events, sizeof(*rec), 0);
	if (!rec) {
		lost = bpf_map_lookup_elem(&cilia_events_lost, &zero);
		if (lost)
			*lost += 1;
		return;
	}
	__builtin_memset(rec, 0, sizeof(*rec));
	rec->hdr.type = EVENT_TRACE;
	rec->hdr.subtype = TRACE_SOCK_XLATE;
	rec->hdr.src_identity = addr_zero16(t->saddr) ? 0 : ipcache_identity(t->family, t->saddr);
	rec->hdr.dst_identity = ipcache_identity(t->family, t->daddr);
	rec->hdr.ifindex = (__u32)t->cookie;
	rec->hdr.proto = t->proto;
	rec->hdr.sport = bpf_ntohs(t->sport);
	rec->hdr.dport = bpf_ntohs(t->dport);
	rec->hdr.family = t->family;
	rec->hdr.svc_id = t->svc_id;
	rec->hdr.cap_len = sock_trace_packet(rec->data, t);
	bpf_ringbuf_submit(rec, BPF_RB_NO_WAKEUP);
}

/* The sockops hook at BPF_SOCK_OPS_TCP_CONNECT_CB: a TCP connection the socket LB translated
 * (its reverse entry: {cookie, backend} → the service address) gets its event with the full
 * tuple. A connection that was not translated finds no entry and sends nothing. */
static __always_inline void sock_trace_tcp_connect(struct bpf_sock_ops *ctx)
{
	struct sock_revnat_key rk = {};
	struct lb_service_key sk = {};
	struct sock_trace t = {};
	struct lb_service_value *svc;
	struct lb_revnat *rn;
	__u32 *s = (__u32 *)t.saddr, *d = (__u32 *)t.daddr;
	/* Every field read once (volatile: clang may not move the reads), whatever the family: a
	 * read chosen by family makes clang compute a pointer into the context, which the verifier
	 * refuses. */
	const volatile struct bpf_sock_ops *v = ctx;
	__u32 family = v->family, lip4 = v->local_ip4, rip4 = v->remote_ip4;
	__u32 l0 = v->local_ip6[0], l1 = v->local_ip6[1], l2 = v->local_ip6[2];
	__u32 l3 = v->local_ip6[3], r0 = v->remote_ip6[0], r1 = v->remote_ip6[1];
	__u32 r2 = v->remote_ip6[2], r3 = v->remote_ip6[3];

	if (family == 2 /* AF_INET */) {
		t.family = FAMILY_IPV4;
		s[0] = lip4;
		d[0] = rip4;
	} else if (family == 10 /* AF_INET6 */) {
		t.family = FAMILY_IPV6;
		s[0] = l0;
		s[1] = l1;
		s[2] = l2;
		s[3] = l3;
		d[0] = r0;
		d[1] = r1;
		d[2] = r2;
		d[3] = r3;
	} else {
		return;
	}
	/* remote_port: network order (in the upper half on little-endian); local_port: host order */
	t.dport = bpf_htons((__u16)bpf_ntohl(ctx->remote_port));
	t.sport = bpf_htons((__u16)ctx->local_port);
	t.cookie = bpf_get_socket_cookie(ctx);
	t.proto = PROTO_TCP;
	rk.cookie = t.cookie;
	addr_copy16(rk.addr, t.daddr);
	rk.port = t.dport;
	rk.family = t.family;
	rn = bpf_map_lookup_elem(&cilia_lb_sock_revnat, &rk);
	if (!rn || rn->family != t.family)
		return;
	addr_copy16(sk.addr, rn->addr);
	sk.port = rn->port;
	sk.proto = PROTO_TCP;
	sk.family = t.family;
	svc = bpf_map_lookup_elem(&cilia_lb_services, &sk);
	t.svc_id = svc ? svc->svc_id : 0; /* 0: the service is gone since connect */
	sock_trace_send(&t);
}

/* connect4/6 and sendmsg4/6 of UDP, when they write a socket's reverse entry (1.): the source is
 * the socket's bound address and port, if any (an unbound socket gets both only when the kernel
 * routes its first datagram, after this hook). */
static __always_inline void sock_trace_udp(const struct bpf_sock_addr *ctx, __u8 family,
					   const struct sock_revnat_key *rk, __u16 svc_id)
{
	struct sock_trace t = { .family = family, .proto = PROTO_UDP, .svc_id = svc_id };
	struct bpf_sock *sk = ctx->sk;
	__u32 *s = (__u32 *)t.saddr;

	/* family: a constant of the entry point, so the verifier sees one fixed read per field (a
	 * pointer computed to either would be refused: no arithmetic on a socket pointer) */
	if (family == FAMILY_IPV4) {
		s[0] = sk->src_ip4;
	} else {
		s[0] = sk->src_ip6[0];
		s[1] = sk->src_ip6[1];
		s[2] = sk->src_ip6[2];
		s[3] = sk->src_ip6[3];
	}
	t.sport = bpf_htons((__u16)sk->src_port);
	addr_copy16(t.daddr, rk->addr);
	t.dport = rk->port;
	t.cookie = rk->cookie;
	sock_trace_send(&t);
}
