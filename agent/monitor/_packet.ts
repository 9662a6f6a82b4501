// Reads the addresses and the L4 header of a captured packet (the first bytes of the frame a
// datapath event carries, Ethernet header first) into the parts of a Hubble flow: `IP` and `l4`.
// Pure and allocation-light: it runs once per event. It never judges a packet. This module is
// browser compatible.

export interface FlowIP {
  source: string;
  destination: string;
  ipVersion: "IPv4" | "IPv6";
}

export interface TcpFlags {
  FIN?: true;
  SYN?: true;
  RST?: true;
  PSH?: true;
  ACK?: true;
  URG?: true;
}

export type FlowL4 =
  | { TCP: { source_port: number; destination_port: number; flags?: TcpFlags } }
  | { UDP: { source_port: number; destination_port: number } }
  | { SCTP: { source_port: number; destination_port: number } }
  | { ICMPv4: { type: number; code: number } }
  | { ICMPv6: { type: number; code: number } };

export interface ParsedPacket {
  IP?: FlowIP;
  l4?: FlowL4;
}

function v4(d: Uint8Array, at: number): string {
  return `${d[at]}.${d[at + 1]}.${d[at + 2]}.${d[at + 3]}`;
}

/** RFC 5952 text of 16 bytes at `at`. */
function v6(d: Uint8Array, at: number): string {
  const w: number[] = [];
  for (let i = 0; i < 8; i++) w.push((d[at + 2 * i]! << 8) | d[at + 2 * i + 1]!);
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && w[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = w.map((x) => x.toString(16));
  if (best < 0) return hex.join(":");
  return `${hex.slice(0, best).join(":")}::${hex.slice(best + bestLen).join(":")}`;
}

const FLAG_BITS: [keyof TcpFlags, number][] = [
  ["FIN", 0x01],
  ["SYN", 0x02],
  ["RST", 0x04],
  ["PSH", 0x08],
  ["ACK", 0x10],
  ["URG", 0x20],
];

function l4Of(d: Uint8Array, proto: number, at: number): FlowL4 | undefined {
  if (proto === 1 || proto === 58) {
    if (d.length < at + 2) return undefined;
    const icmp = { type: d[at]!, code: d[at + 1]! };
    return proto === 1 ? { ICMPv4: icmp } : { ICMPv6: icmp };
  }
  if (d.length < at + 4) return undefined;
  const ports = {
    source_port: (d[at]! << 8) | d[at + 1]!,
    destination_port: (d[at + 2]! << 8) | d[at + 3]!,
  };
  if (proto === 17) return { UDP: ports };
  if (proto === 132) return { SCTP: ports };
  if (proto !== 6) return undefined;
  if (d.length < at + 14) return { TCP: ports };
  const flags: TcpFlags = {};
  for (const [name, bit] of FLAG_BITS) if (d[at + 13]! & bit) flags[name] = true;
  return { TCP: { ...ports, flags } };
}

/** IP and L4 of an Ethernet frame's first bytes; parts that were not captured stay absent. */
export function parsePacket(d: Uint8Array): ParsedPacket {
  if (d.length < 14) return {};
  const ethertype = (d[12]! << 8) | d[13]!;
  if (ethertype === 0x0800 && d.length >= 34) {
    const ihl = (d[14]! & 0x0f) * 4;
    const fragOffset = ((d[20]! & 0x1f) << 8) | d[21]!;
    const ip: FlowIP = { source: v4(d, 26), destination: v4(d, 30), ipVersion: "IPv4" };
    const l4 = fragOffset === 0 ? l4Of(d, d[23]!, 14 + ihl) : undefined;
    return l4 ? { IP: ip, l4 } : { IP: ip };
  }
  if (ethertype === 0x86dd && d.length >= 54) {
    const ip: FlowIP = { source: v6(d, 22), destination: v6(d, 38), ipVersion: "IPv6" };
    const l4 = l4Of(d, d[20]!, 54); // extension headers are not followed
    return l4 ? { IP: ip, l4 } : { IP: ip };
  }
  return {};
}

/** Hubble's Summary: "TCP Flags: SYN", "UDP", "ICMPv4 EchoRequest", or the protocol number. */
export function summaryOf(l4: FlowL4 | undefined, proto: number): string {
  if (!l4) return `IP protocol ${proto}`;
  if ("TCP" in l4) {
    const f = Object.keys(l4.TCP.flags ?? {});
    return f.length > 0 ? `TCP Flags: ${f.join(", ")}` : "TCP";
  }
  if ("UDP" in l4) return "UDP";
  if ("SCTP" in l4) return "SCTP";
  if ("ICMPv4" in l4) return `ICMPv4 ${ICMP4_NAMES[l4.ICMPv4.type] ?? `type ${l4.ICMPv4.type}`}`;
  return `ICMPv6 ${ICMP6_NAMES[l4.ICMPv6.type] ?? `type ${l4.ICMPv6.type}`}`;
}

const ICMP4_NAMES: Record<number, string> = {
  0: "EchoReply",
  3: "DestinationUnreachable",
  8: "EchoRequest",
  11: "TimeExceeded",
};
const ICMP6_NAMES: Record<number, string> = {
  1: "DestinationUnreachable",
  3: "TimeExceeded",
  128: "EchoRequest",
  129: "EchoReply",
};
