/* Direct server return for NodePort and LoadBalancer (`--node-port-mode dsr`, native routing):
 * the node that got the client's packet DNATs it to a backend on another node without SNAT and
 * carries the frontend (address and port) in an IPv4 option, as Cilium does (type 0x9a, length
 * 8: port, then address). The backend's node learns it from that option (an egress entry of
 * cilia_snat, kind NP_LOCAL, as for a local backend) and its replies leave straight to the
 * client with the frontend as their source. It owns no maps.
 *
 * Invariants:
 * 1. The option is added to the first packet of a connection and to every TCP SYN (a lost SYN
 *    is sent again), only to packets without IP options of their own (else DROP_INVALID).
 * 2. A backend's node trusts an option only if its address is a node of the cluster (ipcache:
 *    remote-node / kube-apiserver) or one of its own external frontends, and only for a
 *    destination in its pod CIDR: a client cannot make a pod answer from any address it likes.
 * 3. The option stays in the packet the pod receives (Linux ignores options it does not know).
 */
#pragma once

#include "nat.h"
#include "lb.h"
#include "unreach.h"

#define DSR_OPT_TYPE 0x9a /* copied, class 0, number 26 */
#define DSR_OPT_LEN 8

/* 1.: inserts the option after the 20-byte IP header; 0 or a DROP_* reason. */
static __always_inline int dsr_add_opt(struct __sk_buff *skb, __be32 addr, __be16 port)
{
	__u8 h[28];
	__u16 tot, c;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, h, 20) < 0 || h[0] != 0x45)
		return DROP_INVALID;
	if (bpf_skb_adjust_room(skb, DSR_OPT_LEN, BPF_ADJ_ROOM_NET, 0) < 0)
		return DROP_WRITE_ERROR;
	tot = ((__u16)h[2] << 8 | h[3]) + DSR_OPT_LEN;
	h[0] = 0x47;
	h[2] = tot >> 8;
	h[3] = tot & 0xff;
	h[10] = 0;
	h[11] = 0;
	h[20] = DSR_OPT_TYPE;
	h[21] = DSR_OPT_LEN;
	__builtin_memcpy(&h[22], &port, 2);
	__builtin_memcpy(&h[24], &addr, 4);
	c = unreach_fold(bpf_csum_diff(0, 0, (__be32 *)h, 28, 0));
	h[10] = c & 0xff;
	h[11] = c >> 8;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, h, 28, 0) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}

/* 2. */
static __always_inline int dsr_trusted(__be32 addr, __be16 port, __u8 proto)
{
	struct lb_service_key sk = { .port = port, .proto = proto, .family = FAMILY_IPV4 };
	struct lb_service_value *svc;
	__u32 id;

	*(__be32 *)sk.addr = addr;
	id = ipcache_identity(FAMILY_IPV4, sk.addr);
	if (id == IDENTITY_REMOTE_NODE || id == IDENTITY_KUBE_APISERVER)
		return 1;
	svc = bpf_map_lookup_elem(&cilia_lb_services, &sk);
	return svc && (svc->flags & LB_SVC_F_EXTERNAL);
}

/* At the backend's node: a packet with the option leaves an egress entry for its replies. */
static __always_inline void dsr_learn(struct __sk_buff *skb, const struct nat_cfg *cfg,
				      const struct nat_pkt *n)
{
	struct nat_entry local = { .kind = NAT_K_NP_LOCAL };
	struct nat_key rk = {};
	__u8 opt[8];

	if (n->l4 != ETH_HLEN + 20 + DSR_OPT_LEN ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 20, opt, sizeof(opt)) < 0 ||
	    opt[0] != DSR_OPT_TYPE || opt[1] != DSR_OPT_LEN)
		return;
	__builtin_memcpy(&local.sport, &opt[2], 2);
	__builtin_memcpy(&local.saddr, &opt[4], 4);
	if (!nat_in_net(n->daddr, cfg->pod_net, cfg->pod_mask) ||
	    !dsr_trusted(local.saddr, local.sport, n->p.tuple.proto))
		return;
	rk.saddr = n->daddr;
	rk.daddr = n->saddr;
	rk.sport = n->p.tuple.dport;
	rk.dport = n->p.tuple.sport;
	rk.proto = n->p.tuple.proto;
	rk.dir = NAT_DIR_EGRESS;
	bpf_map_update_elem(&cilia_snat, &rk, &local, BPF_ANY);
}
