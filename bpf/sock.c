/* Socket-level load balancing (Cilium's "socket LB", bpf_sock), attached to a cgroup v2 by the
 * agent with --bpf-lb-sock true (agent/datapath/sock_loader.ts): a process in that cgroup that
 * connects (or sends a UDP datagram) to a service address gets the backend's address in its
 * socket at once, so its packets carry the backend from the first one: the tc path (lib/lb.h)
 * finds no service in them, and conntrack and policy see the backend as they do after lb.h's DNAT.
 *
 * - cil_sock4_connect / cil_sock6_connect (connect(2), TCP and connected UDP): once per socket.
 * - cil_sock4_sendmsg / cil_sock6_sendmsg: every datagram of an unconnected UDP socket.
 * - cil_sock4_recvmsg / cil_sock6_recvmsg: a UDP reply's source back to the service address (a
 *   DNS client such as dig drops an answer from an address it did not ask).
 * - cil_sock4_getpeername / cil_sock6_getpeername: the peer a process sees is the service.
 * - cil_sock_ops (sockops, BPF_SOCK_OPS_TCP_CONNECT_CB): the trace event of a translated TCP
 *   connection, once its source address and port are chosen (6.).
 *
 * It reads the same maps as lib/lb.h (lib/lb_maps.h: cilia_lb_services, cilia_lb_slots,
 * cilia_lb_backends), written by the agent as diffs: the same backends, the same slot table
 * (random: each backend once per weight unit; maglev: the Maglev table), so weights and Maglev
 * hold as in lb.h; and session affinity's maps and code (lib/lb_affinity.h: cilia_lb_affinity,
 * written here too, and the agent's cilia_lb_affinity_match; 7.). Its own map,
 * cilia_lb_sock_revnat (LRU, lib/sock_lb.h): {socket cookie, backend address, port, family} →
 * the service address, for recvmsg and getpeername, and for sock_term.c to tell a translated
 * connection (TCP or UDP) from a direct one. It also shares the lxc objects'
 * cilia_ipcache (read) and cilia_events ring (written: 6.).
 *
 * Invariants:
 * 1. Only TCP and UDP to a service address:port of the socket's family are translated; anything
 *    else passes untouched (return 1), to the tc path if it goes to a service after all.
 * 2. Slot = hash(socket cookie, service address, port, protocol) % slots: a socket keeps one
 *    backend for all its datagrams to a service while the slots stay, and sockets spread over
 *    the slots as lb.h's 5-tuple hash spreads connections (the socket's source address and port
 *    are not known yet at connect). A connection is translated once, so it keeps its backend
 *    for its lifetime, agent restarts and slot changes included.
 * 3. A service with no slots, or a slot or backend that is missing or of another family (lb.h's
 *    3.): the call fails with ECONNREFUSED (bpf_set_retval; Cilium's answer), at once, never a
 *    hang and never a packet to the service address.
 * 4. Reverse entries are written before the socket is changed; a missing one (evicted, or the
 *    socket was translated by an older object with another map) only leaves the backend visible
 *    to recvmsg/getpeername: TCP is unaffected, a UDP reply then looks foreign to its client.
 * 5. Programs of two objects may run on one socket (a restart attaches the new ones before it
 *    detaches the old, agent/datapath/sock_loader.ts): the second sees the backend's address,
 *    which is no service (1.), and a reply already turned into the service address has no
 *    reverse entry: each translation happens once.
 * 6. Every translation that writes a reverse entry is reported as one trace event into the shared
 *    cilia_events ring (lib/sock_trace.h: frontend by svc_id, backend, the client as far as it is
 *    known): TCP by cil_sock_ops, UDP here. A reverse entry that is already there with the same
 *    service (an unconnected UDP socket's next datagram to the same backend) is neither written
 *    again nor reported. While two objects run (5.), a TCP connection may be reported twice.
 * 7. Session affinity (LB_SVC_F_AFFINITY; lib/lb_affinity.h, 6. and 7.) is keyed by the socket's
 *    network namespace (bpf_get_netns_cookie: a pod is one), not by a client address, which a
 *    socket does not have before connect picks its route; the key's family (LB_AFFINITY_NETNS)
 *    keeps it apart from lb.h's address keys in the same map. A live entry whose backend is still
 *    matched gives that backend and its time is refreshed in place (no LRU update); otherwise
 *    the slot is chosen as in 2. (ECONNREFUSED as in 3.) and written as the namespace's entry.
 *    Every translation counts as a new connection (Cilium's rule): each connect, and each
 *    datagram of an unconnected UDP socket, so a socket that keeps sending keeps its entry
 *    alive (lb.h: its conntrack entry keeps the flow). Terminating backends get no new
 *    connections (not matched, in no slot). A process outside the cgroup, served by lb.h, has
 *    an address entry of its own and may get another backend.
 *
 * Left to the tc path (passed untouched here, translated per packet by lib/lb.h exactly as before):
 * - NodePort and LoadBalancer frontends (LB_SVC_F_EXTERNAL): lb.h does not serve them from pods
 *   either (lib/nodeport.h does, on the underlay).
 * - IPv4-mapped IPv6 destinations (::ffff:a.b.c.d on an IPv6 socket): their packets are IPv4.
 * Differs from the tc path: a pod that is a backend of the service it connects to reaches itself
 * over loopback (the backend sees its own address, Cilium's behaviour), not from lb.h's
 * 169.254.42.1 (hairpin, lb.h 8.); nothing here sees a connection again, so a connected socket
 * whose backend is removed from the service is ended by sock_term.c (socket iterators and
 * bpf_sock_destroy, run by the agent in every local network namespace, kernel >= 6.5; without
 * it, the socket keeps talking to that backend while it lives, where lb.h would reset it: its
 * 2.); sockets of processes outside the cgroup are not seen at all.
 */
#include "lib/sock_xlate.h"

SEC("cgroup/connect4")
int cil_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, FAMILY_IPV4);
}

SEC("cgroup/sendmsg4")
int cil_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, FAMILY_IPV4);
}

SEC("cgroup/recvmsg4")
int cil_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, FAMILY_IPV4);
}

SEC("cgroup/getpeername4")
int cil_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, FAMILY_IPV4);
}

SEC("cgroup/connect6")
int cil_sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, FAMILY_IPV6);
}

SEC("cgroup/sendmsg6")
int cil_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_fwd(ctx, FAMILY_IPV6);
}

SEC("cgroup/recvmsg6")
int cil_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, FAMILY_IPV6);
}

SEC("cgroup/getpeername6")
int cil_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	return sock_xlate_rev(ctx, FAMILY_IPV6);
}

/* 6.: TCP connections, IPv4 and IPv6; 1 lets every operation go on with its defaults. */
SEC("sockops")
int cil_sock_ops(struct bpf_sock_ops *ctx)
{
	if (ctx->op == BPF_SOCK_OPS_TCP_CONNECT_CB)
		sock_trace_tcp_connect(ctx);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
