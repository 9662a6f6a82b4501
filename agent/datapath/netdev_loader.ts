// Builds (cached), loads and attaches the programs of the node's underlay device (bpf/host.c:
// masquerade and NodePort, bpf/lib/nat.h and nodeport.h) and writes their one-entry config map.
// host.o shares the node's pinned ipcache, endpoints, metrics, conntrack, policy, events and
// load-balancing maps with the lxc programs (`bpftool prog loadall … map name … pinned …`) and
// pins its own two maps (cilia_snat, cilia_nat_cfg) next to them under <root>/maps, reused across
// restarts so translated connections survive. Programs: <root>/netdev/<object hash>/
// {cil_from_netdev, cil_to_netdev, cil_to_container_peer, cilia_peer_calls} (the last two: a local
// endpoint's ingress enforcement at the underlay, bpf/lib/peer.h 4.); older hashes are removed
// once the device uses the new ones. It neither picks
// the device nor decides the settings (node/nat.ts does).
import { BpfTool, bytesFromHex, hexArgs, MapDumpSchema } from "./bpftool.ts";
import { LB_MAPS } from "./loader.ts";
import { buildObject } from "./build.ts";
import { encode, type Layout, layout } from "./codecs.ts";
import { parsePrefix } from "./_addr.ts";
import { execCommand } from "../sys/exec.ts";

export const PROG_FROM_NETDEV = "cil_from_netdev";
export const PROG_TO_NETDEV = "cil_to_netdev";
/** Maps host.o shares with lxc.o (pinned by the lxc loader first). */
const SHARED_MAPS = [
  "cilia_ipcache",
  "cilia_endpoints", // the local endpoints' veths, native delivery (bpf/lib/nodeport.h, 7.)
  "cilia_lxc_ipv4", // their veths and MACs by IPv4 address, the same delivery (bpf/lib/tunnel.h, 5.)
  "cilia_metrics",
  "cilia_ct",
  ...LB_MAPS,
  // VXLAN received in BPF leaves replies to the proxy's upstream legs to the tunnel device
  // (bpf/lib/vxlan.h, 3.)
  "cilia_proxy_cfg",
  "cilia_proxy_orig",
  "cilia_proxy_nat",
  // a local endpoint's ingress enforcement at the underlay (cil_to_container_peer, bpf/lib/peer.h 4.)
  "cilia_policy",
  "cilia_events",
  "cilia_events_lost",
] as const;
/** host.o's own tail-call array (bpf/lib/peer.h, 4.), pinned with its programs. */
const PEER_CALLS_MAP = "cilia_peer_calls";
/** Maps only host.o has (the IPv6 pair: bpf/lib/nodeport6.h). */
export const NAT_MAPS = ["cilia_snat", "cilia_nat_cfg", "cilia_snat6", "cilia_nat6_cfg"] as const;

/**
 * struct nat_key and struct nat_entry (bpf/lib/nat.h) and their IPv6 twins nat6_key and nat6_entry
 * (bpf/lib/nodeport6.h): the same members, addresses of A bytes (4 or 16).
 */
const natKey = (struct: string, a: number) =>
  layout(struct, 2 * a + 8, [
    ["saddr", 0, "bytes", a],
    ["daddr", a, "bytes", a],
    ["sport", 2 * a, "be16"],
    ["dport", 2 * a + 2, "be16"],
    ["proto", 2 * a + 4, "u8"],
    ["dir", 2 * a + 5, "u8"],
    ["pad", 2 * a + 6, "u16"],
  ]);
const natEntry = (struct: string, a: number) =>
  layout(struct, 2 * a + 12, [
    ["daddr", 0, "bytes", a],
    ["saddr", a, "bytes", a],
    ["dport", 2 * a, "be16"],
    ["sport", 2 * a + 2, "be16"],
    ["backend_id", 2 * a + 4, "u32"],
    ["kind", 2 * a + 8, "u8"],
    ["flags", 2 * a + 9, "u8"],
    ["pad", 2 * a + 10, "u16"],
  ]);

/** The NAT maps' structs; checked against BTF (tests/datapath/nat_codecs_test.ts). */
export const NAT_LAYOUTS = {
  natCfg: layout("nat_cfg", 24, [
    ["node_ip", 0, "bytes", 4],
    ["pod_net", 4, "bytes", 4],
    ["pod_mask", 8, "bytes", 4],
    ["native_net", 12, "bytes", 4],
    ["native_mask", 16, "bytes", 4],
    ["flags", 20, "u16"],
    ["tunnel_port", 22, "be16"],
  ]),
  natKey: natKey("nat_key", 4),
  natEntry: natEntry("nat_entry", 4),
  nat6Cfg: layout("nat6_cfg", 36, [
    ["node_ip", 0, "bytes", 16],
    ["pod_net", 16, "bytes", 16],
    ["pod_prefix", 32, "u8"],
    ["pad", 33, "bytes", 3],
  ]),
  nat6Key: natKey("nat6_key", 16),
  nat6Entry: natEntry("nat6_entry", 16),
} satisfies Record<string, Layout>;

