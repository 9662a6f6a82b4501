// Turns one conformance case, loaded into a PolicyEngine, into what the kernel lab needs: the
// endpoints with the engine's map-state as it is (the lab hands it to the agent's KernelSink,
// which does the one conversion into map keys), the ipcache (endpoint IPs, CIDR identities'
// prefixes), the outside addresses, and one real probe per query: who sends what from which
// address to which address. A query that packets cannot express
// makes the whole case a skip with the reason. An endpoint without an address of some family gets
// a lab address of that family (ipcache: its identity), so an IPv6 peer can reach an IPv4-only
// endpoint as the engine assumes it can. Pure: no I/O.
import type {
  PeerRef,
  PolicyEngine,
  Scenario,
  SimCluster,
  SimEndpoint,
} from "../../policy-wasm/mod.ts";
import { RESERVED_BY_NAME } from "../../policy-wasm/mod.ts";
import type { LabCase, Probe } from "./_conformance_lab.ts";
import { type Addrs, entityAddrs, HOST, type Place, WORLD } from "./_conformance_netns.ts";

export interface CasePlan {
  lab: LabCase;
  /** One probe per query, in file order. */
  probes: Probe[];
}

interface Side {
  place: Place;
  addrs: Partial<Record<4 | 6, string>>;
  /** The address family the engine gives this peer (endpoints: their first IP). */
  family?: 4 | 6;
  /** Set when the address is given by the query (a CIDR peer): its family is fixed. */
  fixed?: boolean;
}

const familyOf = (ip: string): 4 | 6 => ip.includes(":") ? 6 : 4;
const both = (a: Addrs) => ({ 4: a.v4, 6: a.v6 });

/** The address an endpoint gets in a family the case gives it none of (ipcache: its identity). */
export const labEndpointAddr = (epId: number, family: 4 | 6): string =>
  family === 4 ? `169.254.100.${epId}` : `fdff:100::${epId.toString(16)}`;

class Unexpressible extends Error {}

/** Outside addresses the lab owns permanently (entities, world). */
const LAB_ADDRESSES = new Set(
  [WORLD, ...Object.values(RESERVED_BY_NAME).map(entityAddrs)].flatMap((a) => [a.v4, a.v6]),
);

function endpointAddrs(ep: SimEndpoint): Record<4 | 6, string> {
  const v4 = ep.ips.find((a) => familyOf(a) === 4), v6 = ep.ips.find((a) => familyOf(a) === 6);
  return { 4: v4 ?? labEndpointAddr(ep.id, 4), 6: v6 ?? labEndpointAddr(ep.id, 6) };
}

function side(cluster: SimCluster, engine: PolicyEngine, ref: PeerRef): Side {
  if (typeof ref === "string") ref = { endpoint: ref };
  if ("endpoint" in ref) {
    const ep = cluster.endpoint(ref.endpoint);
    if (!ep) throw new RangeError(`Unknown endpoint "${ref.endpoint}"`);
    return {
      place: { kind: "pod", index: ep.id - 1 },
      addrs: endpointAddrs(ep),
      ...(ep.ips[0] ? { family: familyOf(ep.ips[0]) } : {}),
    };
  }
  if ("cidr" in ref) {
    const ip = ref.cidr.replace(/\/\d+$/, "");
    const ep = cluster.endpoints.find((e) => e.ips.includes(ip));
    const place: Place = ep && engine.lookupIp(ip) === ep.identity
      ? { kind: "pod", index: ep.id - 1 }
      : { kind: "outside" };
    return { place, addrs: { [familyOf(ip)]: ip }, family: familyOf(ip), fixed: true };
  }
  if ("entity" in ref) {
    const id = RESERVED_BY_NAME[ref.entity];
    if (ref.entity === "host") return { place: { kind: "host" }, addrs: both(HOST) };
    if (ref.entity === "world") {
      for (const a of [WORLD.v4, WORLD.v6]) {
        if (engine.lookupIp(a) !== 2) {
          throw new Unexpressible(`the lab's world address "${a}" is inside a CIDR of the case`);
        }
      }
      return { place: { kind: "outside" }, addrs: both(WORLD) };
    }
    if (id === undefined) throw new Unexpressible(`no address for entity "${ref.entity}"`);
    return { place: { kind: "outside" }, addrs: both(entityAddrs(id)) };
  }
  throw new Unexpressible(`a peer given by identity (${ref.identity}) has no address`);
}

