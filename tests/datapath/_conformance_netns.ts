// The network namespaces of the kernel conformance lab and the addresses they own: the node's
// own addresses (host), one address per reserved entity and a world address in the "outside"
// netns behind the node's default route, and pod netns whose veth host side lives in the node.
// Only topology: batched `ip` commands, no datapath, no policy.
import { RESERVED_BY_NAME } from "../../policy-wasm/mod.ts";
import type { Lab, Node } from "../helpers/netns.ts";

/** Where a peer lives: a pod of the pool, the outside netns, or the node itself (host). */
export type Place = { kind: "pod"; index: number } | { kind: "outside" } | { kind: "host" };

export interface Addrs {
  v4: string;
  v6: string;
}

/** The node's own addresses (ipcache: reserved:host, identity 1). */
export const HOST: Addrs = { v4: "169.254.1.1", v6: "fdff:ffff::1" };
/** An outside address that no ipcache entry covers unless a case names a covering prefix. */
export const WORLD: Addrs = { v4: "169.254.30.1", v6: "fdff:30::1" };
/** Reserved entities (other than host and world) by identity: an outside address each. */
export const entityAddrs = (id: number): Addrs => ({
  v4: `169.254.20.${id}`,
  v6: `fdff:20::${id}`,
});
/** Reserved identities that get an outside address: every one but host (1) and world (2). */
export const ENTITY_IDS = Object.values(RESERVED_BY_NAME).filter((id) => id > 2);
const GW = { node: "169.254.3.1", outside: "169.254.3.2" };

/** Routes a pod needs (again after its last IPv4 address was removed, which removes them). */
export const POD_ROUTES = [
  `route replace ${HOST.v4} dev eth0 scope link`,
  `route replace default via ${HOST.v4} dev eth0`,
  "route replace default via fe80::1 dev eth0",
];

/** Runs `ip -batch` lines in netns; with force, errors (e.g. deleting what is gone) pass. */
export async function ip(netns: string, lines: string[], force = false): Promise<void> {
  if (lines.length === 0) return;
  const child = new Deno.Command("ip", {
    args: [...(force ? ["-force"] : []), "-n", netns, "-batch", "-"],
    stdin: "piped",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(lines.join("\n") + "\n"));
  await w.close();
  const out = await child.output();
  if (!force && out.code !== 0) {
    throw new Error(
      `Command failed: "ip -n ${netns} -batch" exited with ${out.code}: ${
        new TextDecoder().decode(out.stderr).trim()
      }`,
    );
  }
}

export async function must(argv: string[]): Promise<void> {
  const out = await new Deno.Command(argv[0]!, { args: argv.slice(1), stderr: "piped" }).output();
  if (out.code !== 0) {
    const err = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`Command failed: "${argv.join(" ")}" exited with ${out.code}: ${err}`);
  }
}

export const plen = (a: string) => a.includes(":") ? 128 : 32;
export const addrAdd = (a: string) =>
  `addr add ${a}/${plen(a)} dev eth0${a.includes(":") ? " nodad" : ""}`;

const SYSCTLS = [
  "net.ipv6.conf.all.accept_dad=0",
  "net.ipv6.conf.default.accept_dad=0",
  "net.ipv4.conf.all.rp_filter=0",
  "net.ipv4.conf.default.rp_filter=0",
];

/** The outside netns, wired to the node (both default routes point at each other). */
export async function addOutside(lab: Lab, node: Node): Promise<string> {
  const outside = `${lab.prefix}out`, ext = `ext${lab.tag}`;
  await must(["ip", "netns", "add", outside]);
  await lab.run(outside, ["sysctl", "-qw", ...SYSCTLS]);
  await ip(node.netns, [
    `addr add ${HOST.v6}/128 dev lo`,
    `link add ${ext} type veth peer name eth0 netns ${outside}`,
    `addr add ${GW.node}/30 dev ${ext}`,
    `addr add fe80::1/64 dev ${ext} nodad`,
    `link set ${ext} up`,
    `route add default via ${GW.outside} dev ${ext}`,
    `route add default via fe80::2 dev ${ext}`,
  ]);
  const owned = [WORLD, ...ENTITY_IDS.map(entityAddrs)].flatMap((a) => [a.v4, a.v6]);
  await ip(outside, [
    "link set lo up",
    `addr add ${GW.outside}/30 dev eth0`,
    "addr add fe80::2/64 dev eth0 nodad",
    ...owned.map(addrAdd),
    "link set eth0 up",
    `route add default via ${GW.node} dev eth0`,
    "route add default via fe80::1 dev eth0",
  ]);
  return outside;
}

/** Pod netns number i without addresses (apply() gives them); returns its names and MAC. */
export async function addPodNetns(
  lab: Lab,
  node: Node,
  i: number,
): Promise<{ netns: string; ifname: string; mac: string }> {
  const netns = `${lab.prefix}p${i}`, ifname = `lxc${lab.tag}${i}`;
  await must(["ip", "netns", "add", netns]);
  await lab.run(netns, ["sysctl", "-qw", ...SYSCTLS]); // before the veth exists: DAD off on it
  await ip(node.netns, [
    `link add ${ifname} type veth peer name eth0 netns ${netns}`,
    `link set ${ifname} up`,
    `addr add fe80::1/64 dev ${ifname} nodad`,
  ]);
  await ip(netns, ["link set lo up", "link set eth0 up"]);
  const link = JSON.parse(await lab.run(netns, ["ip", "-j", "link", "show", "eth0"])) as {
    address: string;
  }[];
  return { netns, ifname, mac: link[0]!.address };
}
