/* Entry points for an endpoint's host-side veth (in the node netns). Attached with tc:
 * cil_from_container at ingress (packets leaving the pod: its egress policy) and
 * cil_to_container at egress (packets entering the pod: its ingress policy).
 * cil_to_container_peer is not attached: cil_from_container tail-calls it for a packet to
 * another local endpoint, whose ingress policy it runs before delivering it into that
 * endpoint's netns (lib/peer.h).
 */
#include "lib/enforce.h"

SEC("tc")
int cil_from_container(struct __sk_buff *skb)
{
	return enforce(skb, DIR_EGRESS, skb->ifindex);
}

SEC("tc")
int cil_to_container(struct __sk_buff *skb)
{
	return enforce(skb, DIR_INGRESS, skb->ifindex);
}

SEC("tc")
int cil_to_container_peer(struct __sk_buff *skb)
{
	return enforce_peer(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