export const NAT_CFG_F_MASQUERADE = 1 << 0;
export const NAT_CFG_F_NODEPORT = 1 << 1;
export const NAT_CFG_F_DSR = 1 << 2;
/** VXLAN only through the tunnel device, never written or read by BPF (bpf/lib/vxlan.h, 2.). */
export const NAT_CFG_F_TUNNEL_NETDEV = 1 << 3;
/** NAT_K_* of bpf/lib/nat.h, for listings. */
export const NAT_KINDS: Record<number, string> = {
  1: "masquerade",
  2: "host",
  3: "nodeport",
  4: "nodeport-reply",
  5: "nodeport-local-reply",
  6: "pass",
};

export interface NatSettings {
  nodeIp: string;
  /** The node's IPv4 pod CIDR: the sources that are masqueraded. */
  podCidr?: string;
  /** Destinations inside it are never masqueraded (--ipv4-native-routing-cidr). */
  nativeRoutingCidr?: string;
  masquerade: boolean;
  nodePort: boolean;
  /** --node-port-mode dsr (bpf/lib/dsr.h). */
  dsr?: boolean;
  /** Tunnel mode: the overlay's UDP port, whose packets the programs pass untouched. */
  tunnelPort?: number;
  /** The node's IPv6 underlay address: IPv6 NodePort/LoadBalancer (none: IPv6 passes). */
  nodeIp6?: string;
  /** The node's IPv6 pod CIDR: backends inside it are local (bpf/lib/nodeport6.h, 2.). */
  podCidrV6?: string;
}

export interface NetdevPins {
  dir: string;
  fromNetdev: string;
  toNetdev: string;
}

/** text as an address or prefix of family, or a RangeError naming what. */
function prefixOf(text: string, family: 4 | 6, what: string) {
  const p = parsePrefix(text);
  if (p.family !== family) throw new RangeError(`Invalid ${what} "${text}": expected IPv${family}`);
  return p;
}

function netAndMask(cidr: string | undefined, what: string): [Uint8Array, Uint8Array] {
  if (cidr === undefined) return [new Uint8Array(4), new Uint8Array(4)];
  const p = prefixOf(cidr, 4, what);
  const mask = new Uint8Array(4);
  for (let bit = 0; bit < p.prefixLen; bit++) mask[bit >> 3]! |= 0x80 >> (bit & 7);
  return [p.addr.slice(0, 4), mask];
}

/** The bytes of struct nat_cfg for these settings. */
export function encodeNatConfig(s: NatSettings): Uint8Array {
  const [podNet, podMask] = netAndMask(s.podCidr, "pod CIDR");
  const [nativeNet, nativeMask] = netAndMask(s.nativeRoutingCidr, "native routing CIDR");
  return encode(NAT_LAYOUTS.natCfg, {
    node_ip: netAndMask(`${s.nodeIp}/32`, "node IP")[0],
    pod_net: podNet,
    pod_mask: podMask,
    native_net: nativeNet,
    native_mask: nativeMask,
    flags: (s.masquerade ? NAT_CFG_F_MASQUERADE : 0) | (s.nodePort ? NAT_CFG_F_NODEPORT : 0) |
      (s.dsr ? NAT_CFG_F_DSR : 0),
    tunnel_port: s.tunnelPort ?? 0,
  });
}

