// Builds (cached), loads and attaches the overlay programs (bpf/overlay.c) of the node's tunnel
// device. They share the node's pinned ipcache, endpoints, metrics and L7 proxy maps with the lxc
// programs (`bpftool prog loadall … map name … pinned …`), so the agent's one ipcache write path
// serves both, decapsulated packets go straight to local endpoints' veths, and the proxy's legs
// to other nodes carry the addresses they stand for.
// Layout: <root>/overlay/<object hash>/{cil_to_overlay,cil_from_overlay}; older hashes are
// removed once the device uses the new ones. It neither creates the device nor writes maps.
import { BpfTool } from "./bpftool.ts";
import { buildObject } from "./build.ts";
import { execCommand } from "../sys/exec.ts";

export const PROG_TO_OVERLAY = "cil_to_overlay";
export const PROG_FROM_OVERLAY = "cil_from_overlay";
/** The pinned maps overlay.o uses (it defines no others). */
const SHARED_MAPS = [
  "cilia_ipcache",
  "cilia_endpoints", // which devices are local endpoints' veths (bpf/lib/tunnel.h, 5.)
  "cilia_lxc_ipv4", // their veths and MACs by IPv4 address (bpf/lib/tunnel.h, 5.)
  "cilia_metrics",
  "cilia_proxy_cfg",
  "cilia_proxy_orig",
  "cilia_proxy_nat",
] as const;
/**
 * host.o's NAT maps (netdev_loader.ts), shared when pinned already (load host.o first): a local
 * NodePort backend's replies into the tunnel get their frontend back (bpf/lib/nat.h).
 */
const NAT_MAPS = ["cilia_snat", "cilia_nat_cfg"] as const;

export interface OverlayPins {
  dir: string;
  toOverlay: string;
  fromOverlay: string;
}

export interface OverlayOptions {
  /** The bpffs root of the lxc datapath (its maps must be pinned already). */
  bpffsRoot: string;
  buildDir: string;
  sourceDir?: string;
  netns?: string;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

async function run(argv: string[], netns: string | undefined, what: string): Promise<void> {
  const res = await execCommand(argv, { netns });
  if (res.code !== 0) {
    throw new Error(`${what}: ${argv[0]} exited with status ${res.code}: ${res.stderr.trim()}`);
  }
}

/** Loads overlay.o unless its programs are pinned already; returns where they are. */
export async function loadOverlay(opts: OverlayOptions): Promise<OverlayPins> {
  const root = opts.bpffsRoot.replace(/\/+$/, "");
  const obj = await buildObject({
    buildDir: opts.buildDir,
    name: "overlay",
    ...(opts.sourceDir ? { sourceDir: opts.sourceDir } : {}),
  });
  const dir = `${root}/overlay/${obj.hash}`;
  const pins = {
    dir,
    toOverlay: `${dir}/${PROG_TO_OVERLAY}`,
    fromOverlay: `${dir}/${PROG_FROM_OVERLAY}`,
  };
  if ((await exists(pins.toOverlay)) && (await exists(pins.fromOverlay))) return pins;
  await Deno.mkdir(`${root}/overlay`, { recursive: true });
  const staging = `${root}/overlay/staging_${crypto.randomUUID().slice(0, 8)}`;
  const args = ["prog", "loadall", obj.path, staging];
  for (const m of SHARED_MAPS) args.push("map", "name", m, "pinned", `${root}/maps/${m}`);
  for (const m of NAT_MAPS) {
    if (await exists(`${root}/maps/${m}`)) {
      args.push("map", "name", m, "pinned", `${root}/maps/${m}`);
    }
  }
  try {
    await new BpfTool({ netns: opts.netns }).run(args, `Cannot load "${obj.path}"`);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.rename(staging, dir);
  } finally {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
  }
  return pins;
}

/** Attaches (atomically replaces) both programs on the tunnel device; drops older objects. */
export async function attachOverlay(
  pins: OverlayPins,
  ifname: string,
  netns?: string,
): Promise<void> {
  const what = `Cannot attach the overlay programs to "${ifname}"`;
  await run(["tc", "qdisc", "replace", "dev", ifname, "clsact"], netns, what);
  for (const [hook, prog] of [["egress", pins.toOverlay], ["ingress", pins.fromOverlay]]) {
    await run(
      ["tc", "filter", "replace", "dev", ifname, hook!, "protocol", "all", "pref", "1"]
        .concat(["handle", "1", "bpf", "direct-action", "pinned", prog!]),
      netns,
      what,
    );
  }
  const parent = pins.dir.slice(0, pins.dir.lastIndexOf("/"));
  for await (const e of Deno.readDir(parent)) {
    if (`${parent}/${e.name}` !== pins.dir) {
      await Deno.remove(`${parent}/${e.name}`, { recursive: true }).catch(() => {});
    }
  }
}
