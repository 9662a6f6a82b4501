/* Entry points for the node's underlay device (the one holding the node IP). Attached with tc:
 * cil_from_netdev at ingress (NodePort and LoadBalancer frontends, replies of masqueraded and
 * NodePort flows, VXLAN of the overlay read in BPF: lib/vxlan.h) and cil_to_netdev at egress (masquerade to the node IP, replies of local
 * NodePort backends). See lib/nat.h, lib/nodeport.h and lib/vxlan.h.
 * cil_to_container_peer is not attached: cil_from_netdev tail-calls it for a packet to a local
 * endpoint (natively routed, or VXLAN decapsulated here), whose ingress policy it runs before
 * delivering it into that endpoint's netns (lib/peer.h, 4.; the same code as lxc.c's).
 */
#include "lib/enforce.h"
#include "lib/nodeport.h"

SEC("tc")
int cil_from_netdev(struct __sk_buff *skb)
{
	return netdev_ingress(skb);
}

SEC("tc")
int cil_to_netdev(struct __sk_buff *skb)
{
	return netdev_egress(skb);
}

SEC("tc")
int cil_to_container_peer(struct __sk_buff *skb)
{
	return enforce_peer(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
