/* Service load balancing (ClusterIP) for the endpoint programs, per packet with conntrack: a new
 * connection from an endpoint to a service address (VIP:port/proto) picks a backend, is DNATed
 * to it, and the choice is kept in conntrack; the replies get the service address back as their
 * source at the client's hook. DNAT runs before conntrack and policy (enforce.h), reverse NAT
 * after conntrack classified a reply, so both see the real backend and its identity. It decides
 * no policy. It owns four maps the agent writes as diffs (agent/service/lb_state.ts); their
 * layout is in lb_maps.h, which the socket path (bpf/sock.c, --bpf-lb-sock) reads too (as it does
 * session affinity's two maps and code: lib/lb_affinity.h, 6. and 7.):
 *
 * - cilia_lb_services: {VIP, port, proto, family} → {slot count, service id, flags}.
 * - cilia_lb_slots: {service id, slot} → backend id. The agent fills the slots: a Maglev table
 *   (algorithm maglev: M slots, minimal disruption) or each backend once per weight unit
 *   (algorithm random). The datapath does the same for both: slot = hash(5-tuple) % slots.
 * - cilia_lb_backends: backend id → {address, port, proto, family, flags}.
 * - cilia_lb_revnat: service id → {VIP, port}: the source the client's replies get back.
 *
 * Conntrack (cilia_ct, the client endpoint's id):
 * - forward (DIR_SERVICE): the tuple to the VIP → peer_identity = backend id, rev_nat = service
 *   id; refreshed by every packet out and by replies that open, close or are not TCP;
 * - the client's own egress entry (enforce.h) of the tuple to the backend carries rev_nat =
 *   service id (conntrack.h, 6.): a reply it classifies as CT_REPLY gets the VIP back
 *   (lb_rev_nat_ct), with no lookup of its own. One entry per connection fewer than a reverse
 *   DIR_SERVICE entry, and a reply to a pod needs no service lookup at all.
 * - reverse (DIR_SERVICE): the tuple to the backend → rev_nat = service id, only where the
 *   client has no conntrack entry of its own: hairpin (8.) and endpoints without enforcement.
 *   Replies of connections whose egress entry predates conntrack.h's 6. still use theirs.
 *
 * Invariants:
 * 1. Only TCP and UDP (IPv4 or IPv6) to a service address of the packet's family are
 *    translated; everything else is untouched. A service's backends and reverse-NAT address
 *    have its frontend's family (the agent refuses mixed families); a backend of another family
 *    is treated as missing (3.).
 * 2. A connection keeps its backend while the backend exists (the forward entry); a connection
 *    whose backend was removed picks a new one (its TCP peer then resets it): removing a
 *    backend ends only the connections to it.
 * 3. A service with no slots, or a slot or backend that is missing, drops the new connection with
 *    DROP_NO_SERVICE (158): never passed to the VIP, which no one owns. The pod gets ICMP port
 *    unreachable from the VIP (lb_reject), so its connect fails at once, as with kube-proxy.
 * 4. The reverse NAT rewrites the packet only: conntrack and policy at the client's ingress see
 *    the backend (the tuple the client's egress entry was created with).
 * 5. A rewrite that fails drops (DROP_CSUM_L4); the IP and TCP/UDP checksums are fixed (a UDP
 *    checksum of 0 stays "none"). IPv6 has no header checksum: the TCP/UDP one covers the
 *    addresses (pseudo header). An IPv6 service packet with extension headers before TCP/UDP is
 *    dropped (DROP_INVALID_EXTHDR), never passed untranslated.
 * Session affinity and terminating backends: 6. and 7. (lib/lb_affinity.h; lb_choose keys the
 * client by its address); hairpin: 8. and 9. below (IPv4 only).
 * IPv6 (ClusterIP from pods): the same maps and code, 16-byte addresses with the family field,
 * ICMPv6 port unreachable for 3. NodePort/LoadBalancer over IPv6: nodeport6.h. Not yet for IPv6:
 * hairpin.
 */
#pragma once

#include "common.h"
#include "parse.h"
#include "conntrack.h"
#include "unreach.h"
#include "lb_maps.h"
#include "lb_affinity.h"
#include "lb_rewrite.h"

static __always_inline __u32 lb_hash(const struct ct_tuple *t)
{
	__u32 h = lb_mix(lb_fold(t->saddr) ^ 0x9e3779b9);

	h = lb_mix(h ^ lb_fold(t->daddr));
	h = lb_mix(h ^ (((__u32)t->sport << 16) | t->dport));
	return lb_mix(h ^ t->proto);
}

