/* Node-IP source NAT on the node's underlay device (host.c), per packet, for IPv4: masquerade
 * (pods reaching anything that is neither a pod nor a node leave with the node IP) and the
 * translations NodePort needs (nodeport.h). One LRU map of translations keyed by the tuple as
 * the hook sees it, plus a one-entry config map the agent writes:
 *
 * - cilia_nat_cfg: 0 → {node IP, the node's pod CIDR, --ipv4-native-routing-cidr, flags}.
 * - cilia_snat: {saddr, daddr, sport, dport, proto, dir} → {new dst, new src, backend id, kind,
 *   flags}. dir is the hook (NAT_DIR_EGRESS: leaving the device, NAT_DIR_INGRESS: arriving).
 *   A zero new address leaves that side alone. Kinds:
 *   MASQ   egress  {pod:p → D:d}        → src = node:n    ingress {D:d → node:n} → dst = pod:p
 *   HOST   ingress {D:d → node:n}       → nothing: the node's own flow holds port n towards D:d
 *   PASS   egress  {pod:p → D:d}        → nothing: D opened this connection to the pod
 *   NP_*   see nodeport.h.
 *
 * Invariants:
 * 1. Only IPv4 is translated; every packet this file does not translate passes unchanged (the
 *    device also carries the node's own traffic, VXLAN and the kvstore).
 * 2. Masquerade applies to packets from the node's pod CIDR to a destination that is outside
 *    --ipv4-native-routing-cidr and outside the pod CIDR, and that the ipcache does not know as
 *    part of the cluster (identity reserved:world or a node-local CIDR/FQDN identity, and no
 *    tunnel endpoint). Policy has already decided at the pod's own hook with its identity.
 * 3. A mapping is created once per flow and kept: later packets and replies use the same port.
 *    The port comes from NAT_PORT_MIN..NAT_PORT_MAX, from a hash of the tuple, then up to
 *    NAT_RETRIES random others; a port is taken only if its reverse entry could be inserted
 *    (BPF_NOEXIST), so two flows never share a reply tuple. None free: DROP_NAT_NO_MAPPING.
 * 4. The node's own TCP/UDP flows from a port in that range get a HOST entry (their replies are
 *    never translated, and no pod flow is given that port towards the same peer).
 * 5. A masqueraded protocol must be TCP, UDP or ICMP echo; other ICMP messages pass as they
 *    are (answers to an outside host that reached the pod); any other protocol from a pod to the
 *    outside is dropped (DROP_NAT_UNSUPP_PROTO) rather than leaving with an address that no
 *    reply can reach. ICMP errors about a translated flow are translated back (outer
 *    destination and the embedded header; nat_icmp.h) so PMTU discovery and unreachables reach
 *    the pod.
 * 7. A connection an outside host opened to a pod (it routes the pod CIDR to the node) keeps the
 *    pod's address: its first packet leaves a PASS entry for the replies, which are never
 *    masqueraded.
 * 6. A rewrite that fails drops (DROP_CSUM_L4); checksums are fixed incrementally.
 */
#pragma once

#include "common.h"
#include "parse.h"
#include "ipcache.h"
#include "metrics.h"
#include "np_event.h"

#define NAT_DIR_EGRESS 1
#define NAT_DIR_INGRESS 2

#define NAT_K_MASQ 1
#define NAT_K_HOST 2
#define NAT_K_NP_FWD 3   /* nodeport.h: client → service, to the backend */
#define NAT_K_NP_REV 4   /* nodeport.h: remote backend → node (SNATed), back to the client */
#define NAT_K_NP_LOCAL 5 /* nodeport.h: local backend → client, the service as source */
#define NAT_K_PASS 6     /* a reply to an outside host that opened the connection: no change */

#define NAT_F_REDIRECT (1 << 0) /* the new source is this node: route with the FIB, not the stack */
#define NAT_F_DSR (1 << 1)      /* nodeport.h: carry the frontend to the backend's node (DSR) */

#define NAT_CFG_F_MASQUERADE (1 << 0)
#define NAT_CFG_F_NODEPORT (1 << 1)
#define NAT_CFG_F_DSR (1 << 2) /* --node-port-mode dsr */

#define NAT_PORT_MIN 32768
#define NAT_PORT_MAX 60999
#define NAT_RETRIES 32

#ifndef CILIA_NAT_MAX
#define CILIA_NAT_MAX 131072
#endif

