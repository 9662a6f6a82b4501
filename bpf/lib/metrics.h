/* Packet and byte counters per (drop reason, direction); reason 0 counts forwarded packets.
 * Per-CPU, so updates need no atomics; the agent sums the CPUs when it reads them.
 */
#pragma once

#include "common.h"

struct metrics_key {
	__u8 reason; /* DROP_* or REASON_FORWARDED */
	__u8 dir;    /* DIR_INGRESS | DIR_EGRESS */
	__u16 pad;
};
_Static_assert(sizeof(struct metrics_key) == 4, "metrics_key size");

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};
_Static_assert(sizeof(struct metrics_value) == 16, "metrics_value size");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, 1024);
} cilia_metrics SEC(".maps");

static __always_inline void metrics_count(__u8 reason, __u8 dir, __u32 bytes)
{
	struct metrics_key key = { .reason = reason, .dir = dir };
	struct metrics_value *v = bpf_map_lookup_elem(&cilia_metrics, &key);

	if (!v) {
		struct metrics_value zero = {};

		bpf_map_update_elem(&cilia_metrics, &key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&cilia_metrics, &key);
		if (!v)
			return;
	}
	v->packets += 1;
	v->bytes += bytes;
}
