// Turns the datapath's policy entries into cilia_policy LPM keys and back: port ranges become
// prefix-aligned blocks, protocol-0 entries one 64-bit prefix. It plans no writes (which keys to
// write and delete for a change is policy_state.ts's job) and does no I/O.
import {
  decode,
  encode,
  LAYOUTS,
  num,
  POLICY_DIR_EGRESS,
  POLICY_DIR_INGRESS,
  POLICY_F_L4,
  POLICY_KEY_DATA_BITS,
  POLICY_PREFIX_L3,
  POLICY_PREFIX_PROTO,
  VERDICT_ALLOW,
  VERDICT_AUDIT,
  VERDICT_DENY,
  VERDICT_NAMES,
  VERDICT_REDIRECT,
} from "./codecs.ts";

export type Verdict =
  | typeof VERDICT_ALLOW
  | typeof VERDICT_DENY
  | typeof VERDICT_REDIRECT
  | typeof VERDICT_AUDIT;
const VERDICTS: readonly number[] = [VERDICT_ALLOW, VERDICT_DENY, VERDICT_REDIRECT, VERDICT_AUDIT];

export interface PolicyEntry {
  egress: boolean;
  /** Peer identity; 0 = any identity. */
  identity: number;
  /** IP protocol; 0 = any protocol (ports are then ignored). */
  proto: number;
  /** Inclusive port (ICMP: type) range. */
  portLo: number;
  portHi: number;
  verdict: Verdict;
  cookie: number;
  proxyPort?: number;
}

export interface PortBlock {
  port: number;
  /** Prefix bits of the port, 0..16. */
  bits: number;
}

/** Splits lo..hi into the fewest prefix-aligned blocks. */
export function portBlocks(lo: number, hi: number): PortBlock[] {
  if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 0 || hi > 65535 || lo > hi) {
    throw new RangeError(`Invalid port range ${lo}-${hi}: expected 0 <= lo <= hi <= 65535`);
  }
  const out: PortBlock[] = [];
  let p = lo;
  while (p <= hi) {
    let k = 16;
    while (k > 0 && ((p & ((1 << k) - 1)) !== 0 || p + (1 << k) - 1 > hi)) k--;
    out.push({ port: p, bits: 16 - k });
    p += 1 << k;
  }
  return out;
}

/** A key's bytes in hex: the identity of a map slot. */
export const keyId = (key: Uint8Array): string =>
  Array.from(key, (b) => b.toString(16).padStart(2, "0")).join("");

export interface EncodedEntry {
  key: Uint8Array;
  value: Uint8Array;
}

/** The map entries for one policy entry of endpoint epId. */
export function encodePolicyEntry(epId: number, e: PolicyEntry): EncodedEntry[] {
  if (!Number.isInteger(e.proto) || e.proto < 0 || e.proto > 255) {
    throw new RangeError(`Invalid protocol ${e.proto}: expected 0..255`);
  }
  if (!VERDICTS.includes(e.verdict)) {
    throw new RangeError(
      `Invalid verdict ${e.verdict}: expected ${
        VERDICTS.map((v) => `${v} (${VERDICT_NAMES[v]})`).join(", ")
      }`,
    );
  }
  const value = encode(LAYOUTS.policyValue, {
    verdict: e.verdict,
    flags: e.proto === 0 ? 0 : POLICY_F_L4,
    proxy_port: e.proxyPort ?? 0,
    cookie: e.cookie >>> 0,
  });
  const egress = e.egress ? POLICY_DIR_EGRESS : POLICY_DIR_INGRESS;
  const base = { ep_id: epId, egress, identity: e.identity >>> 0 };
  if (e.proto === 0) {
    return [{ key: encode(LAYOUTS.policyKey, { ...base, prefixlen: POLICY_PREFIX_L3 }), value }];
  }
  return portBlocks(e.portLo, e.portHi).map((b) => ({
    key: encode(LAYOUTS.policyKey, {
      ...base,
      prefixlen: POLICY_PREFIX_PROTO + b.bits,
      proto: e.proto,
      dport: b.port,
    }),
    value,
  }));
}

/** Decodes one map entry into [epId, single-block PolicyEntry]. */
export function decodePolicyEntry(key: Uint8Array, value: Uint8Array): [number, PolicyEntry] {
  const k = decode(LAYOUTS.policyKey, key), v = decode(LAYOUTS.policyValue, value);
  const prefixlen = num(k.prefixlen), proto = num(k.proto);
  const size = 1 << (POLICY_KEY_DATA_BITS - Math.max(prefixlen, POLICY_PREFIX_PROTO));
  const portLo = proto === 0 ? 0 : num(k.dport);
  const entry: PolicyEntry = {
    egress: num(k.egress) === POLICY_DIR_EGRESS,
    identity: num(k.identity),
    proto,
    portLo,
    portHi: proto === 0 ? 65535 : portLo + size - 1,
    verdict: num(v.verdict) as Verdict,
    cookie: num(v.cookie),
  };
  if (num(v.proxy_port) !== 0) entry.proxyPort = num(v.proxy_port);
  return [num(k.ep_id), entry];
}

const sameButPorts = (a: PolicyEntry, b: PolicyEntry) =>
  a.egress === b.egress && a.identity === b.identity && a.proto === b.proto &&
  a.verdict === b.verdict && a.cookie === b.cookie && a.proxyPort === b.proxyPort;

/** Sorts entries and merges adjacent blocks with equal attributes back into ranges. */
export function mergePolicyEntries(entries: PolicyEntry[]): PolicyEntry[] {
  const sorted = [...entries].sort((a, b) =>
    Number(a.egress) - Number(b.egress) || a.identity - b.identity || a.proto - b.proto ||
    a.portLo - b.portLo
  );
  const out: PolicyEntry[] = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    if (last && sameButPorts(last, e) && last.portHi + 1 === e.portLo) last.portHi = e.portHi;
    else out.push({ ...e });
  }
  return out;
}
