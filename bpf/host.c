/* Entry points for the node's underlay device (the one holding the node IP). Attached with tc:
 * cil_from_netdev at ingress (NodePort and LoadBalancer frontends, replies of masqueraded and
 * NodePort flows, VXLAN of the overlay read in BPF: lib/vxlan.h) and cil_to_netdev at egress (masquerade to the node IP, replies of local
 * NodePort backends). See lib/nat.h, lib/nodeport.h and lib/vxlan.h.
 */
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
