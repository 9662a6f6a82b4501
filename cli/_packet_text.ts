// "10.0.0.1:40000 -> 10.0.0.2:80" from a captured frame, for `cilia monitor`. This module is
// browser compatible.

import { parsePacket } from "@cilia/agent/monitor";

export function parsePacketText(data: Uint8Array): string {
  const p = parsePacket(data);
  if (!p.IP) return "";
  const l4 = p.l4;
  const ports = l4 && ("TCP" in l4 || "UDP" in l4 || "SCTP" in l4)
    ? ("TCP" in l4 ? l4.TCP : "UDP" in l4 ? l4.UDP : l4.SCTP)
    : undefined;
  const icmp = l4 && ("ICMPv4" in l4 ? l4.ICMPv4 : "ICMPv6" in l4 ? l4.ICMPv6 : undefined);
  const s = ports ? `:${ports.source_port}` : "";
  const d = ports ? `:${ports.destination_port}` : "";
  return `${p.IP.source}${s} -> ${p.IP.destination}${d}${icmp ? ` type ${icmp.type}` : ""}`;
}
