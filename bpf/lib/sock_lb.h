/* The socket LB's reverse map, shared by its two objects: sock.c (the cgroup hooks, which write
 * cilia_lb_sock_revnat at connect/sendmsg) and sock_term.c (the socket iterators, which read it to
 * tell a translated connection from a direct one). Two objects, not one: sock_term.o needs the kfunc bpf_sock_destroy
 * (kernel >= 6.5), and a kernel without it must still load sock.o. Only these two include it (sock.c through
 * sock_trace.h).
 */
#pragma once

#include "lb_maps.h"

/* {socket cookie, backend} → the service address the socket asked for: written for every socket
 * the socket LB translates (TCP and UDP connect, UDP sendmsg). */
struct sock_revnat_key {
	__u64 cookie;
	__u8 addr[16]; /* the backend; IPv4: the first 4 bytes */
	__be16 port;
	__u8 family;
	__u8 pad[5];
};
_Static_assert(sizeof(struct sock_revnat_key) == 32, "sock_revnat_key size");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_revnat_key);
	__type(value, struct lb_revnat);
	__uint(max_entries, 65536);
} cilia_lb_sock_revnat SEC(".maps");
