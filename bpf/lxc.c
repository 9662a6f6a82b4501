/* Entry points for an endpoint's host-side veth (in the node netns). Attached with tc:
 * cil_from_container at ingress (packets leaving the pod: its egress policy) and
 * cil_to_container at egress (packets entering the pod: its ingress policy).
 */
#include "lib/enforce.h"

SEC("tc")
int cil_from_container(struct __sk_buff *skb)
{
	return enforce(skb, DIR_EGRESS);
}

SEC("tc")
int cil_to_container(struct __sk_buff *skb)
{
	return enforce(skb, DIR_INGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
