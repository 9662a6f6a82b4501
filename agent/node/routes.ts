/**
 * The node's routes to other nodes' pod CIDRs, tagged with cilia's own route protocol number so
 * that the agent finds (and removes) exactly its own after a restart: in tunnel mode each CIDR
 * goes to the tunnel device (source: this node's gateway, MTU of the tunnel), in native mode via
 * the other node's IP. `apply()` takes the whole desired set and changes only the difference.
 * It decides nothing about which nodes exist (discovery.ts does).
 */

import { execCommand } from "../sys/exec.ts";

/** The `proto` of cilia's routes (iproute2 prints it as a number). */
export const ROUTE_PROTO = 200;

export interface RouteSpec {
  family: 4 | 6;
  cidr: string;
  /** Next hop (native routing). */
  via?: string;
  /** Output device (tunnel mode). */
  dev?: string;
  src?: string;
  mtu?: number;
}

function argsOf(r: RouteSpec): string[] {
  return [
    r.cidr,
    ...(r.via ? ["via", r.via] : []),
    ...(r.dev ? ["dev", r.dev] : []),
    ...(r.src ? ["src", r.src] : []),
    ...(r.mtu ? ["mtu", String(r.mtu)] : []),
    "proto",
    String(ROUTE_PROTO),
  ];
}

const keyOf = (r: RouteSpec) => JSON.stringify(argsOf(r));

export class NodeRoutes {
  /** cidr → the route as written. */
  #installed = new Map<string, RouteSpec>();
  #loaded = false;
  /** The last `desired` applied in full: the same array again changes nothing. */
  #applied: readonly RouteSpec[] | undefined;

  /** The routes written so far (for status). */
  list(): RouteSpec[] {
    return [...this.#installed.values()];
  }

  /**
   * Makes cilia's routes equal `desired`: replaces what changed, deletes what is not wanted.
   * Passing the array last applied without error again returns at once (discovery.ts passes the
   * same array until a node changes).
   */
  async apply(desired: readonly RouteSpec[]): Promise<void> {
    if (desired === this.#applied) return;
    this.#applied = undefined;
    if (!this.#loaded) {
      for (const r of await ownRoutes()) this.#installed.set(r.cidr, r);
      this.#loaded = true;
    }
    const want = new Map(desired.map((r) => [r.cidr, r]));
    const errors: string[] = [];
    for (const [cidr, r] of this.#installed) {
      if (want.has(cidr)) continue;
      const res = await execCommand([
        "ip",
        `-${r.family}`,
        "route",
        "del",
        cidr,
        "proto",
        String(ROUTE_PROTO),
      ]);
      if (res.code === 0 || /No such process/.test(res.stderr)) this.#installed.delete(cidr);
      else errors.push(`"${cidr}": ${res.stderr.trim()}`);
    }
    for (const r of want.values()) {
      const old = this.#installed.get(r.cidr);
      if (old && keyOf(old) === keyOf(r)) continue;
      const res = await execCommand(["ip", `-${r.family}`, "route", "replace", ...argsOf(r)]);
      if (res.code === 0) this.#installed.set(r.cidr, r);
      else errors.push(`"${r.cidr}": ${res.stderr.trim()}`);
    }
    if (errors.length > 0) {
      throw new Error(`Cannot update the routes to other nodes: ${errors.join("; ")}`);
    }
    this.#applied = desired;
  }
}

/** cilia's routes as the kernel has them (from an earlier run). */
async function ownRoutes(): Promise<RouteSpec[]> {
  const out: RouteSpec[] = [];
  for (const family of [4, 6] as const) {
    const r = await execCommand([
      "ip",
      `-${family}`,
      "-j",
      "route",
      "show",
      "proto",
      String(ROUTE_PROTO),
    ]);
    if (r.code !== 0 || r.stdout.trim() === "") continue;
    for (const x of JSON.parse(r.stdout) as { dst: string }[]) {
      out.push({ family, cidr: x.dst });
    }
  }
  return out;
}