/* Records a service connection in conntrack: the forward entry, and the reverse entry when the
 * client keeps no entry of its own (to_backend set). */
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
	if (!to_backend)
		return 0;
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

/* Picks the backend of a new connection: by affinity (6.), else by slot (lb_select). The
 * backend's entry, or 0 when there is none (3.); bk gets its id. */
static __always_inline struct lb_backend *lb_choose(const struct lb_service_value *svc,
						    const struct pkt *p, struct lb_backend_key *bk,
						    __u64 now)
{
	struct lb_affinity_key ak = { .svc_id = svc->svc_id, .family = p->tuple.family };
	struct lb_affinity a = { .last_used = now };
	struct lb_backend *be = 0;

	if (svc->flags & LB_SVC_F_AFFINITY) {
		__builtin_memcpy(ak.addr, p->tuple.saddr, 16); /* IPv4: the rest is 0 */
		bk->backend_id = lb_affinity_get(&ak, now);
		if (bk->backend_id)
			be = bpf_map_lookup_elem(&cilia_lb_backends, bk);
	}
	if (!be) {
		bk->backend_id = lb_select(svc, p);
		be = bk->backend_id ? bpf_map_lookup_elem(&cilia_lb_backends, bk) : 0;
	}
	if (be && (svc->flags & LB_SVC_F_AFFINITY)) {
		a.backend_id = bk->backend_id;
		bpf_map_update_elem(&cilia_lb_affinity, &ak, &a, BPF_ANY);
	}
	return be;
}

/* Hairpin: a backend connecting to its own service (Cilium's shape, its loopback address).
 * 8. A connection whose backend is the client itself also gets the source LB_HAIRPIN_ADDR
 *    (169.254.42.1): the pod would drop a packet from its own address arriving on eth0. Its
 *    reverse entry is keyed by the translated tuple {LB_HAIRPIN_ADDR:sport → backend}, and
 *    conntrack and egress policy see that tuple (the pod's own identity as the peer).
 * 9. Hairpin packets go straight back into the pod (lb_hairpin_redirect) once egress policy
 *    passed them; the pod's replies to LB_HAIRPIN_ADDR are turned back (source VIP:port,
 *    destination the pod's sport) before conntrack and policy and go straight back in too, as
 *    replies of the pod's own connection. Ingress policy does not see them: the pod talks to
 *    itself. A packet to LB_HAIRPIN_ADDR without a hairpin connection is left alone (world).
 */
#define LB_HAIRPIN_ADDR bpf_htonl(0xa9fe2a01)
#define LB_HAIRPIN 1	   /* lb_translate: a hairpin packet, to go back into the pod */
#define LB_HAIRPIN_REPLY 2 /* lb_translate: a hairpin reply, translated: back into the pod */

