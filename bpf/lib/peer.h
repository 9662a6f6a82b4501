/* Same-node delivery past the destination's veth pair, as Cilium's BPF host routing does: once
 * an endpoint's egress policy passed an IPv4 packet whose route leads to another local
 * endpoint's host-side veth (tunnel.h, 6.), cil_from_container tail-calls
 * cil_to_container_peer, which runs that endpoint's ingress enforcement (enforce.h, the same
 * code as cil_to_container, the endpoint taken from skb->cb instead of skb->ifindex) and then
 * puts the packet straight into the endpoint's netns with bpf_redirect_peer. That skips the
 * veth pair's second hop (the host veth's transmit, the backlog queue and a softirq in the pod
 * netns), which costs more than all of cilia's programs on a packet. A tail call, not inlining:
 * cil_from_container's stack and instruction budgets have no room for the ingress pipeline.
 *
 * Invariants:
 * 1. The destination's ingress enforcement is the one cil_to_container runs: conntrack, policy,
 *    reverse NAT of services, L7 redirects (which leave through cilia_host as before), drops,
 *    verdicts and traces attributed to the destination endpoint (the events' ifindex is the
 *    source's veth, where the program runs).
 * 2. The packet enters the pod as the veth pair would hand it over: TTL decremented and MACs
 *    from the FIB's neighbour entry (tunnel.h, 6.), skb->mark cleared (the veth pair clears it
 *    crossing namespaces; tunnel.h, 4.).
 * 3. When the tail call cannot run (the program array empty: an object loaded without its
 *    pinned array), the packet takes the path before this one, unchanged: bpf_redirect to the
 *    destination's host veth, whose cil_to_container decides.
 * 4. The same at the underlay's ingress (host.c, nodeport.h 7. and 8.): a natively routed
 *    packet, or VXLAN decapsulated in BPF (vxlan.h, 3.; the sender's identity in skb->mark,
 *    tunnel.h 4.), redirected to a local endpoint's veth (tunnel.h, 5.) runs that endpoint's
 *    ingress enforcement there and enters the pod with bpf_redirect_peer. host.o has its own
 *    copy of cil_to_container_peer and of this array (the same code, compiled from these
 *    headers; pinned in host.o's program directory): no object reaches into another's array, so
 *    each array always holds the program of its own build. 1. to 3. hold as above; the events'
 *    ifindex is the underlay's.
 */
#pragma once

#include "common.h"
#include "tunnel.h"

int cil_to_container_peer(struct __sk_buff *skb);

/* Pinned next to the programs (agent/datapath/loader.ts): a program array whose last user
 * reference goes is emptied by the kernel. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, int(struct __sk_buff *));
} cilia_peer_calls SEC(".maps") = {
	.values = { [0] = (void *)&cil_to_container_peer },
};

/* 1., 3. and 4.: the packet vxlan_send_endpoint() (at the underlay: tunnel_deliver() or
 * overlay_receive()) redirected to a local endpoint's veth (its ifindex in skb->cb) goes to
 * that endpoint's ingress enforcement instead; `ret` (the redirect to the veth's egress) stands
 * when the tail call does not run. */
static __always_inline int peer_send(struct __sk_buff *skb, int ret)
{
	if (ret == TC_ACT_REDIRECT && skb->cb[PEER_CB_IFINDEX])
		bpf_tail_call(skb, &cilia_peer_calls, 0);
	return ret;
}

/* 2.: after the destination's ingress enforcement passed it. */
static __always_inline int peer_redirect(struct __sk_buff *skb, __u32 ifindex)
{
	skb->mark = 0;
	return bpf_redirect_peer(ifindex, 0);
}
