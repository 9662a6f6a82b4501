// Builds (cached), loads and attaches the overlay programs (bpf/overlay.c) of the node's tunnel
// device. They share the node's pinned ipcache and metrics maps with the lxc programs (`bpftool
// prog loadall … map name … pinned …`), so the agent's one ipcache write path serves both.
// Layout: <root>/overlay/<object hash>/{cil_to_overlay,cil_from_overlay}; older hashes are
// removed once the device uses the new ones. It neither creates the device nor writes maps.
import { BpfTool } from "./bpftool.ts";
import { buildObject } from "./build.ts";
import { execCommand } from "../sys/exec.ts";

export const PROG_TO_OVERLAY = "cil_to_overlay";
export const PROG_FROM_OVERLAY = "cil_from_overlay";
/** The pinned maps overlay.o uses (it defines no others). */
const SHARED_MAPS = ["cilia_ipcache", "cilia_metrics"] as const;

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
