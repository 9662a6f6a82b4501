/* Socket termination for the socket LB (Cilium's bpf_sock_term): socket iterators that end the
 * connections a removed backend still has, because sock.c translates a connection once (its 2.)
 * and no packet path sees it again. The agent (agent/datapath/sock_term.ts) writes the removed
 * (service, backend) pairs into cilia_lb_sock_term, reads an iterator created in each local
 * network namespace (a socket iterator walks the namespace of the thread that creates it), then
 * deletes the pairs. Needs the kfunc bpf_sock_destroy (kernel >= 6.5): a separate object from
 * sock.c, so a kernel without it still loads the socket LB and only termination is missing.
 * The map, the walk and their invariants: lib/sock_term.h.
 */
#include "lib/sock_term.h"

SEC("iter/tcp")
int cil_sock_term_tcp(struct bpf_iter__tcp *ctx)
{
	return sock_term(ctx->sk_common, PROTO_TCP);
}

SEC("iter/udp")
int cil_sock_term_udp(struct bpf_iter__udp *ctx)
{
	return sock_term((struct sock_common *)ctx->udp_sk, PROTO_UDP);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
