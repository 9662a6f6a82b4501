// Expands an entry's port specs into concrete (protocol, lo, hi) intervals for one subject
// endpoint. ANY means TCP, UDP and SCTP (never ICMP); port 0 means every port; named ports
// resolve on the subject endpoint for ingress and on the peer's endpoints for egress (the
// destination pod's container ports, as Kubernetes specifies); ICMP specs carry the type as the port.

import {
  DIR_INGRESS,
  Endpoint,
  Entry,
  NamedPort,
  namedPortsByIdentity,
  PortSpec,
  PROTO_ANY,
  PROTO_SCTP,
  PROTO_TCP,
  PROTO_UDP,
} from "./model";

export class Interval {
  constructor(public proto: u8, public lo: i32, public hi: i32, public entry: i32) {}
}

function pushProtos(out: Array<Interval>, proto: u8, lo: i32, hi: i32, entry: i32): void {
  if (proto == PROTO_ANY) {
    out.push(new Interval(PROTO_TCP, lo, hi, entry));
    out.push(new Interval(PROTO_UDP, lo, hi, entry));
    out.push(new Interval(PROTO_SCTP, lo, hi, entry));
  } else {
    out.push(new Interval(proto, lo, hi, entry));
  }
}

function pushNamed(out: Array<Interval>, spec: PortSpec, np: NamedPort, entry: i32): void {
  if (np.name != <u32> spec.name) return;
  if (spec.proto != PROTO_ANY && spec.proto != np.proto) return;
  out.push(new Interval(np.proto, <i32> np.port, <i32> np.port, entry));
}

/**
 * Appends the intervals of entry `ei` for subject `ep`; egress named ports resolve on the peer
 * identity `peer` (the destination pod's container ports; 0 = unknown peer, nothing resolves).
 */
export function expandPorts(
  ei: i32,
  e: Entry,
  ep: Endpoint | null,
  peer: u32,
  out: Array<Interval>,
): void {
  for (let i = 0; i < e.ports.length; i++) {
    const spec = e.ports[i];
    if (spec.name >= 0) {
      if (e.dir == DIR_INGRESS) {
        if (ep === null) continue;
        for (let j = 0; j < ep.namedPorts.length; j++) pushNamed(out, spec, ep.namedPorts[j], ei);
      } else if (peer != 0 && namedPortsByIdentity.has(peer)) {
        const named = namedPortsByIdentity.get(peer);
        for (let j = 0; j < named.length; j++) pushNamed(out, spec, named[j], ei);
      }
      continue;
    }
    let lo = <i32> spec.port;
    let hi = <i32> spec.endPort;
    if (lo == 0 && hi == 0) hi = 65535;
    else if (hi < lo) hi = lo;
    pushProtos(out, spec.proto, lo, hi, ei);
  }
}
