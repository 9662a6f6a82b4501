/**
 * Network plumbing of an endpoint made by the CNI plugin, done by the agent in the node's network
 * namespace with iproute2: a veth pair made in the pod's network namespace (a path, entered with
 * `nsenter --net`) whose host side (lxc<hash>) is created in the node's, the pod's addresses and
 * routes (IPv4 default via the pod CIDR's gateway on cilia_host, IPv6 via fe80::1: a permanent
 * neighbour entry in the pod naming the host side's MAC), and the node's routes and, for IPv6, a
 * permanent neighbour entry to the pod. The host side has no IPv6 address at all (address
 * generation off) and its ff00::/8 route is deleted as it comes up: every IPv6 route in the
 * node's netns is walked by the kernel whenever any link comes up, and the links' ff00::/8 routes
 * for every multicast packet a pod sends, so an endpoint adds one route (its /128). The host side
 * stays down until `finishHostSide()`, so no packet flows before the datapath is attached. Knows
 * nothing of policy or endpoint records.
 */

import { createHash } from "node:crypto";
import { deleteMulticastLater } from "./_late_multicast.ts";
import { execCommand } from "../sys/exec.ts";
import {
  ESRCH,
  ifIndex,
  linkAddrGenModeNone,
  linkUp,
  neighReplacePermanent,
  routeDelMulticast,
  routeReplaceHost,
  rtnetlink,
} from "../sys/rtnetlink.ts";

/**
 * The pods' IPv6 gateway. No interface has it: each pod resolves it to its host side's MAC with a
 * permanent neighbour entry, so no neighbour discovery (which would need a link-local address on
 * the host side) ever asks for it.
 */
export const IPV6_GATEWAY = "fe80::1";

export class NetdevError extends Error {
  override name = "NetdevError";
}

export interface PodAddressing {
  ipv4?: string | undefined;
  ipv6?: string | undefined;
  /** The IPv4 pod CIDR's gateway (on cilia_host). */
  gateway4?: string | undefined;
  /** The IPv6 pod CIDR's gateway (on cilia_host): the source of node → pod IPv6 traffic. */
  gateway6?: string | undefined;
}

/**
 * "lxc" + 11 hex digits of sha256(containerId/ifname): stable, unique, 14 characters. Hashed
 * synchronously (node:crypto): WebCrypto's digest is a hop to Deno's thread pool.
 */
export function hostIfnameFor(containerId: string, ifname: string): Promise<string> {
  const hex = createHash("sha256").update(`${containerId}/${ifname}`).digest("hex");
  return Promise.resolve(`lxc${hex.slice(0, 11)}`);
}

const inPod = (netns: string, argv: string[]) => ["nsenter", `--net=${netns}`, "--", ...argv];

/** A random locally administered unicast MAC address (the agent chooses both ends' MACs). */
export function randomMac(): string {
  const b = crypto.getRandomValues(new Uint8Array(6));
  b[0] = (b[0]! & 0xfc) | 0x02;
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(":");
}

/** The IPv6 link-local address the kernel derives from `mac` (modified EUI-64, RFC 4291). */
export function linkLocalFor(mac: string): string {
  const b = mac.split(":").map((x) => parseInt(x, 16));
  if (b.length !== 6 || b.some((x) => !(x >= 0 && x <= 255))) {
    throw new NetdevError(`Cannot derive a link-local address from "${mac}": not a MAC address`);
  }
  const w = [(b[0]! ^ 2) << 8 | b[1]!, b[2]! << 8 | 0xff, 0xfe << 8 | b[3]!, b[4]! << 8 | b[5]!];
  return `fe80::${w.map((x) => x.toString(16)).join(":")}`;
}

