/* The per-packet pipeline of an endpoint's veth: parse → endpoint → source check → ipcache →
 * conntrack → policy → pass or drop, with metrics and events. The program files only pick the
 * direction; everything they share lives here.
 *
 * Invariants (fail closed):
 * 1. Malformed or unsupported packets are dropped with their parse reason, never passed.
 * 2. An interface without an endpoint entry drops everything, ARP included (DROP_NO_CONFIG):
 *    the agent writes the entry before it attaches the programs and deletes it before detaching.
 * 3. Packets leaving an endpoint must carry one of its addresses (DROP_INVALID_SIP) once the
 *    endpoint has any address, so a pod cannot borrow another pod's identity at the receiver.
 *    ICMPv6 ND/MLD is link-local control traffic and passes without source check or policy,
 *    but for what nd.h answers (the pods' IPv6 router) or ends (MLD reports, router solicits).
 * 4. Replies and related ICMP errors of tracked flows pass without policy; every packet in a
 *    flow's original direction is checked against the current policy.
 * 5. A flow is tracked only after policy allowed its first packet (AUDIT counts as allowed).
 * 6. An endpoint flagged EP_F_NOT_READY (its policy could not be written) drops every packet,
 *    replies of tracked flows and non-IP included (DROP_EP_NOT_READY), until the agent has
 *    written its whole policy and clears the flag.
 * 7. L7 redirects (proxy.h) fail closed: a redirect the proxy cannot take drops with its
 *    reason; addresses of proxied connections are restored before conntrack and policy, so both
 *    see the client and the server, never the proxy.
 * 8. Services (lb.h) are translated before conntrack and policy: both see the chosen backend
 *    (and its identity), never the service address; a service without a backend drops the
 *    packet (DROP_NO_SERVICE, reported) and answers the pod with ICMP port unreachable, as
 *    kube-proxy's REJECT does (lb_reject). Hairpin packets (a backend reaching itself through
 *    its service, lb.h 8. and 9.) go back into the pod once egress policy passed them; its
 *    replies go back in as soon as they are translated (replies of its own connection). A
 *    reply to a client gets the service address back after conntrack classified it, from the
 *    client's egress entry (lb_rev_nat_ct), so conntrack still sees the backend.
 * 9. No stack for the pipeline's state: enforce()'s context, policy result and proxy hop live in
 *    a per-CPU scratch slot (cilia_enforce_scratch), one per direction, zeroed at its start
 *    (cil_from_container's frame: 408 of the 512 bytes the verifier allows, was ~504). A slot
 *    holds one packet's state only while enforce() runs: tc programs of one CPU run one after
 *    another (softirq or bottom halves disabled; no helper here transmits synchronously), and
 *    the ingress enforcement peer.h tail-calls inside cil_from_container's invocation uses the
 *    other slot (the egress one is not read after the tail call either: a tail call that runs
 *    does not return). Each object gets its own map at load (not pinned: it keeps nothing
 *    between packets).
 * 10. Conntrack's clock is CLOCK_MONOTONIC at tick resolution (bpf_ktime_get_coarse_ns, one
 *    read per packet and direction): lifetimes are seconds to hours (conntrack.h, 5.), and the
 *    agent's garbage collector compares with the same clock (conntrack.h, 4.).
 * 11. Events name the service a packet was translated for (cilia_event.svc_id; never policy's
 *    input): at the client's egress every packet lb_dnat sent to a backend, or dropped for a
 *    service without one (DROP_NO_SERVICE), hairpin included; at its ingress every reply that
 *    got the service address back (lb_rev_nat_ct, lb_rev_nat). lb.h stores the id in the
 *    context once per translated packet; events copy it, nothing else reads it.
 */
#pragma once

#include "common.h"
#include "parse.h"
#include "endpoint.h"
#include "ipcache.h"
#include "policy.h"
#include "conntrack.h"
#include "events.h"
#include "metrics.h"
#include "proxy.h"
#include "tunnel.h"
#include "vxlan.h"
#include "lb.h"
#include "nd.h"
#include "peer.h"

struct enforce_ctx {
	struct pkt p;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 cookie; /* the deciding policy entry's, once policy was looked up */
	__u16 ep_id;
	__u8 dir;
	__u8 ct_state;
	__u8 match; /* POLICY_MATCH_*, once policy was looked up */
	__u8 hairpin; /* lb.h 8.: the pod's connection to itself through a service */
	__u16 rev_nat; /* lb.h: the service of a connection out to its backend, else 0 */
	__u16 svc_id;  /* events only (11.): the service the packet was translated for, else 0 */
};

/* Invariant 9. */
struct enforce_scratch {
	struct enforce_ctx c;
	struct policy_result res;
	struct proxy_hop hop;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct enforce_scratch);
	__uint(max_entries, 2);
} cilia_enforce_scratch SEC(".maps");

static const __u32 enforce_slot_egress = 0;
static const __u32 enforce_slot_ingress = 1;