/* 9.: the packet goes back into the pod it came from (ethernet addresses swapped). */
static __always_inline int lb_hairpin_redirect(struct __sk_buff *skb)
{
	__u8 eth[12], swapped[12];

	if (bpf_skb_load_bytes(skb, 0, eth, 12) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(swapped, &eth[6], 6);
	__builtin_memcpy(&swapped[6], eth, 6);
	if (bpf_skb_store_bytes(skb, 0, swapped, 12, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect_peer(skb->ifindex, 0);
}

/* 9.: a reply of the pod to LB_HAIRPIN_ADDR: source VIP:port, destination the pod's sport. */
static __always_inline int lb_hairpin_reply(struct __sk_buff *skb, struct pkt *p, __u16 ep_id)
{
	struct ct_key key = { .ep_id = ep_id, .dir = DIR_SERVICE };
	struct lb_revnat_key rk = {};
	struct lb_revnat *rn;
	struct ct_entry *e;
	__u64 now = bpf_ktime_get_ns();
	__be32 self = *(const __be32 *)p->tuple.saddr, vip;
	__be16 vport;
	int ret;

	ct_reverse(&key.tuple, &p->tuple);
	e = ct_find(&key, now);
	if (!e || !e->rev_nat)
		return 0;
	rk.svc_id = e->rev_nat;
	rn = bpf_map_lookup_elem(&cilia_lb_revnat, &rk);
	if (!rn)
		return 0;
	ct_update(e, p, 1, skb->len, now);
	vip = *(const __be32 *)rn->addr;
	vport = rn->port;
	ret = lb_rewrite(skb, 1, self, vip, p->tuple.sport, vport, p->tuple.proto);
	if (ret)
		return ret;
	ret = lb_rewrite(skb, 0, LB_HAIRPIN_ADDR, self, p->tuple.dport, p->tuple.dport,
			 p->tuple.proto);
	return ret ? ret : LB_HAIRPIN_REPLY;
}

/* From the client: a packet to a service address is DNATed to its connection's backend. own_ct:
 * the client keeps conntrack entries of its own (reverse NAT by its egress entry); *rev_nat
 * gets the service id for that entry (0 for hairpin, which has its reverse entry); *ev_svc the
 * service's id for events (enforce.h, 11.), drops included. */
static __always_inline int lb_dnat(struct __sk_buff *skb, struct pkt *p, __u16 ep_id, int own_ct,
				   __u16 *rev_nat, __u16 *ev_svc)
{
	struct lb_service_key sk = { .port = p->tuple.dport, .proto = p->tuple.proto,
				     .family = p->tuple.family };
	struct ct_key key = { .ep_id = ep_id, .dir = DIR_SERVICE };
	struct lb_service_value *svc;
	struct lb_backend_key bk = {};
	struct lb_backend *be = 0;
	struct ct_entry *e;
	struct ct_tuple to;
	__be32 bip;
	__be32 self = *(const __be32 *)p->tuple.saddr;
	__u64 now;
	__u16 svc_id;
	int ret, hairpin;

	__builtin_memcpy(sk.addr, p->tuple.daddr, 16); /* IPv4: the rest is 0 */
	svc = bpf_map_lookup_elem(&cilia_lb_services, &sk);
	if (!svc || (svc->flags & LB_SVC_F_EXTERNAL))
		return 0;
	svc_id = svc->svc_id;
	*ev_svc = svc_id;
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
		be = lb_choose(svc, p, &bk, now);
		if (!be)
			return DROP_NO_SERVICE;
		e = 0;
	}
	if (be->family != p->tuple.family) /* 1. */
		return DROP_NO_SERVICE;
	bip = *(const __be32 *)be->addr;
	to = p->tuple;
	__builtin_memcpy(to.daddr, be->addr, 16);
	to.dport = be->port;
	hairpin = p->tuple.family == FAMILY_IPV4 && bip == self; /* 8. */
	if (hairpin)
		*(__be32 *)to.saddr = LB_HAIRPIN_ADDR;
	own_ct = own_ct && !hairpin;
	if (!e) {
		ret = lb_ct_create(p, own_ct ? 0 : &to, ep_id, bk.backend_id, svc_id, skb->len,
				   now);
		if (ret)
			return ret;
	} else if (!own_ct) {
		key.tuple = to; /* keep the reverse entry as fresh as the forward one */
		e = ct_find(&key, now);
		if (e)
			ct_update(e, p, 0, skb->len, now);
	}
	ret = lb_rewrite_addr(skb, 0, p->tuple.daddr, to.daddr, p->tuple.dport, to.dport, &p->tuple);
	if (!ret && hairpin)
		ret = lb_rewrite(skb, 1, self, LB_HAIRPIN_ADDR, p->tuple.sport, p->tuple.sport,
				 p->tuple.proto);
	if (ret)
		return ret;
	p->tuple = to;
	p->policy_port = bpf_ntohs(to.dport);
	*rev_nat = own_ct ? svc_id : 0;
	return hairpin ? LB_HAIRPIN : 0;
}

/* To the client: a reply of a service connection gets the service address as its source (4.);
 * *ev_svc the service's id for events (enforce.h, 11.). */
static __always_inline int lb_rev_nat(struct __sk_buff *skb, const struct pkt *p, __u16 ep_id,
				      __u16 *ev_svc)
{
	struct ct_key key = { .ep_id = ep_id, .dir = DIR_SERVICE };
	struct lb_revnat_key rk = {};
	struct lb_revnat *rn;
	struct ct_entry *e;
	__u64 now = bpf_ktime_get_ns();
	__be16 vport;

	ct_reverse(&key.tuple, &p->tuple);
	e = ct_find(&key, now);
	if (!e || !e->rev_nat)
		return 0;
	ct_update(e, p, 1, skb->len, now);
	rk.svc_id = e->rev_nat;
	rn = bpf_map_lookup_elem(&cilia_lb_revnat, &rk);
	if (!rn || rn->family != p->tuple.family)
		return 0; /* the service is gone: the client resets the connection */
	*ev_svc = rk.svc_id;
	vport = rn->port;
	__builtin_memcpy(key.tuple.daddr, rn->addr, 16); /* the forward entry: keep it as fresh */
	key.tuple.dport = vport;
	e = ct_find(&key, now);
	if (e)
		ct_update(e, p, 1, skb->len, now);
	return lb_rewrite_addr(skb, 1, p->tuple.saddr, key.tuple.daddr, p->tuple.sport, vport,
			       &p->tuple);
}

/* To the client, after conntrack classified the packet as a reply of ct (its egress entry): the
 * service address back as the source when the entry says so (4.; conntrack.h, 6.). The forward
 * entry is refreshed by replies that open or close a TCP connection (its lifetime follows
 * them) and by every non-TCP reply; TCP's other replies leave it to the packets out. *ev_svc:
 * the service's id for events (enforce.h, 11.). */
static __always_inline int lb_rev_nat_ct(struct __sk_buff *skb, const struct pkt *p, __u16 ep_id,
					 const struct ct_entry *ct, __u64 now, __u16 *ev_svc)
{
	struct ct_key key = { .ep_id = ep_id, .dir = DIR_SERVICE };
	struct lb_revnat_key rk = {};
	struct lb_revnat *rn;
	struct ct_entry *e;

	if ((p->tuple.family != FAMILY_IPV4 && p->tuple.family != FAMILY_IPV6) ||
	    (p->tuple.proto != PROTO_TCP && p->tuple.proto != PROTO_UDP))
		return 0; /* 1. */
	if (!(ct->flags & CT_F_REV_NAT_OWN))
		return lb_rev_nat(skb, p, ep_id, ev_svc); /* an entry of an older datapath */
	if (!ct->rev_nat)
		return 0;
	rk.svc_id = ct->rev_nat;
	rn = bpf_map_lookup_elem(&cilia_lb_revnat, &rk);
	if (!rn || rn->family != p->tuple.family)
		return 0; /* the service is gone: the client resets the connection */
	*ev_svc = rk.svc_id;
	ct_reverse(&key.tuple, &p->tuple);
	__builtin_memcpy(key.tuple.daddr, rn->addr, 16);
	key.tuple.dport = rn->port;
	if (p->tuple.proto != PROTO_TCP || (p->tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST))) {
		e = ct_find(&key, now);
		if (e)
			ct_update(e, p, 1, skb->len, now);
	}
	return lb_rewrite_addr(skb, 1, p->tuple.saddr, key.tuple.daddr, p->tuple.sport,
			       key.tuple.dport, &p->tuple);
}

/* The hook enforce.h calls after the source check, before conntrack and policy: 0, a DROP_*, or
 * LB_HAIRPIN / LB_HAIRPIN_REPLY (8., 9.). own_ct: the endpoint keeps conntrack entries of its
 * own; then replies are translated after conntrack (lb_rev_nat_ct) and *rev_nat gets the
 * service id a new connection's egress entry must carry (0 for none). *ev_svc gets the id of
 * the service the packet was translated for, for events only (enforce.h, 11.); left alone for
 * the rest. */
static __always_inline int lb_translate(struct __sk_buff *skb, struct pkt *p, __u16 ep_id,
					__u8 dir, int own_ct, __u16 *rev_nat, __u16 *ev_svc)
{
	*rev_nat = 0;
	if ((p->tuple.family != FAMILY_IPV4 && p->tuple.family != FAMILY_IPV6) ||
	    (p->tuple.proto != PROTO_TCP && p->tuple.proto != PROTO_UDP))
		return 0; /* 1. */
	if (dir != DIR_EGRESS)
		return own_ct ? 0 : lb_rev_nat(skb, p, ep_id, ev_svc);
	if (p->tuple.family == FAMILY_IPV4 && *(const __be32 *)p->tuple.daddr == LB_HAIRPIN_ADDR)
		return lb_hairpin_reply(skb, p, ep_id);
	return lb_dnat(skb, p, ep_id, own_ct, rev_nat, ev_svc);
}

/* 3.: the packet (from a pod, at its veth's tc ingress) becomes ICMP (IPv6: ICMPv6) port
 * unreachable from the service address and goes straight back into the pod (the veth's peer). */
static __always_inline int lb_reject(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IPV6) ? unreach6_build(skb) : unreach_build(skb))
		return TC_ACT_SHOT;
	return bpf_redirect_peer(skb->ifindex, 0);
}
