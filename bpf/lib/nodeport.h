/* NodePort and LoadBalancer services for clients outside the cluster, and the two pipelines of
 * the node's underlay device (host.c): a packet arriving at <node IP>:<nodePort> (or at a
 * LoadBalancer address) picks a backend the way lb.h does (same slots, same hash) and is
 * translated with entries of cilia_snat (nat.h). It decides no policy: the backend's own
 * endpoint program does, as for any packet. Entries (dir, tuple as the hook sees it):
 *   NP_FWD   ingress {C:c → S:s}     → dst = B:b; remote backend: src = node:n  (redirect)
 *   NP_REV   ingress {B:b → node:n}  → dst = C:c, src = S:s                     (redirect)
 *   NP_LOCAL egress  {B:b → C:c}     → src = S:s
 * (C client, S the service address: node IP or LoadBalancer address, B backend, n a NAT port.)
 *
 * Invariants:
 * 1. Only services the agent flagged LB_SVC_F_EXTERNAL (NodePort / LoadBalancer frontends) are
 *    reachable here; ClusterIP addresses are not served on the underlay.
 * 2. A backend on this node gets the packet with the client's address (DNAT only; the node's
 *    stack routes it to the endpoint and its ingress policy sees reserved:world or the client's
 *    CIDR identity); its replies leave through this device and get the service address back.
 * 3. A backend on another node gets the packet from this node's IP and a NAT port (SNAT), so it
 *    answers through this node, where the reply is translated back to the client. Packets whose
 *    new source is this node are routed with a FIB lookup and redirected (the stack would take
 *    a local source arriving from outside as a martian).
 * 4. A connection keeps its backend while that backend exists; a removed backend makes the next
 *    packet pick again. A service without backends answers like kube-proxy: ICMP port
 *    unreachable back out of the device (unreach.h), counted as DROP_NO_SERVICE.
 * 5. Everything else is nat.h's: masquerade on the way out, its reverse on the way in, and the
 *    node's own flows left alone.
 * 6. --node-port-mode dsr replaces 3. (dsr.h): the remote backend gets the client's packet with
 *    the frontend in an IP option and answers the client directly from its own node.
 * 7. A packet to this node's pod CIDR (native routing: from another node's pod, or from the
 *    outside; no entry translates it) goes straight to the endpoint (tunnel.h, 5.): the stack's
 *    routing and forwarding are skipped, and so is the veth pair: the endpoint's ingress policy
 *    runs here in a tail call and the packet enters the pod with bpf_redirect_peer (peer.h, 4.;
 *    when the call cannot run, out of the endpoint's veth, whose ingress policy decides). The
 *    source's identity that nat.h (7.) looked up goes with it in skb->mark (tunnel.h, 4.), so
 *    the policy looks up the ipcache no second time.
 * 8. VXLAN packets of the overlay (UDP to the tunnel port, from or to the node IP) are never
 *    translated: no NodePort or masquerade entry can match them (NodePorts and NAT ports lie
 *    elsewhere). Arriving ones are checked and, for a local endpoint, decapsulated and
 *    delivered here as in 7. (vxlan.h, 3.); the rest go to the tunnel device (tunnel.h, 3.).
 * 9. IPv6 goes to nodeport6.h first (its own maps; DSR with an extension header, dsr6.h); what
 *    it does not translate goes on through this file unchanged.
 * 10. A packet with MARK_MAGIC_NATIVE (native routing: set by vxlan_send_endpoint() once a pod's
 *    egress policy passed an IPv4 packet to another node's pod and sent it here; the kernel
 *    clears marks between namespaces, so no pod can set it) is, by what marked it, no overlay
 *    packet, not the proxy's, not the node's own and never masqueraded (its destination is in
 *    the cluster, nat.h 2.): only an egress entry of cilia_snat can apply (a local NodePort or
 *    DSR backend's reply to a pod on another node, NP_LOCAL). TCP and UDP without such an entry
 *    pass after that one lookup, without parsing, the proxy check or the ipcache; the rest takes
 *    the pipeline below. The mark is cleared either way.
 * 11. Events (np_event.h; issue #13's "why was this dropped"): every drop of both hooks is
 *    counted and sent as a drop event (ep_id 0, the hook's direction, identities from the
 *    ipcache); a drop of a new connection to a frontend names its service and the frontend's
 *    port (DROP_NO_SERVICE for a frontend without backends, with the packet as it came). The
 *    first packet of each new NodePort/LoadBalancer connection (np_new() created its entry) sends
 *    one trace (TRACE_FROM_NETWORK) with the service and that port, captured after the
 *    destination was translated and before a remote backend's SNAT, so it reads "client →
 *    backend": a local backend, a remote one (3.) and a DSR one (6., before the option) alike.
 *    Nothing else sends: established NodePort packets, masquerade and native pod traffic (7.,
 *    10.) do no event work, and a connection whose backend went away (4.) sends a new trace
 *    when it picks again.
 */