static __always_inline void event_fill(struct cilia_event *ev, const struct enforce_ctx *c,
				       __u8 type, __u8 subtype)
{
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = type;
	ev->subtype = subtype;
	ev->ep_id = c->ep_id;
	ev->src_identity = c->src_identity;
	ev->dst_identity = c->dst_identity;
	ev->dir = c->dir;
	ev->proto = c->p.tuple.proto;
	ev->family = c->p.tuple.family;
	ev->sport = c->p.event_sport;
	ev->dport = c->p.policy_port;
	ev->ct_state = c->ct_state;
	ev->cookie = c->cookie;
	ev->match = c->match;
	ev->svc_id = c->svc_id;
}

static __always_inline int enforce_drop(struct __sk_buff *skb, const struct enforce_ctx *c,
					__u8 reason)
{
	struct cilia_event ev;

	metrics_count(reason, c->dir, skb->len);
	event_fill(&ev, c, EVENT_DROP, reason);
	event_send(skb, &ev);
	return TC_ACT_SHOT;
}

static __always_inline int enforce_pass(struct __sk_buff *skb, const struct enforce_ctx *c,
					int trace)
{
	metrics_count(REASON_FORWARDED, c->dir, skb->len);
	if (trace) {
		struct cilia_event ev;

		event_fill(&ev, c, EVENT_TRACE,
			   c->dir == DIR_EGRESS ? TRACE_FROM_ENDPOINT : TRACE_TO_ENDPOINT);
		event_send(skb, &ev);
	}
	return TC_ACT_OK;
}

/* A packet policy passed: out of the endpoint into the tunnel directly (tunnel.h, 6.; vxlan.h),
 * or into a local destination's netns after its ingress enforcement (peer.h). */
static __always_inline int enforce_forward(struct __sk_buff *skb, const struct enforce_ctx *c,
					   int trace)
{
	enforce_pass(skb, c, trace);
	if (c->hairpin)
		return lb_hairpin_redirect(skb);
	if (c->dir != DIR_EGRESS)
		return TC_ACT_OK;
	skb->cb[PEER_CB_IFINDEX] = 0;
	return peer_send(skb, vxlan_send_endpoint(skb, &c->p, c->dst_identity));
}

/* Invariant 7: a packet of a redirected connection goes to the proxy (counted as forwarded). */
static __always_inline int enforce_to_proxy(struct __sk_buff *skb, const struct enforce_ctx *c,
					    __be16 proxy_port, int trace)
{
	int action = TC_ACT_SHOT;
	int reason = proxy_redirect(skb, &c->p, c->dir, c->ep_id, c->src_identity,
				    c->dst_identity, c->cookie, proxy_port, &action);

	if (reason)
		return enforce_drop(skb, c, reason);
	enforce_pass(skb, c, trace);
	return action;
}

static __always_inline void enforce_verdict_event(struct __sk_buff *skb,
						  const struct enforce_ctx *c,
						  const struct policy_result *res)
{
	struct cilia_event ev;

	/* An AUDIT verdict reports the drop reason the packet would have had (policy.h, 6.). */
	event_fill(&ev, c, EVENT_POLICY_VERDICT, res->reason ? res->reason : res->audit_reason);
	ev.verdict = res->verdict;
	ev.match = res->match;
	ev.cookie = res->cookie;
	event_send(skb, &ev);
}

/* Invariant 3. */
static __always_inline int enforce_source_ok(const struct endpoint_info *ep, const struct pkt *p)
{
	if (ep->ipv4 == 0 && addr_zero16(ep->ipv6))
		return 1;
	if (p->tuple.family == FAMILY_IPV4)
		return ep->ipv4 != 0 && *(const __u32 *)p->tuple.saddr == ep->ipv4;
	return !addr_zero16(ep->ipv6) && addr_eq16(p->tuple.saddr, ep->ipv6);
}