struct nat_cfg {
	__be32 node_ip;
	__be32 pod_net;
	__be32 pod_mask;
	__be32 native_net;
	__be32 native_mask; /* 0: no --ipv4-native-routing-cidr */
	__u16 flags;        /* NAT_CFG_F_* */
	__be16 tunnel_port; /* tunnel mode: the overlay's UDP port (nodeport.h, 8.); 0 in native */
};
_Static_assert(sizeof(struct nat_cfg) == 24, "nat_cfg size");

struct nat_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* NAT_DIR_* */
	__u16 pad;
};
_Static_assert(sizeof(struct nat_key) == 16, "nat_key size");

struct nat_entry {
	__be32 daddr; /* new destination (0: keep) */
	__be32 saddr; /* new source (0: keep) */
	__be16 dport;
	__be16 sport;
	__u32 backend_id; /* NP_FWD: the backend chosen (lb.h), to notice its removal */
	__u8 kind;        /* NAT_K_* */
	__u8 flags;       /* NAT_F_* */
	__u16 pad;
};
_Static_assert(sizeof(struct nat_entry) == 20, "nat_entry size");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nat_cfg);
	__uint(max_entries, 1);
} cilia_nat_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nat_key);
	__type(value, struct nat_entry);
	__uint(max_entries, CILIA_NAT_MAX);
} cilia_snat SEC(".maps");

/* A packet as the underlay hooks need it: the parsed tuple plus the L4 offset. */
struct nat_pkt {
	struct pkt p;
	__u32 l4;
	__be32 saddr;
	__be32 daddr;
};

static __always_inline struct nat_cfg *nat_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&cilia_nat_cfg, &zero);
}

/* 0 for an IPv4 packet the hooks may translate; -1 for anything to pass unchanged (1.). */
static __always_inline int nat_parse(struct __sk_buff *skb, struct nat_pkt *n)
{
	if (parse_packet(skb, &n->p) != PARSE_OK || n->p.tuple.family != FAMILY_IPV4)
		return -1;
	n->l4 = ETH_HLEN + (__u32)n->p.l3_len;
	n->saddr = *(const __be32 *)n->p.tuple.saddr;
	n->daddr = *(const __be32 *)n->p.tuple.daddr;
	return 0;
}

static __always_inline void nat_key_of(struct nat_key *k, const struct nat_pkt *n, __u8 dir)
{
	k->saddr = n->saddr;
	k->daddr = n->daddr;
	k->sport = n->p.tuple.sport;
	k->dport = n->p.tuple.dport;
	k->proto = n->p.tuple.proto;
	k->dir = dir;
	k->pad = 0;
}

/* Where a protocol's checksum and "port" live: TCP/UDP ports, or the ICMP echo id. */
static __always_inline int nat_l4_offsets(__u8 proto, int src, __u32 *csum, __u32 *port)
{
	if (proto == PROTO_TCP || proto == PROTO_UDP) {
		*csum = proto == PROTO_UDP ? 6 : 16;
		*port = src ? 0 : 2;
		return 1; /* the checksum covers the pseudo header */
	}
	*csum = 2;
	*port = 4; /* ICMP echo: the id, for a request and a reply alike */
	return 0;
}

/* 6.: the source (src = 1) or destination address and port of the packet. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, const struct nat_pkt *n, int src,
				       __be32 old_ip, __be32 new_ip, __be16 old_port,
				       __be16 new_port)
{
	__u8 proto = n->p.tuple.proto;
	__u64 mangled = proto == PROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 csum, port;
	int pseudo = nat_l4_offsets(proto, src, &csum, &port);

	if (pseudo && bpf_l4_csum_replace(skb, n->l4 + csum, old_ip, new_ip,
					  BPF_F_PSEUDO_HDR | mangled | 4) < 0)
		return DROP_CSUM_L4;
	if (bpf_l3_csum_replace(skb, ETH_HLEN + 10, old_ip, new_ip, 4) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + (src ? 12 : 16), &new_ip, 4, 0) < 0)
		return DROP_CSUM_L4;
	if (old_port == new_port)
		return 0;
	if (bpf_l4_csum_replace(skb, n->l4 + csum, old_port, new_port, mangled | 2) < 0 ||
	    bpf_skb_store_bytes(skb, n->l4 + port, &new_port, 2, 0) < 0)
		return DROP_CSUM_L4;
	return 0;
}

/* The destination half of an entry, applied to the packet (and to n). */
static __always_inline int nat_apply_dst(struct __sk_buff *skb, struct nat_pkt *n,
					 const struct nat_entry *e)
{
	int ret;

	if (!e->daddr)
		return 0;
	ret = nat_rewrite(skb, n, 0, n->daddr, e->daddr, n->p.tuple.dport, e->dport);
	if (ret)
		return ret;
	n->daddr = e->daddr;
	n->p.tuple.dport = e->dport;
	*(__be32 *)n->p.tuple.daddr = e->daddr;
	return 0;
}

