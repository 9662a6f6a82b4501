// Encoders and decoders for every key/value struct of bpf/lib/*.h. The C headers are the one
// source of truth: each layout below lists the struct's members with their offsets, and
// tests/datapath/codecs_test.ts checks them against the compiled object's BTF. This module is
// browser compatible (pure byte handling, little-endian hosts only, as BPF maps are host order).

export type FieldKind = "u8" | "u16" | "u32" | "u64" | "be16" | "bytes";
export interface Field {
  /** Member name; "a.b" is member b of the nested struct member a. */
  name: string;
  offset: number;
  kind: FieldKind;
  /** Length of a "bytes" field. */
  len?: number;
}
export interface Layout {
  /** The C struct name as it appears in BTF. */
  struct: string;
  size: number;
  fields: readonly Field[];
}
export type Values = Record<string, number | bigint | Uint8Array>;

/** A Layout from [member, offset, kind, len?] rows, in the C struct's order. */
export function layout(
  struct: string,
  size: number,
  fields: [string, number, FieldKind, number?][],
) {
  return {
    struct,
    size,
    fields: fields.map(([name, offset, kind, len]) =>
      len ? { name, offset, kind, len } : { name, offset, kind }
    ),
  } satisfies Layout;
}

const TUPLE: [string, number, FieldKind, number?][] = [
  ["saddr", 0, "bytes", 16],
  ["daddr", 16, "bytes", 16],
  ["sport", 32, "be16"],
  ["dport", 34, "be16"],
  ["proto", 36, "u8"],
  ["family", 37, "u8"],
  ["pad", 38, "bytes", 2],
];

