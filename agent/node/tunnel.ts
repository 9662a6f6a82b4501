/**
 * The node's tunnel device for the overlay routing mode: `cilia_vxlan`, a VXLAN device in
 * external (collect-metadata) mode, so one device reaches every node and the BPF program on it
 * picks the remote node and the VNI per packet (bpf/lib/tunnel.h). The device has no ARP and no
 * IPv6 link-local address (nothing but routed pod traffic leaves through it), strict reverse
 * path filtering off, and an MTU that leaves room for the encapsulation on the underlay device.
 * Idempotent; never removed by the agent (pods keep talking while it restarts). Runs in the
 * agent's own network namespace; it knows nothing of nodes or endpoints.
 */

import { execCommand } from "../sys/exec.ts";
import { linkIndex } from "../sys/links.ts";
import { attachOverlay, loadOverlay } from "../datapath/overlay_loader.ts";

export const TUNNEL_DEVICE = "cilia_vxlan";
/** Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers. */
export const VXLAN_OVERHEAD = 50;

export type TunnelProtocol = "vxlan" | "geneve";

export class NotSupportedError extends Error {
  override name = "NotSupportedError";
}

async function ip(args: string[], what: string): Promise<string> {
  const r = await execCommand(["ip", ...args]);
  if (r.code !== 0) throw new Error(`${what}: ip exited with status ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

/**
 * The underlay device and its MTU: `device` (--devices) when given, else the interface holding
 * `address` (the node IP), so --node-ip alone is enough.
 */
export async function underlayOf(
  address: string,
  opts: { device?: string | undefined } = {},
): Promise<{ ifname: string; mtu: number }> {
  const links = JSON.parse(await ip(["-j", "addr", "show"], "Cannot list addresses")) as {
    ifname: string;
    mtu: number;
    addr_info?: { local?: string }[];
  }[];
  if (opts.device !== undefined) {
    const l = links.find((l) => l.ifname === opts.device);
    if (l === undefined) {
      throw new Error(
        `Cannot find the underlay device: no interface is named "${opts.device}" (--devices)`,
      );
    }
    return { ifname: l.ifname, mtu: l.mtu };
  }
  const l = links.find((l) => (l.addr_info ?? []).some((a) => a.local === address));
  if (l === undefined) {
    throw new Error(
      `Cannot find the underlay device: no interface has the node IP "${address}" ` +
        `(name it with --devices)`,
    );
  }
  return { ifname: l.ifname, mtu: l.mtu };
}

/** Creates (or finds) the tunnel device and brings it up; returns its name and MTU. */
export async function setupTunnelDevice(
  opts: { protocol: TunnelProtocol; port: number; underlayMtu: number },
): Promise<{ ifname: string; mtu: number }> {
  await checkTunnelProtocol(opts.protocol);
  const mtu = opts.underlayMtu - VXLAN_OVERHEAD;
  const dev = TUNNEL_DEVICE;
  if ((await linkIndex(dev)) === undefined) {
    await ip(
      ["link", "add", dev, "type", "vxlan", "external", "dstport", String(opts.port)],
      `Cannot create "${dev}"`,
    );
  }
  await ip(["link", "set", dev, "addrgenmode", "none"], `Cannot configure "${dev}"`);
  // Before the device comes up: a device created while net.ipv6.conf.all.forwarding is 1 (the
  // agent sets it for IPv6 pods) joins ff02::2 (all routers) and, once up, sends an MLDv2 report
  // (90 bytes, from ::) into the tunnel whatever "multicast off" says; the overlay program drops
  // it with 160 (no tunnel endpoint). Leaving the group in MLDv2 mode queues a state-change
  // report that goes out once the device is up, so MLDv1 first (leaving a group never reported
  // sends nothing), then forwarding off. The per-device flag only sets host/router behaviour
  // (RA, ND, that membership); packets are forwarded by conf/all/forwarding, so IPv6 pod traffic
  // through the tunnel is unaffected (tests/e2e/multinode_test.ts sends some).
  await sysctl(`ipv6/conf/${dev}/force_mld_version`, "1");
  await sysctl(`ipv6/conf/${dev}/forwarding`, "0");
  await ip(
    // No multicast: the kernel would send its own MLD reports into the tunnel, with no tunnel
    // endpoint to go to (drop 160). Only routed pod traffic uses this device.
    ["link", "set", dev, "mtu", String(mtu), "arp", "off", "multicast", "off", "up"],
    `Cannot configure "${dev}"`,
  );
  await sysctl(`ipv4/conf/${dev}/rp_filter`, "0");
  return { ifname: dev, mtu };
}

/** Writes a sysctl of this network namespace when it differs (an ipv6/ key without IPv6: no-op). */
async function sysctl(key: string, value: string): Promise<void> {
  const file = `/proc/sys/net/${key}`;
  const now = await Deno.readTextFile(file).catch((err) => {
    if (key.startsWith("ipv6/") && err instanceof Deno.errors.NotFound) return value; // no IPv6
    throw err;
  });
  if (now.trim() !== value) await Deno.writeTextFile(file, value);
}

/** Throws NotSupportedError unless the overlay can use `protocol` (VXLAN only). */
export async function checkTunnelProtocol(protocol: TunnelProtocol): Promise<void> {
  if (protocol === "geneve") await refuseGeneve();
}

/** Geneve is not implemented; say whether the kernel could do it at all. */
async function refuseGeneve(): Promise<never> {
  const probe = "cilia_gnvprobe";
  const r = await execCommand(["ip", "link", "add", probe, "type", "geneve", "external"]);
  if (r.code === 0) await execCommand(["ip", "link", "del", probe]);
  const why = r.code === 0
    ? `cilia's overlay implements VXLAN only`
    : `this kernel has no Geneve support (the kernel module "geneve" is missing: ${r.stderr.trim()})`;
  throw new NotSupportedError(
    `Cannot use tunnel protocol "geneve": ${why}; use --tunnel-protocol vxlan or --routing-mode native`,
  );
}

/**
 * Tunnel mode with the kernel datapath: the device, then the overlay programs on it (they use
 * the node's pinned ipcache, so the lxc datapath must be open). Returns the device and its MTU
 * (underlay − 50: the pods' MTU too).
 */
export async function setupOverlay(opts: {
  protocol: TunnelProtocol;
  port: number;
  nodeIp: string;
  /** The underlay's MTU (--mtu); absent: that of the underlay device. */
  underlayMtu?: number | undefined;
  /** The underlay device (--devices); absent: the one holding the node IP. */
  device?: string | undefined;
  bpffsRoot: string;
  buildDir: string;
}): Promise<{ ifname: string; mtu: number }> {
  const underlayMtu = opts.underlayMtu ??
    (await underlayOf(opts.nodeIp, { device: opts.device })).mtu;
  const dev = await setupTunnelDevice({ ...opts, underlayMtu });
  const pins = await loadOverlay({ bpffsRoot: opts.bpffsRoot, buildDir: opts.buildDir });
  await attachOverlay(pins, dev.ifname);
  return dev;
}
