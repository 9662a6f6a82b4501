// Reads, through ffi.ts, what the kernel would do with one packet's policy lookup: the endpoint's
// flags from cilia_endpoints and the cilia_policy entry the LPM trie returns for a full-length key
// (the kernel itself picks the longest prefix), then identity 0, then the direction's default —
// the three steps of bpf/lib/policy.h, in that order. It only looks; it never writes.

import {
  decode,
  encode,
  EP_F_EGRESS_DEFAULT_DENY,
  EP_F_ENFORCEMENT_DISABLED,
  EP_F_INGRESS_DEFAULT_DENY,
  EP_F_NOT_READY,
  LAYOUTS,
  num,
  POLICY_DIR_EGRESS,
  POLICY_DIR_INGRESS,
  POLICY_KEY_DATA_BITS,
  VERDICT_NAMES,
} from "./codecs.ts";
import { closeFd, mapKeys, mapLookup, mapLookupBatch, objGet, withLibs } from "./ffi.ts";

export interface KernelLookup {
  /** The endpoint's entry was found in cilia_endpoints. */
  endpoint: boolean;
  flags: number;
  /** Which step decided: "entry" (identity), "any-identity", "default", "not-ready", … */
  step: "entry" | "any-identity" | "default" | "not-ready" | "enforcement-disabled" | "no-endpoint";
  verdict: string;
  cookie: number;
  proxyPort?: number;
}

/**
 * The flags of endpoint `epId` in cilia_endpoints (keyed by ifindex): the map read in chunks of
 * CHUNK entries per BPF_MAP_LOOKUP_BATCH syscall (one for a node's endpoints) and only `ep_id`
 * and `flags` taken from each value; one get_next_key and one lookup per entry where the kernel
 * has no batch lookup for the map.
 */
export function endpointFlags(endpointsMap: string, epId: number): number | undefined {
  const KEY = LAYOUTS.endpointKey.size, VALUE = LAYOUTS.endpointInfo.size;
  return withLibs(() => {
    const fd = objGet(endpointsMap);
    try {
      const keys = new Uint8Array(CHUNK * KEY), values = new Uint8Array(CHUNK * VALUE);
      const view = new DataView(values.buffer), count = new Uint32Array(1);
      let pos: Uint8Array | null = null;
      for (;;) {
        const next: Uint8Array = new Uint8Array(8);
        count[0] = CHUNK;
        const r = mapLookupBatch(fd, pos, next, keys, values, count);
        if (r !== 0 && r !== -ENOENT) {
          if (pos === null) return endpointFlagsByKey(fd, epId);
          throw new Error(`Cannot read ${endpointsMap}: error ${-r}`);
        }
        for (let i = 0; i < count[0]!; i++) {
          if (view.getUint16(i * VALUE + EP_ID_AT, true) === epId) {
            return view.getUint8(i * VALUE + FLAGS_AT);
          }
        }
        if (r === -ENOENT) return undefined;
        pos = next;
      }
    } finally {
      closeFd(fd);
    }
  });
}

/** Entries of cilia_endpoints per batch lookup (a hash map's bucket never holds more). */
const CHUNK = 1024;
const ENOENT = 2;
const fieldAt = (name: string) => {
  const f = LAYOUTS.endpointInfo.fields.find((x) => x.name === name);
  if (!f) throw new Error(`endpoint_info has no field "${name}"`);
  return f.offset;
};
const EP_ID_AT = fieldAt("ep_id"), FLAGS_AT = fieldAt("flags");

/** endpointFlags() for kernels without batch lookups. */
function endpointFlagsByKey(fd: number, epId: number): number | undefined {
  for (const key of mapKeys(fd, LAYOUTS.endpointKey.size)) {
    const v = mapLookup(fd, key, LAYOUTS.endpointInfo.size);
    if (!v) continue;
    const info = decode(LAYOUTS.endpointInfo, v);
    if (num(info.ep_id) === epId) return num(info.flags);
  }
  return undefined;
}

function lookupOne(fd: number, key: Record<string, number>) {
  const k = encode(LAYOUTS.policyKey, { ...key, prefixlen: POLICY_KEY_DATA_BITS });
  const v = mapLookup(fd, k, LAYOUTS.policyValue.size);
  return v ? decode(LAYOUTS.policyValue, v) : undefined;
}

/** The kernel's answer for (endpoint, direction, peer identity, protocol, port). */
export function kernelPolicyLookup(
  maps: { cilia_endpoints: string; cilia_policy: string },
  q: { epId: number; egress: boolean; identity: number; proto: number; port: number },
): KernelLookup {
  const flags = endpointFlags(maps.cilia_endpoints, q.epId);
  const base = { endpoint: flags !== undefined, flags: flags ?? 0, cookie: 0 };
  if (flags === undefined) return { ...base, step: "no-endpoint", verdict: "deny" };
  if (flags & EP_F_NOT_READY) return { ...base, step: "not-ready", verdict: "deny" };
  if (flags & EP_F_ENFORCEMENT_DISABLED) {
    return { ...base, step: "enforcement-disabled", verdict: "allow" };
  }
  return withLibs(() => {
    const fd = objGet(maps.cilia_policy);
    try {
      const key = {
        ep_id: q.epId,
        egress: q.egress ? POLICY_DIR_EGRESS : POLICY_DIR_INGRESS,
        identity: q.identity,
        proto: q.proto,
        dport: q.port,
      };
      let step: KernelLookup["step"] = "entry";
      let v = lookupOne(fd, key);
      if (!v && q.identity !== 0) {
        v = lookupOne(fd, { ...key, identity: 0 });
        step = "any-identity";
      }
      if (!v) {
        const dd = flags & (q.egress ? EP_F_EGRESS_DEFAULT_DENY : EP_F_INGRESS_DEFAULT_DENY);
        return { ...base, step: "default", verdict: dd ? "deny" : "allow" };
      }
      const proxy = num(v.proxy_port);
      return {
        ...base,
        step,
        verdict: VERDICT_NAMES[num(v.verdict)] ?? `verdict ${num(v.verdict)}`,
        cookie: num(v.cookie),
        ...(proxy ? { proxyPort: proxy } : {}),
      };
    } finally {
      closeFd(fd);
    }
  });
}