export const LAYOUTS = {
  ipcacheKey: layout("ipcache_key", 24, [["prefixlen", 0, "u32"], ["family", 4, "u8"], [
    "pad",
    5,
    "bytes",
    3,
  ], ["addr", 8, "bytes", 16]]),
  ipcacheValue: layout("ipcache_value", 12, [
    ["identity", 0, "u32"],
    ["tunnel_endpoint", 4, "u32"],
    [
      "flags",
      8,
      "u8",
    ],
    ["pad", 9, "bytes", 3],
  ]),
  endpointKey: layout("endpoint_key", 4, [["ifindex", 0, "u32"]]),
  endpointInfo: layout("endpoint_info", 40, [
    ["ep_id", 0, "u16"],
    ["flags", 2, "u8"],
    ["pad", 3, "u8"],
    ["identity", 4, "u32"],
    ["ipv4", 8, "bytes", 4],
    ["ipv6", 12, "bytes", 16],
    ["mac", 28, "bytes", 6],
    ["host_mac", 34, "bytes", 6],
  ]),
  // cilia_lxc_ipv4's value (bpf/lib/endpoint.h); its key is the endpoint's IPv4 address, 4 bytes
  // in network order.
  lxcIpv4Info: layout("lxc_ipv4_info", 16, [
    ["ifindex", 0, "u32"],
    ["mac", 4, "bytes", 6],
    ["host_mac", 10, "bytes", 6],
  ]),
  policyKey: layout("policy_key", 16, [
    ["prefixlen", 0, "u32"],
    ["ep_id", 4, "u16"],
    ["egress", 6, "u8"],
    ["pad", 7, "u8"],
    ["identity", 8, "u32"],
    ["proto", 12, "u8"],
    ["pad2", 13, "u8"],
    ["dport", 14, "be16"],
  ]),
  policyValue: layout("policy_value", 8, [["verdict", 0, "u8"], ["flags", 1, "u8"], [
    "proxy_port",
    2,
    "be16",
  ], ["cookie", 4, "u32"]]),
  ctTuple: layout("ct_tuple", 40, TUPLE),
  ctKey: layout("ct_key", 44, [
    ...TUPLE.map(([n, o, k, l]): [string, number, FieldKind, number?] =>
      l === undefined ? [`tuple.${n}`, o, k] : [`tuple.${n}`, o, k, l]
    ),
    ["ep_id", 40, "u16"],
    ["dir", 42, "u8"],
    ["pad", 43, "u8"],
  ]),
  ctEntry: layout("ct_entry", 32, [
    ["expires", 0, "u64"],
    ["packets", 8, "u64"],
    ["bytes", 16, "u64"],
    ["peer_identity", 24, "u32"],
    ["flags", 28, "u8"],
    ["tcp_flags", 29, "u8"],
    ["rev_nat", 30, "u16"],
  ]),
  metricsValue: layout("metrics_value", 16, [["packets", 0, "u64"], ["bytes", 8, "u64"]]),
  event: layout("cilia_event", 40, [
    ["type", 0, "u8"],
    ["subtype", 1, "u8"],
    ["ep_id", 2, "u16"],
    ["src_identity", 4, "u32"],
    ["dst_identity", 8, "u32"],
    ["ifindex", 12, "u32"],
    ["dir", 16, "u8"],
    ["proto", 17, "u8"],
    ["verdict", 18, "u8"],
    ["match", 19, "u8"],
    ["sport", 20, "u16"],
    ["dport", 22, "u16"],
    ["cookie", 24, "u32"],
    ["orig_len", 28, "u32"],
    ["cap_len", 32, "u32"],
    ["family", 36, "u8"],
    ["ct_state", 37, "u8"],
    ["svc_id", 38, "u16"],
  ]),
  // bpf/lib/proxy.h: the L7 redirect's maps (addresses and ports in network order).
  proxyCfg: layout("proxy_cfg", 32, [
    ["gw_ipv4", 0, "bytes", 4],
    ["host_ifindex", 4, "u32"],
    ["host_mac", 8, "bytes", 6],
    ["pad", 14, "bytes", 2],
    ["gw_ipv6", 16, "bytes", 16],
  ]),
  proxyOrigKey: layout("proxy_orig_key", 24, [
    ["client_ip", 0, "bytes", 16],
    ["client_port", 16, "be16"],
    ["proxy_port", 18, "be16"],
    ["family", 20, "u8"],
    ["pad", 21, "bytes", 3],
  ]),
  proxyOrigValue: layout("proxy_orig_value", 36, [
    ["orig_ip", 0, "bytes", 16],
    ["orig_port", 16, "be16"],
    ["ep_id", 18, "u16"],
    ["src_identity", 20, "u32"],
    ["dst_identity", 24, "u32"],
    ["cookie", 28, "u32"],
    ["dir", 32, "u8"],
    ["pad", 33, "bytes", 3],
  ]),
  proxyNatKey: layout("proxy_nat_key", 24, [
    ["server_ip", 0, "bytes", 16],
    ["server_port", 16, "be16"],
    ["local_port", 18, "be16"],
    ["family", 20, "u8"],
    ["pad", 21, "bytes", 3],
  ]),
  proxyNatValue: layout("proxy_nat_value", 28, [
    ["client_ip", 0, "bytes", 16],
    ["identity", 16, "u32"],
    ["ep_id", 20, "u16"],
    ["dir", 22, "u8"],
    ["pad", 23, "u8"],
    ["ingress_ep_id", 24, "u16"],
    ["pad2", 26, "u16"],
  ]),
  // bpf/lib/lb.h: services (addresses and ports in network order).
  lbServiceKey: layout("lb_service_key", 20, [
    ["addr", 0, "bytes", 16],
    ["port", 16, "be16"],
    ["proto", 18, "u8"],
    ["family", 19, "u8"],
  ]),
  lbServiceValue: layout("lb_service_value", 8, [
    ["slots", 0, "u32"],
    ["svc_id", 4, "u16"],
    ["flags", 6, "u8"],
    ["pad", 7, "u8"],
  ]),
  lbSlotKey: layout("lb_slot_key", 8, [["svc_id", 0, "u32"], ["slot", 4, "u32"]]),
  lbSlotValue: layout("lb_slot_value", 4, [["backend_id", 0, "u32"]]),
  lbBackendKey: layout("lb_backend_key", 4, [["backend_id", 0, "u32"]]),
  lbBackend: layout("lb_backend", 24, [
    ["addr", 0, "bytes", 16],
    ["port", 16, "be16"],
    ["proto", 18, "u8"],
    ["family", 19, "u8"],
    ["flags", 20, "u8"],
    ["pad", 21, "bytes", 3],
  ]),
  lbAffinityKey: layout("lb_affinity_key", 20, [
    ["addr", 0, "bytes", 16],
    ["svc_id", 16, "u16"],
    ["family", 18, "u8"],
    ["pad", 19, "u8"],
  ]),
  lbAffinity: layout("lb_affinity", 16, [
    ["last_used", 0, "u64"],
    ["backend_id", 8, "u32"],
    ["pad", 12, "u32"],
  ]),
  lbAffinityMatchKey: layout("lb_affinity_match_key", 8, [
    ["backend_id", 0, "u32"],
    ["svc_id", 4, "u16"],
    ["pad", 6, "u16"],
  ]),
  lbAffinityMatch: layout("lb_affinity_match", 4, [["timeout_s", 0, "u32"]]),
  lbRevnatKey: layout("lb_revnat_key", 4, [["svc_id", 0, "u16"], ["pad", 2, "u16"]]),
  lbRevnat: layout("lb_revnat", 20, [
    ["addr", 0, "bytes", 16],
    ["port", 16, "be16"],
    ["family", 18, "u8"],
    ["pad", 19, "u8"],
  ]),
} as const satisfies Record<string, Layout>;

