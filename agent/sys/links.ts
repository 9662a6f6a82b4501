// Reads network links with iproute2 (`ip -j link`), in the caller's network namespace or in a
// named one: what the datapath keys endpoints by (ifindex) and what node setup checks for. It
// changes nothing; netlink through `ip -j` is correct where /sys/class/net is not (nsenter keeps
// the host's /sys).
import { execCommand } from "./exec.ts";

/** The ifindex of a link, or undefined when it does not exist. */
export async function linkIndex(ifname: string, netns?: string): Promise<number | undefined> {
  const res = await execCommand(["ip", "-j", "link", "show", "dev", ifname], { netns });
  if (res.code !== 0) return undefined;
  const links = JSON.parse(res.stdout) as { ifindex?: number }[];
  return links[0]?.ifindex;
}

/** ifindex → name for every link of the namespace. */
export async function linkNames(netns?: string): Promise<Map<number, string>> {
  const res = await execCommand(["ip", "-j", "link", "show"], { netns });
  if (res.code !== 0) {
    throw new Error(`Cannot list links: ip exited with status ${res.code}: ${res.stderr.trim()}`);
  }
  const links = JSON.parse(res.stdout) as { ifindex: number; ifname: string }[];
  return new Map(links.map((l) => [l.ifindex, l.ifname]));
}

/** name → link-layer address (lower-case `aa:bb:…`) for every link of the namespace that has one. */
export async function linkMacs(netns?: string): Promise<Map<string, string>> {
  const res = await execCommand(["ip", "-j", "link", "show"], { netns });
  if (res.code !== 0) {
    throw new Error(`Cannot list links: ip exited with status ${res.code}: ${res.stderr.trim()}`);
  }
  const links = JSON.parse(res.stdout) as { ifname: string; address?: string }[];
  return new Map(links.flatMap((l) => l.address ? [[l.ifname, l.address.toLowerCase()]] : []));
}
