/* Packet and byte counters per (drop reason, direction); reason 0 counts forwarded packets.
 * Per-CPU, so updates need no atomics; the agent sums the CPUs when it reads them.
 *
 * Invariants:
 * 1. One slot of a per-CPU array per (reason, direction): reason | dir << 8, whose little-endian
 *    bytes read as struct metrics_key {reason, dir, 0}, so the agent decodes slots as it decoded
 *    the hash's keys. An array's lookup is inlined by the verifier and needs no insert: a hash
 *    cost a hashed lookup, and an insert for a first packet, on every packet twice on the
 *    same-node path (its egress and its destination's ingress).
 * 2. Slots never counted read as zero; the agent reports only slots with packets.
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

/* Directions are 1..3 (DIR_*), reasons 0..255. */
#define METRICS_SLOTS 1024

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_SLOTS);
} cilia_metrics SEC(".maps");

static __always_inline void metrics_count(__u8 reason, __u8 dir, __u32 bytes)
{
	union {
		struct metrics_key key;
		__u32 slot;
	} k = { .key = { .reason = reason, .dir = dir } };
	struct metrics_value *v;

	k.slot &= METRICS_SLOTS - 1;
	v = bpf_map_lookup_elem(&cilia_metrics, &k.slot);
	if (!v)
		return;
	v->packets += 1;
	v->bytes += bytes;
}