#pragma once

#include "nat.h"
#include "nat_icmp.h"
#include "lb.h"
#include "unreach.h"
#include "dsr.h"
#include "tunnel.h"
#include "vxlan.h"
#include "nodeport6.h"
#include "peer.h"

#define AF_INET_ 2
/* 7.: the largest identity skb->mark carries (tunnel.h, 4.: 24 bits) */
#define NP_MARK_IDENTITY_MAX 0xffffff

/* 11.: every drop here is counted and sent as an event (np_event.h), with the service when
 * known (svc: NP_SVC(id, frontend port), else 0). */
static __always_inline int np_drop(struct __sk_buff *skb, int reason, __u8 dir)
{
	return np_event_drop(skb, reason, dir, 0);
}

/* 3.: sends the packet towards its (new) destination with the FIB's next hop. svc: 11. */
static __always_inline int np_redirect(struct __sk_buff *skb, const struct nat_pkt *n, __u32 svc)
{
	struct bpf_fib_lookup f = {};
	int r;

	f.family = AF_INET_;
	f.l4_protocol = n->p.tuple.proto;
	f.sport = n->p.tuple.sport;
	f.dport = n->p.tuple.dport;
	f.ipv4_src = n->saddr;
	f.ipv4_dst = n->daddr;
	f.ifindex = skb->ifindex;
	r = bpf_fib_lookup(skb, &f, sizeof(f), 0);
	if (r == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, f.dmac, 6, 0) < 0 ||
		    bpf_skb_store_bytes(skb, 6, f.smac, 6, 0) < 0)
			return np_event_drop(skb, DROP_WRITE_ERROR, DIR_INGRESS, svc);
		return bpf_redirect(f.ifindex, 0);
	}
	if (r == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(f.ifindex, 0, 0, 0);
	return np_event_drop(skb, DROP_NO_FIB, DIR_INGRESS, svc);
}

/* 8.: an unfragmented IPv4 UDP packet to the tunnel port, from (egress) or to (ingress) us. */
static __always_inline int np_is_overlay(struct __sk_buff *skb, const struct nat_cfg *cfg,
					 int ingress)
{
	__u8 ip[20];
	__be16 dport;

	if (!cfg->tunnel_port || skb->protocol != bpf_htons(ETH_P_IP) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, ip, sizeof(ip)) < 0)
		return 0;
	if (ip[0] != 0x45 || ip[9] != PROTO_UDP || (ip[6] & 0x3f) || ip[7])
		return 0;
	if (*(__be32 *)&ip[ingress ? 16 : 12] != cfg->node_ip)
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 22, &dport, sizeof(dport)) < 0)
		return 0;
	return dport == cfg->tunnel_port;
}

/* 4.: is the backend an NP_FWD entry chose still there? */
static __always_inline int np_backend_alive(const struct nat_entry *e)
{
	struct lb_backend_key bk = { .backend_id = e->backend_id };

	return bpf_map_lookup_elem(&cilia_lb_backends, &bk) != 0;
}

/* A new connection to an external frontend: 1 if it was translated, 0 if it is none, or -DROP.
 * *svc_id: the frontend's service once it is one (11.). */
static __always_inline int np_new(struct __sk_buff *skb, const struct nat_cfg *cfg,
				  struct nat_pkt *n, struct nat_entry *fwd, __u32 *svc_id)
{
	struct lb_service_key sk = { .port = n->p.tuple.dport, .proto = n->p.tuple.proto,
				     .family = FAMILY_IPV4 };
	struct nat_entry rev = { .kind = NAT_K_NP_REV, .flags = NAT_F_REDIRECT };
	struct lb_service_value *svc;
	struct lb_backend_key bk;
	struct lb_backend *be;
	struct nat_key k, rk = {};