const samePlace = (a: Place, b: Place) =>
  a.kind === b.kind && (a.kind !== "pod" || a.index === (b as { index: number }).index);

/**
 * The packet's family: a CIDR peer's address fixes it; otherwise the engine's rule (IPv6 as soon
 * as one side is IPv6). The engine picks ICMP or ICMPv6 by that rule, so an ICMP query whose
 * packet must have the other family cannot be sent.
 */
function familyFor(q: Scenario["queries"][number], from: Side, to: Side): 4 | 6 {
  const engine = from.family === 6 || to.family === 6 ? 6 : from.family ?? to.family ?? 4;
  const fixed = [from, to].flatMap((s) => s.fixed ? [s.family!] : []);
  if (fixed.length === 2 && fixed[0] !== fixed[1]) {
    throw new Unexpressible("an IPv4 and an IPv6 address cannot talk to each other");
  }
  const family = fixed[0] ?? engine;
  if (q.protocol === "ICMP" && family !== engine) {
    throw new Unexpressible(
      `the engine evaluates ICMPv${engine === 6 ? 6 : 4} but the packet must be IPv${family}`,
    );
  }
  return family;
}

function probeOf(
  cluster: SimCluster,
  engine: PolicyEngine,
  q: Scenario["queries"][number],
): Probe {
  if (q.http || q.kafka || q.dns) throw new Unexpressible("it carries an L7 request");
  if (q.protocol === "SCTP") {
    throw new Unexpressible("SCTP: this kernel has no SCTP support to answer a probe");
  }
  const from = side(cluster, engine, q.from), to = side(cluster, engine, q.to);
  const family = familyFor(q, from, to);
  const src = from.addrs[family], dst = to.addrs[family];
  if (!src || !dst) throw new Unexpressible(`one side has no IPv${family} address`);
  if (samePlace(from.place, to.place)) {
    throw new Unexpressible("source and destination share a network namespace");
  }
  const proto = q.protocol === "ICMP" ? "icmp" : q.protocol === "UDP" ? "udp" : "tcp";
  const port = proto === "icmp" ? q.icmpType ?? (family === 6 ? 128 : 8) : q.port;
  if (proto !== "icmp" && port === 0) throw new Unexpressible("port 0 cannot be probed");
  return { proto, from: from.place, to: to.place, src, dst, port };
}

/** The lab setup and probes of a case, or the reason packets cannot express it. */
export function planCase(
  scenario: Scenario,
  cluster: SimCluster,
  engine: PolicyEngine,
): CasePlan | { skip: string } {
  const endpoints = cluster.endpoints.map((ep, i) => {
    if (ep.id !== i + 1) {
      throw new RangeError(`Endpoint "${ep.name}" has id ${ep.id}, not ${i + 1}`);
    }
    const ms = engine.computeMapState(ep.id);
    const addrs = endpointAddrs(ep);
    return {
      epId: ep.id,
      identity: ep.identity,
      ipv4: addrs[4],
      ipv6: addrs[6],
      ingressDefaultDeny: ms.defaultDeny.ingress,
      egressDefaultDeny: ms.defaultDeny.egress,
      enforcement: ms.enforcement,
      policy: ms.entries,
    };
  });
  const ipcache = [
    ...cluster.endpoints.flatMap((ep) =>
      Object.values(endpointAddrs(ep)).map((prefix) => ({ prefix, identity: ep.identity }))
    ),
    ...engine.identities.flatMap((id) =>
      id.cidr && id.cidr !== "world" ? [{ prefix: id.cidr, identity: id.id }] : []
    ),
  ];
  const probes: Probe[] = [];
  for (const [i, q] of scenario.queries.entries()) {
    try {
      probes.push(probeOf(cluster, engine, q));
    } catch (e) {
      if (!(e instanceof Unexpressible)) throw e;
      return { skip: `queries[${i}] "${q.name ?? ""}" cannot be sent as packets: ${e.message}` };
    }
  }
  const outside = new Set<string>();
  for (const p of probes) {
    for (const [place, addr] of [[p.from, p.src], [p.to, p.dst]] as const) {
      if (place.kind === "outside" && !LAB_ADDRESSES.has(addr)) outside.add(addr);
    }
  }
  return { lab: { endpoints, ipcache, outside: [...outside] }, probes };
}