/** Encodes values by a layout; missing fields (padding) are zero. */
export function encode(l: Layout, values: Values): Uint8Array {
  const out = new Uint8Array(l.size);
  const dv = new DataView(out.buffer);
  for (const f of l.fields) {
    const v = values[f.name];
    if (v === undefined) continue;
    if (f.kind === "bytes") {
      if (!(v instanceof Uint8Array)) throw new TypeError(`Field "${f.name}" expects bytes`);
      out.set(v.subarray(0, f.len), f.offset);
    } else if (f.kind === "u64") dv.setBigUint64(f.offset, BigInt(v as number | bigint), true);
    else {
      const n = Number(v);
      if (f.kind === "u8") dv.setUint8(f.offset, n);
      else if (f.kind === "u16") dv.setUint16(f.offset, n, true);
      else if (f.kind === "be16") dv.setUint16(f.offset, n, false);
      else dv.setUint32(f.offset, n, true);
    }
  }
  return out;
}

/** Decodes bytes by a layout: numbers, bigint for u64, copies for byte fields. */
export function decode(l: Layout, bytes: Uint8Array): Values {
  if (bytes.length < l.size) {
    throw new RangeError(`Cannot decode "${l.struct}": ${bytes.length} bytes, expected ${l.size}`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Values = {};
  for (const f of l.fields) {
    if (f.kind === "bytes") out[f.name] = bytes.slice(f.offset, f.offset + f.len!);
    else if (f.kind === "u64") out[f.name] = dv.getBigUint64(f.offset, true);
    else if (f.kind === "u8") out[f.name] = dv.getUint8(f.offset);
    else if (f.kind === "u16") out[f.name] = dv.getUint16(f.offset, true);
    else if (f.kind === "be16") out[f.name] = dv.getUint16(f.offset, false);
    else out[f.name] = dv.getUint32(f.offset, true);
  }
  return out;
}

export const num = (v: Values[string] | undefined): number => Number(v ?? 0);
export const big = (v: Values[string] | undefined): bigint =>
  typeof v === "bigint" ? v : BigInt(Number(v ?? 0));
export const bytesOf = (v: Values[string] | undefined): Uint8Array =>
  v instanceof Uint8Array ? v : new Uint8Array();

// Constants shared with bpf/lib/*.h, generated from one table (scripts/gen/constants.ts; drop
// reasons and verdicts from scripts/gen/drop_reasons.ts), never written here by hand.
export {
  CT_ESTABLISHED,
  CT_NEW,
  CT_RELATED,
  CT_REPLY,
  DIR_EGRESS,
  DIR_INGRESS,
  DIR_SERVICE,
  EP_F_EGRESS_DEFAULT_DENY,
  EP_F_ENFORCEMENT_DISABLED,
  EP_F_INGRESS_DEFAULT_DENY,
  EP_F_NOT_READY,
  EVENT_DROP,
  EVENT_POLICY_VERDICT,
  EVENT_TRACE,
  POLICY_DIR_EGRESS,
  POLICY_DIR_INGRESS,
  POLICY_F_L4,
  POLICY_KEY_DATA_BITS,
  POLICY_MATCH_ANY_L3,
  POLICY_MATCH_ANY_L4,
  POLICY_MATCH_L3,
  POLICY_MATCH_L4,
  POLICY_MATCH_NONE,
  POLICY_PREFIX_L3,
  POLICY_PREFIX_PROTO,
  TRACE_FROM_ENDPOINT,
  TRACE_SOCK_XLATE,
  TRACE_TO_ENDPOINT,
  VERDICT_ALLOW,
  VERDICT_AUDIT,
  VERDICT_DENY,
  VERDICT_NAMES,
  VERDICT_NONE,
  VERDICT_REDIRECT,
} from "@cilia/policy-wasm/constants";
export const EVENT_HEADER_LEN = LAYOUTS.event.size;
