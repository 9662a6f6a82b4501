/**
 * The routes node discovery wants to other nodes' pod CIDRs, by node: in tunnel mode through the
 * tunnel device, in native mode via the node's next hop (_records.ts; a node without one is
 * warned about once per CIDR and gets no route). A lost node's routes stay for its grace period
 * and a live node's route to the same CIDR wins over it. It only computes the list; routes.ts
 * installs it, when discovery.ts hands it over.
 */

import type { Logger } from "../log.ts";
import type { NodeRecord } from "./registry.ts";
import { nextHop, tryParse } from "./_records.ts";
import type { RouteSpec } from "./routes.ts";

export interface NodeRoutesOptions {
  mode: "tunnel" | "native";
  /** The tunnel device (tunnel mode with a kernel datapath). */
  tunnel?: { ifname: string; mtu: number };
  /** This node's pod gateways: the source of node → remote pod traffic. */
  gateways: { v4?: string; v6?: string };
  log: Logger;
}

export class NodeRoutes {
  #o: NodeRoutesOptions;
  #byNode = new Map<string, { live: boolean; routes: RouteSpec[] }>();
  /** The routes to other nodes' pod CIDRs; made again only when a node changed. */
  #all: RouteSpec[] | undefined = [];
  /** Pod CIDRs already warned about for want of a next hop (native routing). */
  #noNextHop = new Set<string>();

  constructor(opts: NodeRoutesOptions) {
    this.#o = opts;
  }

  /** A node's routes to its (well-formed) pod CIDRs while it is served; none when it is not. */
  set(name: string, served: { node: NodeRecord; live: boolean } | undefined): void {
    if (served !== undefined) {
      const routes: RouteSpec[] = [];
      for (const cidr of [served.node.podCidr, served.node.podCidrV6]) {
        if (typeof cidr !== "string" || tryParse(cidr).length === 0) continue;
        routes.push(...this.#routeTo(served.node, cidr));
      }
      this.#byNode.set(name, { live: served.live, routes });
    } else this.#byNode.delete(name);
    this.#all = undefined;
  }

  /** Lost nodes' routes first: a live node's route to the same CIDR wins. */
  all(): RouteSpec[] {
    return this.#all ??= this.#allRoutes();
  }

  #allRoutes(): RouteSpec[] {
    const all = [...this.#byNode.values()];
    return [...all.filter((n) => !n.live), ...all.filter((n) => n.live)].flatMap((n) => n.routes);
  }

  #routeTo(n: NodeRecord, cidr: string): RouteSpec[] {
    const family = cidr.includes(":") ? 6 : 4;
    const src = family === 4 ? this.#o.gateways.v4 : this.#o.gateways.v6;
    if (this.#o.mode === "tunnel") {
      const t = this.#o.tunnel;
      if (t === undefined) return [];
      return [{ family, cidr, dev: t.ifname, mtu: t.mtu, ...(src ? { src } : {}) }];
    }
    const via = nextHop(n, family);
    if (via === undefined) {
      if (!this.#noNextHop.has(cidr)) {
        this.#noNextHop.add(cidr);
        this.#o.log.warn("no route to a node's pod CIDR: the node has no underlay address", {
          node: n.name,
          cidr,
          family: `IPv${family}`,
        });
      }
      return [];
    }
    this.#noNextHop.delete(cidr);
    return [{ family, cidr, via }];
  }
}
