// Builds (cached), loads and attaches the programs of the node's underlay device (bpf/host.c:
// masquerade and NodePort, bpf/lib/nat.h and nodeport.h) and writes their one-entry config map.
// host.o shares the node's pinned ipcache, endpoints, metrics, conntrack and load-balancing maps
// with the lxc programs (`bpftool prog loadall … map name … pinned …`) and pins its own two maps
// (cilia_snat, cilia_nat_cfg) next to them under <root>/maps, reused across restarts so
// translated connections survive. Programs: <root>/netdev/<object hash>/{cil_from_netdev,
// cil_to_netdev}; older hashes are removed once the device uses the new ones. It neither picks
// the device nor decides the settings (node/nat.ts does).
import { BpfTool, hexArgs } from "./bpftool.ts";
import { buildObject } from "./build.ts";
import { encode, type Layout } from "./codecs.ts";
import { parsePrefix } from "./_addr.ts";
import { execCommand } from "../sys/exec.ts";

export const PROG_FROM_NETDEV = "cil_from_netdev";
export const PROG_TO_NETDEV = "cil_to_netdev";
/** Maps host.o shares with lxc.o (pinned by the lxc loader first). */
const SHARED_MAPS = [
  "cilia_ipcache",
  "cilia_endpoints", // the local endpoints' veths, native delivery (bpf/lib/nodeport.h, 7.)
  "cilia_metrics",
  "cilia_ct",
  "cilia_lb_services",
  "cilia_lb_slots",
  "cilia_lb_backends",
  "cilia_lb_revnat",
  "cilia_lb_affinity",
  "cilia_lb_affinity_match",
] as const;
/** Maps only host.o has (the IPv6 pair: bpf/lib/nodeport6.h). */
export const NAT_MAPS = ["cilia_snat", "cilia_nat_cfg", "cilia_snat6", "cilia_nat6_cfg"] as const;

/** struct nat_cfg, struct nat_key and struct nat_entry (bpf/lib/nat.h); checked against BTF. */
export const NAT_LAYOUTS = {
  natCfg: {
    struct: "nat_cfg",
    size: 24,
    fields: [
      { name: "node_ip", offset: 0, kind: "bytes", len: 4 },
      { name: "pod_net", offset: 4, kind: "bytes", len: 4 },
      { name: "pod_mask", offset: 8, kind: "bytes", len: 4 },
      { name: "native_net", offset: 12, kind: "bytes", len: 4 },
      { name: "native_mask", offset: 16, kind: "bytes", len: 4 },
      { name: "flags", offset: 20, kind: "u16" },
      { name: "tunnel_port", offset: 22, kind: "be16" },
    ],
  },
  natKey: {
    struct: "nat_key",
    size: 16,
    fields: [
      { name: "saddr", offset: 0, kind: "bytes", len: 4 },
      { name: "daddr", offset: 4, kind: "bytes", len: 4 },
      { name: "sport", offset: 8, kind: "be16" },
      { name: "dport", offset: 10, kind: "be16" },
      { name: "proto", offset: 12, kind: "u8" },
      { name: "dir", offset: 13, kind: "u8" },
      { name: "pad", offset: 14, kind: "u16" },
    ],
  },
  natEntry: {
    struct: "nat_entry",
    size: 20,
    fields: [
      { name: "daddr", offset: 0, kind: "bytes", len: 4 },
      { name: "saddr", offset: 4, kind: "bytes", len: 4 },
      { name: "dport", offset: 8, kind: "be16" },
      { name: "sport", offset: 10, kind: "be16" },
      { name: "backend_id", offset: 12, kind: "u32" },
      { name: "kind", offset: 16, kind: "u8" },
      { name: "flags", offset: 17, kind: "u8" },
      { name: "pad", offset: 18, kind: "u16" },
    ],
  },
  nat6Cfg: {
    struct: "nat6_cfg",
    size: 36,
    fields: [
      { name: "node_ip", offset: 0, kind: "bytes", len: 16 },
      { name: "pod_net", offset: 16, kind: "bytes", len: 16 },
      { name: "pod_prefix", offset: 32, kind: "u8" },
      { name: "pad", offset: 33, kind: "bytes", len: 3 },
    ],
  },
  nat6Key: {
    struct: "nat6_key",
    size: 40,
    fields: [
      { name: "saddr", offset: 0, kind: "bytes", len: 16 },
      { name: "daddr", offset: 16, kind: "bytes", len: 16 },
      { name: "sport", offset: 32, kind: "be16" },
      { name: "dport", offset: 34, kind: "be16" },
      { name: "proto", offset: 36, kind: "u8" },
      { name: "dir", offset: 37, kind: "u8" },
      { name: "pad", offset: 38, kind: "u16" },
    ],
  },
  nat6Entry: {
    struct: "nat6_entry",
    size: 44,
    fields: [
      { name: "daddr", offset: 0, kind: "bytes", len: 16 },
      { name: "saddr", offset: 16, kind: "bytes", len: 16 },
      { name: "dport", offset: 32, kind: "be16" },
      { name: "sport", offset: 34, kind: "be16" },
      { name: "backend_id", offset: 36, kind: "u32" },
      { name: "kind", offset: 40, kind: "u8" },
      { name: "flags", offset: 41, kind: "u8" },
      { name: "pad", offset: 42, kind: "u16" },
    ],
  },
} as const satisfies Record<string, Layout>;

export const NAT_CFG_F_MASQUERADE = 1 << 0;
export const NAT_CFG_F_NODEPORT = 1 << 1;
export const NAT_CFG_F_DSR = 1 << 2;
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

function netAndMask(cidr: string | undefined, what: string): [Uint8Array, Uint8Array] {
  if (cidr === undefined) return [new Uint8Array(4), new Uint8Array(4)];
  const p = parsePrefix(cidr);
  if (p.family !== 4) throw new RangeError(`Invalid ${what} "${cidr}": expected IPv4`);
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
  const v6 = (text: string, what: string) => {
    const p = parsePrefix(text);
    if (p.family !== 6) throw new RangeError(`Invalid ${what} "${text}": expected IPv6`);
    return p;
  };
  const node = s.nodeIp6 === undefined ? undefined : v6(s.nodeIp6, "node IPv6 address");
  const pods = s.podCidrV6 === undefined || node === undefined
    ? undefined
    : v6(s.podCidrV6, "IPv6 pod CIDR");
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