/**
 * Makes the veth pair and configures the pod's end (addresses, routes, up) in one process: an
 * `ip -batch` in the pod's netns (`nsenter --net`) whose first line creates the pair there with
 * the host side made straight in the agent's netns (`peer … netns /proc/<agent>/ns/net`), down
 * and unconfigured (`finishHostSide`). No DAD on the pod's end: its addresses are ours alone and
 * must be usable at once. With IPv6 its link-local address (the one the kernel would derive from
 * the MAC) is added by the batch with `nodad` and address generation off; IPv4 only, DAD is off
 * in the netns's default while the batch runs (put back after). The IPv6 way touches no
 * /proc/sys/net file: the kernel's lookup of such a path walks one dentry per network namespace
 * that has used it (2 ms more per ADD on a node with 1,000 pods). It fails when `netns` is not a
 * network namespace, the pod already has `ifname`, or the host side exists (a leftover of an
 * interrupted ADD): `podTarget()` tells which. On failure whatever it made is deleted, and the
 * error names the batch line that failed.
 */
export async function createPodInterface(o: {
  hostIfname: string;
  netns: string;
  ifname: string;
  hostMac: string;
  podMac: string;
  /** Both ends' MTU (the pod's: underlay − 50 in tunnel mode); absent: the kernel's 1500. */
  mtu?: number | undefined;
  addressing: PodAddressing;
}): Promise<void> {
  const a = o.addressing, dev = o.ifname;
  const mtu = o.mtu !== undefined ? ` mtu ${o.mtu}` : "";
  const lines = [
    `link add ${dev} address ${o.podMac}${mtu} type veth peer name ${o.hostIfname} ` +
    `address ${o.hostMac}${mtu} netns /proc/${Deno.pid}/ns/net`,
    ...(a.ipv6
      ? [
        `link set ${dev} addrgenmode none`,
        `addr add ${linkLocalFor(o.podMac)}/64 dev ${dev} nodad`,
      ]
      : []),
    "link set lo up",
    ...(a.ipv4 ? [`addr add ${a.ipv4}/32 dev ${dev}`] : []),
    ...(a.ipv6 ? [`addr add ${a.ipv6}/128 dev ${dev} nodad`] : []),
    `link set ${dev} up`,
    ...(a.ipv4 && a.gateway4
      ? [
        `route add ${a.gateway4}/32 dev ${dev} scope link`,
        `route add default via ${a.gateway4} dev ${dev}`,
      ]
      : []),
    ...(a.ipv6
      ? [
        `neigh replace ${IPV6_GATEWAY} lladdr ${o.hostMac} dev ${dev} nud permanent`,
        `route add default via ${IPV6_GATEWAY} dev ${dev}`,
      ]
      : []),
  ];
  // `read` and `echo` are built into sh: the one child is ip. (dash's `read` of a /proc/sys
  // file returns 1 even when it read the value: test the value.)
  const script = "d=/proc/sys/net/ipv6/conf/default/accept_dad; " +
    'read -r was <"$d" 2>/dev/null; [ -n "$was" ] && echo 0 >"$d"; ip -batch -; s=$?; ' +
    '[ -n "$was" ] && echo "$was" >"$d"; exit $s';
  const argv = a.ipv6 ? ["ip", "-batch", "-"] : ["sh", "-c", script];
  const r = await execCommand(inPod(o.netns, argv), { stdin: lines.join("\n") + "\n" });
  if (r.code === 0) return;
  await deleteHostInterface(o.hostIfname).catch(() => {});
  const err = r.stderr.trim();
  const line = Number(/Command failed -:(\d+)/.exec(err)?.[1] ?? 0);
  const what = line === 1
    ? `Cannot create the veth pair "${o.hostIfname}"/"${dev}" in "${o.netns}"`
    : line > 1
    ? `Cannot configure "${dev}" in "${o.netns}" (${lines[line - 1]})`
    : `Cannot enter "${o.netns}"`;
  throw new NetdevError(`${what}: exited with status ${r.code}: ${err}`);
}

/**
 * Brings the host side up without IPv6 addresses and routes to the pod (IPv6: with a permanent
 * neighbour entry for the pod's address, as the host side cannot ask for it): up to six
 * rtnetlink requests made in process (`rtnetlink.ts`), no `ip` process; the kernel's part, which
 * grows with the node's IPv6 routes, runs off the event loop's thread. The multicast route the
 * kernel adds when the link comes up is deleted in the same batch: with it, each multicast
 * packet from any pod (router solicitations, MLD reports) made the kernel walk every endpoint's
 * such route; without it, nothing here routes or answers a pod's multicast, which nothing needs
 * (the pod's gateway and the host side's neighbour entries are permanent). When the kernel makes
 * that route only later (the link was not ready as it came up), it is deleted then
 * (`_late_multicast.ts`).
 */
