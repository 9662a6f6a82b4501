/* Entry points for the node's tunnel device (cilia_vxlan, VXLAN in external mode). Attached
 * with tc: cil_to_overlay at egress (packets the node routed to another node's pods: set the
 * tunnel key, VNI = source identity) and cil_from_overlay at ingress (decapsulated packets: the
 * VNI becomes the source identity the destination endpoint's ingress policy sees).
 */
#include "lib/tunnel.h"

SEC("tc")
int cil_to_overlay(struct __sk_buff *skb)
{
	return tunnel_encap(skb);
}

SEC("tc")
int cil_from_overlay(struct __sk_buff *skb)
{
	return tunnel_decap(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
