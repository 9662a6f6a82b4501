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
 * 5. --node-port-mode dsr replaces 2.'s remote case (dsr6.h): the remote backend gets the
 *    client's packet DNATed only, with the frontend in a Destination Options header on the first
 *    packet and every SYN (NP_FWD flagged NAT_F_DSR, no NP_REV); its node learns an NP_LOCAL
 *    egress entry from that header at this hook and answers the client directly. A connection
 *    opened before a switch keeps its SNAT entries.
 * 6. A rewrite that fails drops (DROP_CSUM_L4); IPv6 has no header checksum, the TCP/UDP one
 *    covers the addresses (lb6_rewrite).
 * 7. An ICMPv6 error about a translated flow is translated with the flow's entry (nat_icmp6.h):
 *    a local or DSR backend's error leaves with the frontend in it (egress, NP_LOCAL), a remote
 *    SNAT backend's error reaches the client (ingress, NP_REV).
 * 8. Events as nodeport.h's (11.): every drop here is a drop event; a new connection's drop
 *    names its service and frontend port; its first packet sends one trace after the
 *    destination's translation, before a remote backend's SNAT or, with DSR, before the
 *    Destination Options header (so the 64 captured bytes still hold the ports).
 */
#pragma once

#include "nat6.h"
#include "unreach.h"
#include "dsr6.h"
#include "nat_icmp6.h"

/* A new connection to an external IPv6 frontend: 1 if w->fwd is its new entry, 0 if the
 * destination is no frontend, or -DROP_*. *svc_id: the frontend's service once it is one. */
static __always_inline int np6_new(const struct nat6_cfg *cfg, struct np6_scratch *w, int exthdr,
				   __u16 nat_flags, __u32 *svc_id)
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
	*svc_id = svc->svc_id;
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
	} else if (nat_flags & NAT_CFG_F_DSR) { /* 5.: DNAT only, the frontend in dsr6.h's header */
		fwd->flags = NAT_F_REDIRECT | NAT_F_DSR;
	} else { /* 2., remote */
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
 * headers come first; 0, NP6_ICMP_ERROR for an ICMPv6 error (7., only w->p filled), or
 * NP6_CONTINUE for a packet that is not this file's. */
static __always_inline int np6_parse(struct __sk_buff *skb, struct np6_scratch **w,
				     struct nat6_cfg **cfg, int *exthdr, __u8 dir)
{
	__u32 zero = 0;
	__u8 nh;

	*cfg = bpf_map_lookup_elem(&cilia_nat6_cfg, &zero);
	*w = bpf_map_lookup_elem(&cilia_np6_scratch, &zero);
	if (!*cfg || !*w || addr_zero16((*cfg)->node_ip))
		return NP6_CONTINUE;
	if (parse_packet(skb, &(*w)->p) != PARSE_OK || (*w)->p.tuple.family != FAMILY_IPV6)
		return NP6_CONTINUE;
	if ((*w)->p.tuple.proto == PROTO_ICMPV6 && (*w)->p.has_inner)
		return NP6_ICMP_ERROR;
	if (((*w)->p.tuple.proto != PROTO_TCP && (*w)->p.tuple.proto != PROTO_UDP) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 6, &nh, 1) < 0)
		return NP6_CONTINUE;
	*exthdr = nh != (*w)->p.tuple.proto;
	nat6_key_of(&(*w)->k, &(*w)->p.tuple, dir);
	return 0;
}

/* 5. (dsr6.h 3.): a packet carrying the frontend to a pod of this node leaves the egress entry
 * that gives its replies the frontend as source. */
static __always_inline void dsr6_learn(struct __sk_buff *skb, const struct nat6_cfg *cfg,
				       struct np6_scratch *w)
{
	struct nat6_entry *local = &w->rev;
	struct nat6_key *rk = &w->rk;

	if (!dsr6_read(skb, w->ext, w->p.tuple.proto) || !nat6_in_pods(cfg, w->p.tuple.daddr) ||
	    !dsr6_trusted(w->ext, w->p.tuple.proto))
		return;
	__builtin_memset(local, 0, sizeof(*local));
	local->kind = NAT_K_NP_LOCAL;
	addr_copy16(local->saddr, &w->ext[4]);
	__builtin_memcpy(&local->sport, &w->ext[20], 2);
	nat6_key_of(rk, &w->p.tuple, NAT_DIR_EGRESS);
	addr_copy16(rk->saddr, w->p.tuple.daddr);
	addr_copy16(rk->daddr, w->p.tuple.saddr);
	rk->sport = w->p.tuple.dport;
	rk->dport = w->p.tuple.sport;
	bpf_map_update_elem(&cilia_snat6, rk, local, BPF_ANY);
}