/* The source half of an entry, applied to the packet (and to n). */
static __always_inline int nat_apply_src(struct __sk_buff *skb, struct nat_pkt *n,
					 const struct nat_entry *e)
{
	int ret;

	if (!e->saddr)
		return 0;
	ret = nat_rewrite(skb, n, 1, n->saddr, e->saddr, n->p.tuple.sport, e->sport);
	if (ret)
		return ret;
	n->saddr = e->saddr;
	n->p.tuple.sport = e->sport;
	*(__be32 *)n->p.tuple.saddr = e->saddr;
	return 0;
}

/* Applies an entry to the packet (and to n): destination first, then source. */
static __always_inline int nat_apply(struct __sk_buff *skb, struct nat_pkt *n,
				     const struct nat_entry *e)
{
	int ret = nat_apply_dst(skb, n, e);

	return ret ? ret : nat_apply_src(skb, n, e);
}

static __always_inline __u32 nat_hash(const struct nat_key *k)
{
	__u32 h = k->saddr * 0x9e3779b1 ^ k->daddr;

	h ^= ((__u32)k->sport << 16 | k->dport) * 0x85ebca6b;
	h ^= h >> 15;
	h *= 0xc2b2ae35;
	return h ^ (h >> 16) ^ k->proto;
}

/* 3.: inserts rv at rk = {peer:port → node:?} for a free port; returns it (network order) or 0. */
static __always_inline __be16 nat_alloc(struct nat_key *rk, const struct nat_entry *rv,
					__u32 seed)
{
	const __u32 size = NAT_PORT_MAX - NAT_PORT_MIN + 1;
	__u32 i, pick = seed;

	for (i = 0; i < NAT_RETRIES; i++) {
		rk->dport = bpf_htons((__u16)(NAT_PORT_MIN + pick % size));
		if (bpf_map_update_elem(&cilia_snat, rk, rv, BPF_NOEXIST) == 0)
			return rk->dport;
		pick = bpf_get_prandom_u32();
	}
	return 0;
}

static __always_inline int nat_in_net(__be32 a, __be32 net, __be32 mask)
{
	return mask != 0 && (a & mask) == net;
}

/* 2.: is an address with this ipcache entry (0: none) outside the cluster? */
static __always_inline int nat_outside_entry(const struct ipcache_value *v)
{
	if (!v)
		return 1;
	return v->tunnel_endpoint == 0 &&
	       (v->identity == IDENTITY_WORLD || v->identity > IDENTITY_GLOBAL_MAX);
}

static __always_inline struct ipcache_value *nat_ipcache(__be32 addr)
{
	struct ipcache_key key = { .prefixlen = 32 + 128, .family = FAMILY_IPV4 };

	*(__be32 *)key.addr = addr;
	return bpf_map_lookup_elem(&cilia_ipcache, &key);
}

/* 2.: is addr outside the cluster as far as masquerade is concerned? */
static __always_inline int nat_outside(const struct nat_cfg *cfg, __be32 addr)
{
	if (nat_in_net(addr, cfg->pod_net, cfg->pod_mask) ||
	    nat_in_net(addr, cfg->native_net, cfg->native_mask))
		return 0;
	return nat_outside_entry(nat_ipcache(addr));
}

/* 2.: should a packet from a pod leave with the node IP? */
static __always_inline int nat_wants_masq(const struct nat_cfg *cfg, const struct nat_pkt *n)
{
	return (cfg->flags & NAT_CFG_F_MASQUERADE) &&
	       nat_in_net(n->saddr, cfg->pod_net, cfg->pod_mask) && nat_outside(cfg, n->daddr);
}

/* 7.: an outside host's packet to a pod: its replies keep the pod's address. Returns the
 * source's ipcache identity when it had to look it up (nodeport.h, 7.), else NAT_NO_IDENTITY. */
