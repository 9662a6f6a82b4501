/**
 * The node records of the cluster: this node's (name, addresses, pod CIDRs, start time) is put
 * at `cilia/nodes/<name>` with the node lease, so it disappears when the node stops renewing;
 * `list()` reads every node's. Discovery of routes and tunnels (discovery.ts) follows these
 * records; this module only publishes and reads them.
 */

import type { KvStore } from "../kvstore/kvstore.ts";
import { LeaseExpiredError } from "../kvstore/errors.ts";
import type { NodeLease } from "./lease.ts";

export const NODES_PREFIX = "cilia/nodes/";

export interface NodeRecord {
  name: string;
  addresses: string[];
  /** The node IP on the underlay: other nodes' tunnel endpoint or next hop for its pods. */
  ip?: string;
  /** How other nodes reach its pods: "tunnel" (VXLAN, identity in the VNI) or "native". */
  routingMode?: "tunnel" | "native";
  podCidr?: string;
  podCidrV6?: string;
  startedAt: string;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Non-loopback, non-link-local addresses of this host's interfaces. */
export function hostAddresses(): string[] {
  try {
    return Deno.networkInterfaces()
      .filter((i) => !i.address.startsWith("127.") && i.address !== "::1")
      .filter((i) => !i.address.toLowerCase().startsWith("fe80:"))
      .map((i) => i.address)
      .filter((a, i, all) => all.indexOf(a) === i)
      .sort();
  } catch {
    return [];
  }
}

/**
 * The node IP: the configured one, else the first IPv4 address that is neither link-local nor
 * one of cilia's own (the pod gateways on cilia_host); with `device` (--devices), the first
 * such address on that device.
 */
export function pickNodeIp(
  configured: string | undefined,
  exclude: readonly string[],
  opts: { device?: string | undefined } = {},
): string | undefined {
  if (configured !== undefined) return configured;
  const usable = (a: string) =>
    a.includes(".") && !a.startsWith("169.254.") && !exclude.includes(a);
  if (opts.device !== undefined) return addressesOf(opts.device).find(usable);
  return hostAddresses().find(usable);
}

function addressesOf(device: string): string[] {
  try {
    return Deno.networkInterfaces().filter((i) => i.name === device).map((i) => i.address);
  } catch {
    return [];
  }
}

/**
 * The node's IPv6 address for NodePort and LoadBalancer (bpf/lib/nodeport6.h): the first global
 * (not link-local) IPv6 address on the underlay device (`device`, else the one that holds the
 * node IP), if any.
 */
export function pickNodeIp6(
  nodeIp: string | undefined,
  opts: { device?: string | undefined } = {},
): string | undefined {
  if (nodeIp === undefined) return undefined;
  try {
    const all = Deno.networkInterfaces();
    const dev = opts.device ?? all.find((i) => i.address === nodeIp)?.name;
    return all.find((i) =>
      i.name === dev && i.family === "IPv6" && !i.address.toLowerCase().startsWith("fe80:")
    )?.address;
  } catch {
    return undefined;
  }
}

export class NodeRegistry {
  #store: KvStore;
  #lease: NodeLease;
  readonly self: NodeRecord;

  constructor(store: KvStore, lease: NodeLease, self: NodeRecord) {
    this.#store = store;
    this.#lease = lease;
    this.self = self;
    lease.onRenewed((id) => this.#put(id));
  }

  /**
   * Puts this node's record with the lease. A lease that lapsed before (a start slowed past the
   * TTL, as when several agents start at once on a loaded machine and the keep-alive could not
   * run in time) is replaced by `lease.refresh()`, whose renewal puts this record and every
   * other leased key again, instead of failing the start.
   */
  async register(): Promise<void> {
    try {
      await this.#put(this.#lease.id);
    } catch (err) {
      if (!(err instanceof LeaseExpiredError)) throw err;
      await this.#lease.refresh();
    }
  }

  #put(lease: string): Promise<void> {
    return this.#store.put(
      NODES_PREFIX + this.self.name,
      enc.encode(JSON.stringify(this.self)),
      { lease },
    ).then(() => {});
  }

  async list(): Promise<(NodeRecord & { self: boolean })[]> {
    const out: (NodeRecord & { self: boolean })[] = [];
    for (const e of await this.#store.list(NODES_PREFIX)) {
      try {
        const r = JSON.parse(dec.decode(e.value)) as NodeRecord;
        out.push({ ...r, self: r.name === this.self.name });
      } catch {
        // a record some other writer garbled: skip it
      }
    }
    return out;
  }
}