/* tc ingress of the underlay device, IPv6: a verdict, or NP6_CONTINUE (1.). Inlined: the
 * verifier counts a BPF-to-BPF call's stack on top of the hook's, which is more than 512 bytes,
 * while clang lets the two paths share one frame. nat_flags: nat_cfg's. */
static __always_inline int nodeport6_ingress(struct __sk_buff *skb, __u16 nat_flags)
{
	struct np6_scratch *w;
	struct nat6_entry *e;
	struct nat6_cfg *cfg;
	int exthdr = 0, ret, created = 0;
	__u32 svc_id = 0, svc = 0;

	ret = np6_parse(skb, &w, &cfg, &exthdr, NAT_DIR_INGRESS);
	if (ret == NP6_ICMP_ERROR) { /* 7. */
		e = nat6_icmp_entry(skb, w, NAT_DIR_INGRESS);
		if (!e)
			return NP6_CONTINUE;
		ret = nat6_icmp_rewrite(skb, w, e);
		return ret ? np6_drop(skb, ret, DIR_INGRESS) : np6_redirect(skb, w, 0);
	}
	if (ret)
		return NP6_CONTINUE;
	if (exthdr && (nat_flags & NAT_CFG_F_DSR))
		dsr6_learn(skb, cfg, w); /* 5. */
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
		ret = np6_new(cfg, w, exthdr, nat_flags, &svc_id);
		if (ret != 0)
			svc = NP_SVC(svc_id, bpf_ntohs(w->p.tuple.dport)); /* 8. */
		if (ret == -DROP_NO_SERVICE) { /* 3. */
			np_event_drop(skb, DROP_NO_SERVICE, DIR_INGRESS, svc);
			return unreach6_build(skb) ? TC_ACT_SHOT : bpf_redirect(skb->ifindex, 0);
		}
		if (ret < 0)
			return np_event_drop(skb, -ret, DIR_INGRESS, svc);
		if (ret == 0)
			return NP6_CONTINUE;
		e = &w->fwd;
		created = 1;
	}
	if ((e->flags & NAT_F_DSR) && (created || (w->p.tcp_flags & TCP_SYN))) { /* dsr6.h 1. */
		if (dsr6_too_big(skb, &w->mtu)) { /* dsr6.h 2. */
			if (created)
				bpf_map_delete_elem(&cilia_snat6, &w->k);
			np_event_drop(skb, DROP_FRAG_NEEDED, DIR_INGRESS, svc);
			return icmp6_error_build(skb, 2, 0, w->mtu - DSR6_EXT_LEN) ?
				       TC_ACT_SHOT :
				       bpf_redirect(skb->ifindex, 0);
		}
		dsr6_ext_of(w->ext, w->p.tuple.daddr, w->p.tuple.dport);
		ret = nat6_apply(skb, &w->p.tuple, e);
		if (!ret && created) /* 8.: before the header, so the capture shows the ports */
			np_event_new(skb, svc);
		if (!ret)
			ret = dsr6_add_ext(skb, w->ext);
	} else if (created) { /* 8.: client → backend, before a remote backend's SNAT */
		ret = nat6_apply_dst(skb, &w->p.tuple, e);
		if (!ret)
			np_event_new(skb, svc);
		if (!ret)
			ret = nat6_apply_src(skb, &w->p.tuple, e);
	} else {
		ret = nat6_apply(skb, &w->p.tuple, e);
	}
	if (ret)
		return np_event_drop(skb, ret, DIR_INGRESS, svc);
	return (e->flags & NAT_F_REDIRECT) ? np6_redirect(skb, w, svc) : TC_ACT_OK;
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

	ret = np6_parse(skb, &w, &cfg, &exthdr, NAT_DIR_EGRESS);
	if (ret == NP6_ICMP_ERROR) { /* 7. */
		e = nat6_icmp_entry(skb, w, NAT_DIR_EGRESS);
		if (!e)
			return NP6_CONTINUE;
		ret = nat6_icmp_rewrite(skb, w, e);
		return ret ? np6_drop(skb, ret, DIR_EGRESS) : TC_ACT_OK;
	}
	if (ret)
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
