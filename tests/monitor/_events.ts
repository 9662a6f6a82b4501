// Synthetic datapath events for the monitor's tests: a PacketEvent as events.ts decodes it, with
// an Ethernet + IPv4 + TCP/ICMP frame in `data`, so flows get addresses, ports and flags.
import type { PacketEvent } from "../../agent/datapath/events.ts";

export function frame(
  src: string,
  dst: string,
  l4: { proto: 6 | 17; sport: number; dport: number; flags?: number } | {
    proto: 1;
    type: number;
  },
): Uint8Array {
  const d = new Uint8Array(64);
  d[12] = 0x08;
  d[13] = 0x00;
  d[14] = 0x45;
  d[23] = l4.proto;
  d.set(src.split(".").map(Number), 26);
  d.set(dst.split(".").map(Number), 30);
  if (l4.proto === 1) d[34] = l4.type;
  else {
    d[34] = l4.sport >> 8;
    d[35] = l4.sport & 0xff;
    d[36] = l4.dport >> 8;
    d[37] = l4.dport & 0xff;
    d[47] = "flags" in l4 ? l4.flags ?? 0 : 0;
  }
  return d;
}

export function event(p: Partial<PacketEvent> & Pick<PacketEvent, "type">): PacketEvent {
  return {
    subtype: 0,
    epId: 0,
    srcIdentity: 0,
    dstIdentity: 0,
    ifindex: 0,
    direction: "ingress",
    family: 4,
    proto: 6,
    sport: 40000,
    dport: 80,
    verdict: "none",
    match: 0,
    cookie: 0,
    ctState: 0,
    svcId: 0,
    origLen: 64,
    capLen: 64,
    data: new Uint8Array(),
    cpu: 0,
    ...p,
  };
}
