// Builds (cached), loads and attaches the programs of the node's underlay device (bpf/host.c:
// masquerade and NodePort, bpf/lib/nat.h and nodeport.h) and writes their one-entry config map.
// host.o shares the node's pinned ipcache, metrics, conntrack and load-balancing maps with the
// lxc programs (`bpftool prog loadall … map name … pinned …`) and pins its own two maps
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
  "cilia_metrics",
  "cilia_ct",
  "cilia_lb_services",
  "cilia_lb_slots",
  "cilia_lb_backends",
  "cilia_lb_revnat",
  "cilia_lb_affinity",
  "cilia_lb_affinity_match",
] as const;
/** Maps only host.o has. */
export const NAT_MAPS = ["cilia_snat", "cilia_nat_cfg"] as const;

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
      { name: "flags", offset: 20, kind: "u32" },
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

/** Writes the config entry the programs read (before they are attached). */
export async function writeNatConfig(bpffsRoot: string, s: NatSettings): Promise<void> {
  const path = `${bpffsRoot.replace(/\/+$/, "")}/maps/cilia_nat_cfg`;
  await new BpfTool().run(
    ["map", "update", "pinned", path, "key", "0", "0", "0", "0", "value", "hex"]
      .concat(hexArgs(encodeNatConfig(s)).split(" ")),
    `Cannot write the NAT config to "${path}"`,
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