export async function finishHostSide(
  o: { hostIfname: string; podMac: string; addressing: PodAddressing },
): Promise<void> {
  const a = o.addressing, dev = o.hostIfname;
  const index = ifIndex(dev);
  if (index === undefined) throw new NetdevError(`Cannot configure "${dev}": no such interface`);
  try {
    const [ipv6, , multicast] = await rtnetlink([
      linkAddrGenModeNone(index, dev),
      linkUp(index, dev),
      routeDelMulticast(index, dev),
      ...(a.ipv4 ? [routeReplaceHost(index, { dst: a.ipv4, src: a.gateway4, name: dev })] : []),
      ...(a.ipv6
        ? [
          routeReplaceHost(index, { dst: a.ipv6, src: a.gateway6, name: dev }),
          neighReplacePermanent(index, { ip: a.ipv6, mac: o.podMac, name: dev }),
        ]
        : []),
    ]);
    // The link has IPv6 (its mode was set) but no such route yet: the kernel makes it later.
    if (ipv6 === 0 && multicast === ESRCH) deleteMulticastLater(index, dev);
  } catch (err) {
    throw new NetdevError(`Cannot configure "${dev}": ${(err as Error).message}`, { cause: err });
  }
}

/** Deletes the host side (and with it the pod's end); false when it did not exist. */
export async function deleteHostInterface(hostIfname: string): Promise<boolean> {
  const r = await execCommand(["ip", "link", "del", "dev", hostIfname]);
  if (r.code === 0) return true;
  if (/Cannot find device|does not exist/.test(r.stderr)) return false;
  throw new NetdevError(`Cannot delete "${hostIfname}": ${r.stderr.trim()}`);
}

export interface LinkState {
  up: boolean;
  mac: string;
  mtu: number;
  addresses: string[];
}

function linkState(json: string): LinkState | undefined {
  const links = JSON.parse(json) as {
    flags?: string[];
    address?: string;
    mtu?: number;
    addr_info?: { local: string; scope?: string }[];
  }[];
  const l = links[0];
  if (!l) return undefined;
  return {
    up: (l.flags ?? []).includes("UP"),
    mac: l.address ?? "",
    mtu: l.mtu ?? 0,
    addresses: (l.addr_info ?? []).filter((x) => x.scope !== "link").map((x) => x.local),
  };
}

/** The host side's state, or undefined when it does not exist. */
export async function hostInterface(hostIfname: string): Promise<LinkState | undefined> {
  const r = await execCommand(["ip", "-j", "addr", "show", "dev", hostIfname]);
  return r.code === 0 ? linkState(r.stdout) : undefined;
}

/** The pod interface's state, or undefined when the netns or the interface does not exist. */
export async function podInterface(netns: string, ifname: string): Promise<LinkState | undefined> {
  if (!(await netnsExists(netns))) return undefined;
  const r = await execCommand(inPod(netns, ["ip", "-j", "addr", "show", "dev", ifname]));
  return r.code === 0 ? linkState(r.stdout) : undefined;
}

/**
 * Where a new pod interface would go, in one process: "not-netns" when `netns` cannot be entered
 * as a network namespace, "taken" when `ifname` exists in it, else "free".
 */
export async function podTarget(
  netns: string,
  ifname: string,
): Promise<"not-netns" | "taken" | "free"> {
  const r = await execCommand(inPod(netns, ["ip", "-j", "link", "show", "dev", ifname]));
  if (r.code === 0) return "taken";
  return /^nsenter:/m.test(r.stderr) ? "not-netns" : "free";
}

/** Whether `netns` is a network namespace one can enter (not a regular file or directory). */
export async function isNetns(netns: string): Promise<boolean> {
  return (await execCommand(inPod(netns, ["true"]))).code === 0;
}

export function netnsExists(netns: string): Promise<boolean> {
  // A stat is microseconds: synchronous, it spares the event loop a hop to Deno's thread pool.
  try {
    Deno.statSync(netns);
    return Promise.resolve(true);
  } catch {
    return Promise.resolve(false);
  }
}