#define NAT_NO_IDENTITY 0xffffffff
static __always_inline __u32 nat_track_inbound(const struct nat_cfg *cfg,
					       const struct nat_pkt *n)
{
	struct nat_entry pass = { .kind = NAT_K_PASS };
	struct ipcache_value *v;
	struct nat_key rk;
	__u32 identity;

	if (!(cfg->flags & NAT_CFG_F_MASQUERADE) ||
	    !nat_in_net(n->daddr, cfg->pod_net, cfg->pod_mask) ||
	    nat_in_net(n->saddr, cfg->pod_net, cfg->pod_mask) ||
	    nat_in_net(n->saddr, cfg->native_net, cfg->native_mask))
		return NAT_NO_IDENTITY;
	v = nat_ipcache(n->saddr);
	identity = v ? v->identity : IDENTITY_WORLD;
	if (!nat_outside_entry(v))
		return identity;
	rk.saddr = n->daddr;
	rk.daddr = n->saddr;
	rk.sport = n->p.tuple.dport;
	rk.dport = n->p.tuple.sport;
	rk.proto = n->p.tuple.proto;
	rk.dir = NAT_DIR_EGRESS;
	rk.pad = 0;
	if (!bpf_map_lookup_elem(&cilia_snat, &rk))
		bpf_map_update_elem(&cilia_snat, &rk, &pass, BPF_NOEXIST);
	return identity;
}

static __always_inline int nat_masq_proto_ok(const struct nat_pkt *n)
{
	__u8 proto = n->p.tuple.proto;

	return proto == PROTO_TCP || proto == PROTO_UDP || proto == PROTO_ICMP;
}

/* 3., 5.: a new masqueraded flow: its port, both entries, and the packet rewritten. */
static __always_inline int nat_masquerade(struct __sk_buff *skb, const struct nat_cfg *cfg,
					  struct nat_pkt *n)
{
	struct nat_entry fwd = { .kind = NAT_K_MASQ }, rev = { .kind = NAT_K_MASQ };
	struct nat_key k, rk;
	__be16 port;

	if (!nat_masq_proto_ok(n))
		return DROP_NAT_UNSUPP_PROTO;
	nat_key_of(&k, n, NAT_DIR_EGRESS);
	rev.daddr = n->saddr;
	rev.dport = n->p.tuple.sport;
	rk.saddr = n->daddr;
	rk.daddr = cfg->node_ip;
	rk.sport = n->p.tuple.dport;
	rk.proto = n->p.tuple.proto;
	rk.dir = NAT_DIR_INGRESS;
	rk.pad = 0;
	port = nat_alloc(&rk, &rev, nat_hash(&k));
	if (!port)
		return DROP_NAT_NO_MAPPING;
	fwd.saddr = cfg->node_ip;
	fwd.sport = port;
	if (bpf_map_update_elem(&cilia_snat, &k, &fwd, BPF_ANY) < 0) {
		bpf_map_delete_elem(&cilia_snat, &rk);
		return DROP_NAT_NO_MAPPING;
	}
	return nat_apply(skb, n, &fwd);
}

/* 4.: the node's own flow from a port in the NAT range keeps that port for itself. */
static __always_inline void nat_track_host(const struct nat_pkt *n)
{
	struct nat_entry host = { .kind = NAT_K_HOST };
	struct nat_key rk;
	__u16 sport = bpf_ntohs(n->p.tuple.sport);

	if ((n->p.tuple.proto != PROTO_TCP && n->p.tuple.proto != PROTO_UDP) ||
	    sport < NAT_PORT_MIN || sport > NAT_PORT_MAX)
		return;
	rk.saddr = n->daddr;
	rk.daddr = n->saddr;
	rk.sport = n->p.tuple.dport;
	rk.dport = n->p.tuple.sport;
	rk.proto = n->p.tuple.proto;
	rk.dir = NAT_DIR_INGRESS;
	rk.pad = 0;
	if (!bpf_map_lookup_elem(&cilia_snat, &rk))
		bpf_map_update_elem(&cilia_snat, &rk, &host, BPF_NOEXIST);
}

/* The tunnel device's egress (overlay.c), before encapsulation: a local NodePort backend's reply
 * to a client in another node's pod CIDR would otherwise leave inside the tunnel, out of the
 * underlay hook's sight, with the backend's address (nodeport.h, NP_LOCAL). 0 or a DROP_*. */
static __always_inline int nat_overlay_egress(struct __sk_buff *skb)
{
	struct nat_cfg *cfg = nat_config();
	struct nat_entry *e;
	struct nat_pkt n;
	struct nat_key k;

	if (!cfg || nat_parse(skb, &n))
		return 0;
	nat_key_of(&k, &n, NAT_DIR_EGRESS);
	e = bpf_map_lookup_elem(&cilia_snat, &k);
	if (!e || e->kind != NAT_K_NP_LOCAL)
		return 0;
	return nat_apply(skb, &n, e);
}