/** The bytes of struct nat6_cfg (bpf/lib/nodeport6.h): all zero without an IPv6 node address. */
export function encodeNat6Config(s: Pick<NatSettings, "nodeIp6" | "podCidrV6">): Uint8Array {
  const node = s.nodeIp6 === undefined ? undefined : prefixOf(s.nodeIp6, 6, "node IPv6 address");
  const pods = s.podCidrV6 === undefined || node === undefined
    ? undefined
    : prefixOf(s.podCidrV6, 6, "IPv6 pod CIDR");
  return encode(NAT_LAYOUTS.nat6Cfg, {
    node_ip: node?.addr ?? new Uint8Array(16),
    pod_net: pods?.addr ?? new Uint8Array(16),
    pod_prefix: pods?.prefixLen ?? 0,
    pad: new Uint8Array(3),
  });
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/** Loads host.o unless its programs are pinned already; returns where they are. */
export async function loadNetdev(
  opts: { bpffsRoot: string; buildDir: string; sourceDir?: string },
): Promise<NetdevPins> {
  const root = opts.bpffsRoot.replace(/\/+$/, "");
  const obj = await buildObject({
    buildDir: opts.buildDir,
    name: "host",
    ...(opts.sourceDir ? { sourceDir: opts.sourceDir } : {}),
  });
  const dir = `${root}/netdev/${obj.hash}`;
  const pins = {
    dir,
    fromNetdev: `${dir}/${PROG_FROM_NETDEV}`,
    toNetdev: `${dir}/${PROG_TO_NETDEV}`,
  };
  const own = await Promise.all(NAT_MAPS.map((m) => exists(`${root}/maps/${m}`)));
  if ((await exists(pins.fromNetdev)) && (await exists(pins.toNetdev)) && own.every((x) => x)) {
    return pins;
  }
  await Deno.mkdir(`${root}/netdev`, { recursive: true });
  const tag = crypto.randomUUID().slice(0, 8);
  const staging = `${root}/netdev/staging_${tag}`;
  const stagingMaps = `${root}/netdev/maps_${tag}`;
  const args = ["prog", "loadall", obj.path, staging];
  for (const m of [...SHARED_MAPS, ...NAT_MAPS]) {
    if (await exists(`${root}/maps/${m}`)) {
      args.push("map", "name", m, "pinned", `${root}/maps/${m}`);
    }
  }
  args.push("pinmaps", stagingMaps);
  try {
    await new BpfTool().run(args, `Cannot load "${obj.path}"`);
    for (const m of NAT_MAPS) {
      if (!(await exists(`${root}/maps/${m}`))) {
        await Deno.rename(`${stagingMaps}/${m}`, `${root}/maps/${m}`);
      }
    }
    // The kernel empties a program array once nothing holds it open: it stays pinned with the
    // programs, so the underlay's tail call into the endpoint's ingress enforcement can run.
    const calls = `${stagingMaps}/${PEER_CALLS_MAP}`;
    if (await exists(calls)) await Deno.rename(calls, `${staging}/${PEER_CALLS_MAP}`);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.rename(staging, dir);
  } finally {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    await Deno.remove(stagingMaps, { recursive: true }).catch(() => {});
  }
  return pins;
}

/** Writes the config entries the programs read (before they are attached): IPv4, then IPv6. */
export async function writeNatConfig(bpffsRoot: string, s: NatSettings): Promise<void> {
  const maps = `${bpffsRoot.replace(/\/+$/, "")}/maps`;
  for (
    const [map, value] of [
      ["cilia_nat_cfg", encodeNatConfig(s)],
      ["cilia_nat6_cfg", encodeNat6Config(s)],
    ] as const
  ) {
    const path = `${maps}/${map}`;
    await new BpfTool().run(
      ["map", "update", "pinned", path, "key", "0", "0", "0", "0", "value", "hex"]
        .concat(hexArgs(value).split(" ")),
      `Cannot write the NAT config to "${path}"`,
    );
  }
}

/**
 * Sets or clears NAT_CFG_F_TUNNEL_NETDEV in the written config: with it, VXLAN goes through the
 * tunnel device only (the path before bpf/lib/vxlan.h); for A/B benchmarks and interop tests.
 */
export async function setTunnelNetdevOnly(bpffsRoot: string, on: boolean): Promise<void> {
  const path = `${bpffsRoot.replace(/\/+$/, "")}/maps/cilia_nat_cfg`;
  const what = `Cannot update the NAT config at "${path}"`;
  const tool = new BpfTool();
  const [entry] = await tool.json(["map", "dump", "pinned", path], MapDumpSchema, what);
  if (entry?.value === undefined) throw new Error(`${what}: the map has no entry 0`);
  const value = bytesFromHex(entry.value);
  const view = new DataView(value.buffer);
  const flags = view.getUint16(20, true);
  view.setUint16(20, on ? flags | NAT_CFG_F_TUNNEL_NETDEV : flags & ~NAT_CFG_F_TUNNEL_NETDEV, true);
  await tool.run(
    ["map", "update", "pinned", path, "key", "0", "0", "0", "0", "value", "hex"]
      .concat(hexArgs(value).split(" ")),
    what,
  );
}

/** Attaches (atomically replaces) both programs on the underlay device; drops older objects. */
export async function attachNetdev(pins: NetdevPins, ifname: string): Promise<void> {
  const what = `Cannot attach the underlay programs to "${ifname}"`;
  const run = async (argv: string[]) => {
    const r = await execCommand(argv);
    if (r.code !== 0) {
      throw new Error(`${what}: ${argv[0]} exited with status ${r.code}: ${r.stderr.trim()}`);
    }
  };
  await run(["tc", "qdisc", "replace", "dev", ifname, "clsact"]);
  for (const [hook, prog] of [["ingress", pins.fromNetdev], ["egress", pins.toNetdev]]) {
    await run(
      ["tc", "filter", "replace", "dev", ifname, hook!, "protocol", "all", "pref", "1"]
        .concat(["handle", "1", "bpf", "direct-action", "pinned", prog!]),
    );
  }
  const parent = pins.dir.slice(0, pins.dir.lastIndexOf("/"));
  for await (const e of Deno.readDir(parent)) {
    if (`${parent}/${e.name}` !== pins.dir) {
      await Deno.remove(`${parent}/${e.name}`, { recursive: true }).catch(() => {});
    }
  }
}