	if (n->p.tuple.proto != PROTO_TCP && n->p.tuple.proto != PROTO_UDP)
		return 0;
	*(__be32 *)sk.addr = n->daddr;
	svc = bpf_map_lookup_elem(&cilia_lb_services, &sk);
	if (!svc || !(svc->flags & LB_SVC_F_EXTERNAL))
		return 0; /* 1. */
	*svc_id = svc->svc_id;
	bk.backend_id = lb_select(svc, &n->p);
	be = bk.backend_id ? bpf_map_lookup_elem(&cilia_lb_backends, &bk) : 0;
	if (!be)
		return -DROP_NO_SERVICE;
	nat_key_of(&k, n, NAT_DIR_INGRESS);
	fwd->kind = NAT_K_NP_FWD;
	fwd->daddr = *(const __be32 *)be->addr;
	fwd->dport = be->port;
	fwd->backend_id = bk.backend_id;
	if (nat_in_net(fwd->daddr, cfg->pod_net, cfg->pod_mask)) { /* 2. */
		struct nat_entry local = { .kind = NAT_K_NP_LOCAL, .saddr = n->daddr,
					   .sport = n->p.tuple.dport };

		rk.saddr = fwd->daddr;
		rk.daddr = n->saddr;
		rk.sport = fwd->dport;
		rk.dport = n->p.tuple.sport;
		rk.proto = n->p.tuple.proto;
		rk.dir = NAT_DIR_EGRESS;
		if (bpf_map_update_elem(&cilia_snat, &rk, &local, BPF_ANY) < 0)
			return -DROP_NAT_NO_MAPPING;
	} else if (cfg->flags & NAT_CFG_F_DSR) { /* dsr.h: DNAT only, the frontend in an option */
		fwd->flags = NAT_F_REDIRECT | NAT_F_DSR;
	} else { /* 3. */
		rev.daddr = n->saddr;
		rev.dport = n->p.tuple.sport;
		rev.saddr = n->daddr;
		rev.sport = n->p.tuple.dport;
		rk.saddr = fwd->daddr;
		rk.daddr = cfg->node_ip;
		rk.sport = fwd->dport;
		rk.proto = n->p.tuple.proto;
		rk.dir = NAT_DIR_INGRESS;
		fwd->sport = nat_alloc(&rk, &rev, nat_hash(&k));
		if (!fwd->sport)
			return -DROP_NAT_NO_MAPPING;
		fwd->saddr = cfg->node_ip;
		fwd->flags = NAT_F_REDIRECT;
	}
	if (bpf_map_update_elem(&cilia_snat, &k, fwd, BPF_ANY) < 0)
		return -DROP_NAT_NO_MAPPING;
	return 1;
}

/* tc ingress of the underlay device. */
static __always_inline int netdev_ingress(struct __sk_buff *skb)
{
	struct nat_entry *e, fresh = {};
	struct nat_cfg *cfg = nat_config();
	struct nat_pkt n;
	struct nat_key k;
	__be32 fe_addr;
	__be16 fe_port;
	__u32 src_id, svc_id = 0, svc = 0;
	int ret, created = 0;

	if (cfg && skb->protocol == bpf_htons(ETH_P_IPV6) &&
	    (ret = nodeport6_ingress(skb, cfg->flags)) != NP6_CONTINUE)
		return ret; /* nodeport6.h */
	skb->cb[PEER_CB_IFINDEX] = 0; /* 7. and 8.: set by a redirect to an endpoint's veth */
	if (cfg && np_is_overlay(skb, cfg, 1))
		return peer_send(skb, overlay_receive(skb)); /* 8. (vxlan.h, peer.h 4.) */
	if (!cfg || nat_parse(skb, &n))
		return TC_ACT_OK;
	if (n.p.has_inner && n.daddr == cfg->node_ip) {
		ret = nat_icmp_error_in(skb, &n); /* nat_icmp.h */
		return ret ? np_drop(skb, ret, DIR_INGRESS) : TC_ACT_OK;
	}
	if (cfg->flags & NAT_CFG_F_DSR)
		dsr_learn(skb, cfg, &n);
	src_id = nat_track_inbound(cfg, &n); /* nat.h, 7. */
	if (nat_in_net(n.daddr, cfg->pod_net, cfg->pod_mask)) {
		ret = tunnel_deliver(skb); /* 7. (no entry here has a pod as dst) */
		/* 7.: nat.h gives one only for a source outside the pod CIDR (the proxy's is in it) */
		if (ret == TC_ACT_REDIRECT && src_id <= NP_MARK_IDENTITY_MAX)
			skb->mark = mark_from_identity(src_id);
		return peer_send(skb, ret);
	}
	nat_key_of(&k, &n, NAT_DIR_INGRESS);
	e = bpf_map_lookup_elem(&cilia_snat, &k);
	if (e && e->kind == NAT_K_HOST)
		return TC_ACT_OK;
	if (e && e->kind == NAT_K_NP_FWD && !np_backend_alive(e))
		e = 0; /* 4. */
	if (!e) {
		if (!(cfg->flags & NAT_CFG_F_NODEPORT))
			return TC_ACT_OK;
		ret = np_new(skb, cfg, &n, &fresh, &svc_id);
		if (ret != 0)
			svc = NP_SVC(svc_id, bpf_ntohs(n.p.tuple.dport)); /* 11. */
		if (ret == -DROP_NO_SERVICE) { /* 4. */
			np_event_drop(skb, DROP_NO_SERVICE, DIR_INGRESS, svc);
			ret = unreach_build(skb);
			return ret ? TC_ACT_SHOT : bpf_redirect(skb->ifindex, 0);
		}
		if (ret < 0)
			return np_event_drop(skb, -ret, DIR_INGRESS, svc);
		if (ret == 0)
			return TC_ACT_OK;
		e = &fresh;
		created = 1;
	}
	fe_addr = n.daddr;
	fe_port = n.p.tuple.dport;
	if (created) { /* 11.: the trace shows client → backend, before a remote backend's SNAT */
		ret = nat_apply_dst(skb, &n, e);
		if (!ret)
			np_event_new(skb, svc);
		if (!ret)
			ret = nat_apply_src(skb, &n, e);
	} else {
		ret = nat_apply(skb, &n, e);
	}
	if (!ret && (e->flags & NAT_F_DSR) && (created || (n.p.tcp_flags & TCP_SYN)))
		ret = dsr_add_opt(skb, fe_addr, fe_port); /* 6. */
	if (ret)
		return np_event_drop(skb, ret, DIR_INGRESS, svc);
	return (e->flags & NAT_F_REDIRECT) ? np_redirect(skb, &n, svc) : TC_ACT_OK;
}

