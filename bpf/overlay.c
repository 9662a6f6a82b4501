/* Entry points for the node's tunnel device (cilia_vxlan, VXLAN in external mode). Attached
 * with tc: cil_to_overlay at egress (packets the node routed to another node's pods: set the
 * tunnel key, VNI = source identity; or write the VXLAN itself and send it out of the underlay,
 * lib/vxlan.h) and cil_from_overlay at ingress (decapsulated packets: the
 * VNI becomes the source identity the destination endpoint's ingress policy sees). Replies of
 * local NodePort backends to pods on other nodes get their frontend back first (nat.h); the L7
 * proxy's legs to and from other nodes get the addresses they stand for (proxy_overlay.h).
 */
#include "lib/tunnel.h"
#include "lib/nat.h"
#include "lib/proxy_overlay.h"
#include "lib/vxlan.h"

SEC("tc")
int cil_to_overlay(struct __sk_buff *skb)
{
	int ret = nat_overlay_egress(skb); /* a local NodePort backend's reply (nat.h) */

	if (!ret)
		ret = proxy_to_overlay(skb);
	/* VXLAN written here and sent out of the underlay, else by the device (vxlan.h). */
	return ret ? tunnel_drop(skb, ret, DIR_EGRESS) : overlay_send(skb);
}

SEC("tc")
int cil_from_overlay(struct __sk_buff *skb)
{
	int ret = tunnel_decap(skb);

	if (ret != TC_ACT_OK)
		return ret;
	ret = proxy_from_overlay(skb);
	/* A local endpoint's packet goes straight to its veth (tunnel.h, 5.). */
	return ret ? tunnel_drop(skb, ret, DIR_INGRESS) : tunnel_deliver(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
