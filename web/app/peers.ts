// The peers the reachability matrix and the graph are drawn for: the scenario's endpoints, then
// every CIDR the policies name (toCIDR, toCIDRSet and its excepts, fromCIDR…) and every address a
// query names outside them (inside one, that CIDR's row stands for it), then `world` and the host. A CIDR is probed at one address inside it that no more
// specific named prefix and no endpoint holds, so the engine resolves it to that CIDR's identity.
// Pure data; no DOM. This module is browser compatible.

import { formatAddress, parsePrefix, type Prefix, prefixContains } from "../../policy-wasm/mod.ts";
import type { ScenarioQuery } from "./model.ts";

export type PeerKind = "endpoint" | "cidr" | "world" | "host";

export interface MatrixPeer {
  /** Row and column label: the endpoint's name, the prefix, `world` or `host`. */
  name: string;
  kind: PeerKind;
  /** How a query names this peer (what `Add as query` writes). */
  ref: ScenarioQuery["from"];
  /** Extra words for the label's tooltip (the address a CIDR is probed at). */
  title?: string;
}

/** `addr + 1` within 16 bytes; undefined on overflow. */
function next(addr: Uint8Array, family: 4 | 6): Uint8Array | undefined {
  const out = addr.slice();
  for (let i = (family === 4 ? 4 : 16) - 1; i >= 0; i--) {
    if (out[i]! < 255) {
      out[i]!++;
      return out;
    }
    out[i] = 0;
  }
  return undefined;
}

/** The last address of a prefix (host bits set). */
function last(p: Prefix): Uint8Array {
  const out = p.addr.slice();
  const max = p.family === 4 ? 32 : 128;
  for (let bit = p.len; bit < max; bit++) out[bit >> 3]! |= 0x80 >> (bit & 7);
  return out;
}

/** An address inside `p` outside every narrower prefix of `all` and not in `taken`. */
export function probeAddress(
  p: Prefix,
  all: readonly Prefix[],
  taken: ReadonlySet<string>,
): string | undefined {
  if (p.family === 0) return undefined;
  const fam = p.family;
  const max = fam === 4 ? 32 : 128;
  const inner = all.filter((q) => q.len > p.len && prefixContains(p, q));
  const candidates = [
    p.len < max ? next(p.addr, fam) : p.addr,
    ...inner.map((q) => next(last(q), fam)),
    p.addr,
    last(p),
  ];
  for (const c of candidates) {
    if (!c) continue;
    const host: Prefix = { family: fam, len: max, addr: c };
    if (!prefixContains(p, host) || inner.some((q) => prefixContains(q, host))) continue;
    const text = formatAddress(fam, c);
    if (!taken.has(text)) return text;
  }
  return undefined;
}

/**
 * Endpoints first (as given), then the named CIDRs (a /0 is `world`), the addresses queries name,
 * `world` and `host`.
 */
export function matrixPeers(
  endpoints: readonly { name: string; ips: readonly string[] }[],
  o: { cidrs: readonly string[]; queries: readonly ScenarioQuery[] },
): MatrixPeer[] {
  const peers: MatrixPeer[] = endpoints.map((e) => ({
    name: e.name,
    kind: "endpoint",
    ref: e.name,
  }));
  const taken = new Set(endpoints.flatMap((e) => e.ips));
  const prefixes = o.cidrs.flatMap((c) => {
    try {
      return [{ text: c, prefix: parsePrefix(c) }];
    } catch {
      return [];
    }
  });
  const all = prefixes.map((p) => p.prefix);
  for (const { text, prefix } of prefixes) {
    if (prefix.len === 0) continue;
    const ip = probeAddress(prefix, all, taken);
    if (!ip) continue;
    peers.push({ name: text, kind: "cidr", ref: { cidr: ip }, title: `probed at ${ip}` });
  }
  const named = new Set(peers.map((p) => p.name));
  for (const q of o.queries) {
    for (const ref of [q.from, q.to]) {
      if (typeof ref !== "object" || !("cidr" in ref)) continue;
      const ip = ref.cidr.replace(/\/\d+$/, "");
      if (named.has(ip) || taken.has(ip) || insideAny(ip, all)) continue;
      named.add(ip);
      peers.push({ name: ip, kind: "cidr", ref: { cidr: ip }, title: "named by a query" });
    }
  }
  peers.push({ name: "world", kind: "world", ref: { entity: "world" }, title: "reserved:world" });
  peers.push({ name: "host", kind: "host", ref: { entity: "host" }, title: "reserved:host" });
  return peers;
}

function insideAny(ip: string, prefixes: readonly Prefix[]): boolean {
  try {
    const host = parsePrefix(ip);
    return prefixes.some((p) => p.len > 0 && prefixContains(p, host));
  } catch {
    return false;
  }
}