/* 10.: 1 when a packet vxlan_send_endpoint() marked has no egress entry of cilia_snat (TCP or
 * UDP, IPv4 without options: anything else takes the whole pipeline), 0 otherwise. */
static __always_inline int np_native_pass(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct nat_key k = { .dir = NAT_DIR_EGRESS };
	__u8 *ip = data + ETH_HLEN;

	if (skb->protocol != bpf_htons(ETH_P_IP) || (void *)(ip + 24) > end)
		return 0;
	if (ip[0] != 0x45 || (ip[9] != PROTO_TCP && ip[9] != PROTO_UDP) || (ip[6] & 0x3f) || ip[7])
		return 0;
	k.saddr = *(__be32 *)&ip[12];
	k.daddr = *(__be32 *)&ip[16];
	k.sport = *(__be16 *)&ip[20];
	k.dport = *(__be16 *)&ip[22];
	k.proto = ip[9];
	return !bpf_map_lookup_elem(&cilia_snat, &k);
}

/* tc egress of the underlay device. */
static __always_inline int netdev_egress(struct __sk_buff *skb)
{
	struct nat_cfg *cfg;
	struct nat_entry *e;
	struct nat_pkt n;
	struct nat_key k;
	int ret;

	if (skb->mark == MARK_MAGIC_NATIVE) {
		skb->mark = 0;
		if (np_native_pass(skb))
			return TC_ACT_OK; /* 10. */
	}
	cfg = nat_config();
	if (cfg && skb->protocol == bpf_htons(ETH_P_IPV6) &&
	    (ret = nodeport6_egress(skb)) != NP6_CONTINUE)
		return ret; /* nodeport6.h */
	if (!cfg || np_is_overlay(skb, cfg, 0) || nat_parse(skb, &n))
		return TC_ACT_OK;
	if (proxy_is_gw4(n.saddr)) { /* proxy_overlay.h, 4. (IPv4) */
		ret = proxy_to_netdev(skb);
		if (ret)
			return np_drop(skb, ret, DIR_EGRESS);
		if (nat_parse(skb, &n))
			return TC_ACT_OK;
	}
	nat_key_of(&k, &n, NAT_DIR_EGRESS);
	e = bpf_map_lookup_elem(&cilia_snat, &k);
	if (e) {
		ret = nat_apply(skb, &n, e);
		return ret ? np_drop(skb, ret, DIR_EGRESS) : TC_ACT_OK;
	}
	if (n.saddr == cfg->node_ip) {
		nat_track_host(&n);
		return TC_ACT_OK;
	}
	if (!nat_wants_masq(cfg, &n))
		return TC_ACT_OK;
	if (n.p.tuple.proto == PROTO_ICMP && n.p.icmp_type != 8)
		return TC_ACT_OK; /* nat.h, 5. */
	ret = nat_masquerade(skb, cfg, &n);
	return ret ? np_drop(skb, ret, DIR_EGRESS) : TC_ACT_OK;
}