/* `ifindex`: the endpoint's host-side veth (skb->ifindex, but the destination's in peer.h). */
static __always_inline int enforce(struct __sk_buff *skb, __u8 dir, __u32 ifindex)
{
	struct enforce_scratch *s = bpf_map_lookup_elem(
		&cilia_enforce_scratch,
		dir == DIR_EGRESS ? &enforce_slot_egress : &enforce_slot_ingress);
	struct endpoint_info *ep = endpoint_lookup(ifindex);
	struct policy_result *res;
	struct enforce_ctx *c;
	struct proxy_hop *hop;
	struct ct_entry *ct;
	__u32 peer;
	__u64 now;
	int ret, dd, state;

	if (!s)
		return TC_ACT_SHOT; /* cannot happen: an array's slots always exist */
	__builtin_memset(s, 0, sizeof(*s));
	c = &s->c;
	res = &s->res;
	hop = &s->hop;
	c->dir = dir;
	if (ep) {
		c->ep_id = ep->ep_id;
		c->src_identity = ep->identity;
		c->dst_identity = ep->identity;
	}
	if (ep && (ep->flags & EP_F_NOT_READY))
		return enforce_drop(skb, c, DROP_EP_NOT_READY); /* invariant 6 */
	ret = parse_packet(skb, &c->p);
	if (ret == PARSE_NOT_IP)
		return ep ? enforce_pass(skb, c, 0) : enforce_drop(skb, c, DROP_NO_CONFIG);
	if (ret != PARSE_OK)
		return enforce_drop(skb, c, ret);
	if (!ep)
		return enforce_drop(skb, c, DROP_NO_CONFIG);
	if (c->p.is_nd) { /* answered, ended or passed (nd.h) */
		ret = dir == DIR_EGRESS ? nd_from_endpoint(skb, ep, ifindex, c->p.icmp_type) : ND_PASS;
		return ret == ND_PASS ? enforce_pass(skb, c, 0) : ret;
	}
	ret = proxy_restore(skb, &c->p, dir, c->ep_id, hop); /* invariant 7 */
	if (ret)
		return enforce_drop(skb, c, ret);
	if (dir == DIR_EGRESS && !enforce_source_ok(ep, &c->p))
		return enforce_drop(skb, c, DROP_INVALID_SIP);
	ret = lb_translate(skb, &c->p, c->ep_id, dir, !(ep->flags & EP_F_ENFORCEMENT_DISABLED),
			   &c->rev_nat, &c->svc_id); /* invariants 8 and 11 */
	if (ret == LB_HAIRPIN_REPLY) {
		enforce_pass(skb, c, 0);
		return lb_hairpin_redirect(skb);
	}
	c->hairpin = ret == LB_HAIRPIN;
	if (c->hairpin)
		ret = 0;
	if (ret == DROP_NO_SERVICE && dir == DIR_EGRESS) {
		enforce_drop(skb, c, ret);
		return lb_reject(skb);
	}
	if (ret)
		return enforce_drop(skb, c, ret);
	if (ep->flags & EP_F_ENFORCEMENT_DISABLED)
		return enforce_pass(skb, c, 0);

	if (dir == DIR_EGRESS) {
		peer = ipcache_identity(c->p.tuple.family, c->p.tuple.daddr);
		c->dst_identity = peer;
	} else {
		/* The overlay's identity (tunnel.h, 4.) before the ipcache's. */
		peer = hop->from_proxy ? hop->identity
				       : tunnel_src_identity(skb, c->p.tuple.family, c->p.tuple.saddr);
		c->src_identity = peer;
	}

	now = bpf_ktime_get_coarse_ns(); /* invariant 10 */
	/* In a register too: the verifier ties ct to it only there (the slot's copy is reread). */
	state = ct_lookup(&c->p, c->ep_id, dir, now, &ct);
	c->ct_state = state;
	if (state == CT_RELATED)
		return enforce_pass(skb, c, 1); /* ICMP errors are rare: trace each one */
	if (state == CT_REPLY) {
		int first = !(ct->flags & CT_F_SEEN_REPLY);

		ct_update(ct, &c->p, 1, skb->len, now);
		ret = dir == DIR_INGRESS ? lb_rev_nat_ct(skb, &c->p, c->ep_id, ct, now, &c->svc_id)
					 : 0;
		if (ret)
			return enforce_drop(skb, c, ret);
		return enforce_forward(skb, c, first);
	}

	dd = ep->flags & (dir == DIR_EGRESS ? EP_F_EGRESS_DEFAULT_DENY : EP_F_INGRESS_DEFAULT_DENY);
	policy_decide(res, c->ep_id, dir == DIR_EGRESS, peer, c->p.tuple.proto, c->p.policy_port,
		      dd);
	c->cookie = res->cookie;
	c->match = res->match;
	proxy_decide(&res->verdict, &res->reason, res->proxy_port, &c->p, hop,
		     state == CT_ESTABLISHED, ct && (ct->flags & CT_F_REDIRECT));
	if (state == CT_NEW)
		enforce_verdict_event(skb, c, res);
	if (res->reason)
		return enforce_drop(skb, c, res->reason);
	if (state == CT_ESTABLISHED) {
		ct_update(ct, &c->p, 0, skb->len, now);
		if (dir == DIR_EGRESS) { /* a reused tuple may be a service connection or not now */
			ct->rev_nat = c->rev_nat;
			ct->flags |= CT_F_REV_NAT_OWN;
		}
		if (res->verdict == VERDICT_REDIRECT)
			return enforce_to_proxy(skb, c, res->proxy_port, 0);
		return enforce_forward(skb, c, 0);
	}
	ret = ct_create_nat(&c->p, c->ep_id, dir, peer, res->verdict == VERDICT_REDIRECT, skb->len,
			    now, c->rev_nat);
	if (ret)
		return enforce_drop(skb, c, ret);
	if (res->verdict == VERDICT_REDIRECT)
		return enforce_to_proxy(skb, c, res->proxy_port, 1);
	return enforce_forward(skb, c, 1);
}

/* cil_to_container_peer's body (lxc.c, host.c): the ingress enforcement of the endpoint whose
 * veth is in skb->cb, then into its netns (peer.h, 1., 2. and 4.). */
static __always_inline int enforce_peer(struct __sk_buff *skb)
{
	__u32 ifindex = skb->cb[PEER_CB_IFINDEX];
	int ret = enforce(skb, DIR_INGRESS, ifindex);

	return ret == TC_ACT_OK ? peer_redirect(skb, ifindex) : ret;
}
