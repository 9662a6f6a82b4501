// Socket-level load balancing (bpf/sock.c, Cilium's "socket LB"): builds (cached) and loads the
// cgroup programs (the sock_addr hooks, and a sockops program for the trace events of TCP
// connections), sharing the node's pinned service and session-affinity maps, ipcache and event
// ring with the tc programs (lxc.o pins them first; pinned programs that use another ring or
// affinity map than the one pinned now are loaded again), and attaches them to a cgroup v2
// directory (--cgroup-root) with BPF_F_ALLOW_MULTI. Layout: <root>/sock/<object hash>/<program>;
// its own map <root>/maps/cilia_lb_sock_revnat is reused across restarts, so UDP replies of
// sockets translated before a restart still get their service address back.
//
// Replacing on restart, without a window: the new programs are attached first, then the older
// objects' programs (found through their pins under <root>/sock/) are detached; meanwhile both
// run on a call, which is harmless (bpf/sock.c, 5.: a translated address is no service). The
// cgroup is noted in <state dir>/sock-lb.json, so an agent started with --bpf-lb-sock false
// detaches what an earlier one attached. It does not write the service maps (lb_state.ts does).
// With the socket LB on it also loads socket termination (sock_term.ts, bpf/sock_term.c: the
// connections of a removed backend end); a kernel without bpf_sock_destroy (< 6.5) gets a warning
// and the socket LB without it (such connections then keep their backend while they live).
import { z } from "zod";
import { BpfTool } from "./bpftool.ts";
import { LB_MAPS } from "./loader.ts";
import { buildObject } from "./build.ts";
import { execCommand } from "../sys/exec.ts";
import type { Logger } from "../log.ts";
import { loadSockTerm, SockTermNotSupportedError, type SockTermPins } from "./sock_term.ts";

/** bpftool's attach type → the program of bpf/sock.c attached there. */
export const SOCK_PROGS = {
  cgroup_inet4_connect: "cil_sock4_connect",
  cgroup_udp4_sendmsg: "cil_sock4_sendmsg",
  cgroup_udp4_recvmsg: "cil_sock4_recvmsg",
  cgroup_inet4_getpeername: "cil_sock4_getpeername",
  cgroup_inet6_connect: "cil_sock6_connect",
  cgroup_udp6_sendmsg: "cil_sock6_sendmsg",
  cgroup_udp6_recvmsg: "cil_sock6_recvmsg",
  cgroup_inet6_getpeername: "cil_sock6_getpeername",
  // TCP's trace event, once the source port is chosen (bpf/lib/sock_trace.h)
  cgroup_sock_ops: "cil_sock_ops",
} as const;
export type SockAttachType = keyof typeof SOCK_PROGS;

/**
 * The maps sock.o shares with lxc.o (which pins them): the service maps it reads, session
 * affinity's (bpf/lib/lb_affinity.h: the agent's matches, the LRU both translators write), the
 * ipcache (the identities in its trace events) and the event ring its trace events go to, so the
 * agent's one monitor reads them.
 */
const SHARED_MAPS = [
  ...LB_MAPS,
  "cilia_ipcache",
  "cilia_events",
  "cilia_events_lost",
];
/** Shared maps whose pin may be made again (the ring: an upgrade), each with a program using it. */
const CHECKED_MAPS: [string, SockAttachType][] = [
  ["cilia_events", "cgroup_sock_ops"],
  ["cilia_lb_affinity", "cgroup_inet4_connect"],
  ["cilia_lb_affinity_match", "cgroup_inet4_connect"],
];
export const SOCK_REVNAT_MAP = "cilia_lb_sock_revnat";

const exists = (path: string) => Deno.lstat(path).then(() => true, () => false);
const trim = (root: string) => root.replace(/\/+$/, "") || "/";

/** Throws naming the path unless it is a directory on a cgroup v2 file system. */
export async function checkCgroup2(path: string): Promise<void> {
  const r = await execCommand(["stat", "-f", "-c", "%T", path]);
  const fs = r.stdout.trim();
  if (r.code !== 0) {
    throw new Error(
      `Invalid --cgroup-root "${path}": ${r.stderr.trim() || "cannot stat it"} ` +
        `(expected a cgroup v2 directory such as /sys/fs/cgroup or /sys/fs/cgroup/unified)`,
    );
  }
  if (fs !== "cgroup2fs") {
    throw new Error(
      `Invalid --cgroup-root "${path}": it is on "${fs}", not cgroup2 (a hybrid v1/v2 host ` +
        `mounts cgroup2 at /sys/fs/cgroup/unified; or mount one: mount -t cgroup2 none DIR)`,
    );
  }
}

/** The first cgroup2 mount point in /proc/self/mountinfo (the default --cgroup-root). */
export async function defaultCgroupRoot(): Promise<string> {
  const text = await Deno.readTextFile("/proc/self/mountinfo");
  for (const line of text.split("\n")) {
    const [left, right] = line.split(" - ");
    if (right?.split(" ")[0] === "cgroup2") return left!.split(" ")[4]!;
  }
  throw new Error(
    "--bpf-lb-sock true: no cgroup2 mount in this mount namespace: mount one " +
      "(mount -t cgroup2 none /run/cilia/cgroupv2) and pass it as --cgroup-root",
  );
}

export interface SockPins {
  dir: string;
  /** Attach type → the pinned program. */
  progs: Record<SockAttachType, string>;
}

/** Loads sock.o unless its programs are pinned already (the service maps must be pinned). */
export async function loadSock(
  opts: { bpffsRoot: string; buildDir: string; sourceDir?: string },
): Promise<SockPins> {
  const root = trim(opts.bpffsRoot);
  const obj = await buildObject({
    buildDir: opts.buildDir,
    name: "sock",
    ...(opts.sourceDir ? { sourceDir: opts.sourceDir } : {}),
  });
  const dir = `${root}/sock/${obj.hash}`;
  const progs = Object.fromEntries(
    Object.entries(SOCK_PROGS).map(([t, p]) => [t, `${dir}/${p}`]),
  ) as Record<SockAttachType, string>;
  const pins = { dir, progs };
  const own = `${root}/maps/${SOCK_REVNAT_MAP}`;
  const present = await Promise.all(Object.values(progs).map(exists));
  if (present.every((x) => x) && await exists(own) && await usesPinned(progs, root)) return pins;
  const args = ["prog", "loadall", obj.path];
  for (const m of SHARED_MAPS) {
    if (!(await exists(`${root}/maps/${m}`))) {
      throw new Error(`Cannot load the socket LB: the shared map "${root}/maps/${m}" is missing`);
    }
  }
  const tag = crypto.randomUUID().slice(0, 8);
  const staging = `${root}/sock/staging_${tag}`, stagingMaps = `${root}/sock/maps_${tag}`;
  args.push(staging);
  for (const m of [...SHARED_MAPS, SOCK_REVNAT_MAP]) {
    if (await exists(`${root}/maps/${m}`)) {
      args.push("map", "name", m, "pinned", `${root}/maps/${m}`);
    }
  }
  args.push("pinmaps", stagingMaps);
  await Deno.mkdir(`${root}/sock`, { recursive: true });
  try {
    await new BpfTool().run(args, `Cannot load "${obj.path}"`);
    if (!(await exists(own))) await Deno.rename(`${stagingMaps}/${SOCK_REVNAT_MAP}`, own);
    // Programs of this hash pinned before (a map they share was made again since) are moved
    // aside, so attachSock() detaches them as it does an older object's.
    if (await exists(dir)) await Deno.rename(dir, `${root}/sock/replaced_${tag}`);
    await Deno.rename(staging, dir);
  } finally {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    await Deno.remove(stagingMaps, { recursive: true }).catch(() => {});
  }
  return pins;
}

const IdSchema = z.object({ id: z.number() }).passthrough();
const ProgMapsSchema = z.object({ map_ids: z.array(z.number()).default([]) }).passthrough();

/**
 * True when the pinned programs use the maps pinned now (CHECKED_MAPS): a ring made again since
 * (its pin removed, an upgrade that changed its type) needs a new load, or the monitor would
 * never see their events; affinity maps made again, or affinity would read matches no one writes.
 */
async function usesPinned(progs: Record<SockAttachType, string>, root: string): Promise<boolean> {
  const tool = new BpfTool();
  const ids = new Map<SockAttachType, number[]>();
  for (const [name, type] of CHECKED_MAPS) {
    const map = await tool.json(["map", "show", "pinned", `${root}/maps/${name}`], IdSchema)
      .catch(() => undefined);
    if (map === undefined) return false;
    if (!ids.has(type)) {
      const prog = await tool.json(["prog", "show", "pinned", progs[type]], ProgMapsSchema);
      ids.set(type, prog.map_ids);
    }
    if (!ids.get(type)!.includes(map.id)) return false;
  }
  return true;
}

const CgroupShowSchema = z.array(
  z.object({ id: z.number(), attach_type: z.string(), name: z.string() }).passthrough(),
);

/** What is attached to the cgroup: attach type → program ids. */
async function attachedIds(tool: BpfTool, cgroup: string): Promise<Map<string, Set<number>>> {
  const out = await tool.run(["-j", "cgroup", "show", cgroup], `Cannot list "${cgroup}"`);
  const rows = out.trim() === "" ? [] : CgroupShowSchema.parse(JSON.parse(out));
  const m = new Map<string, Set<number>>();
  for (const r of rows) m.set(r.attach_type, (m.get(r.attach_type) ?? new Set()).add(r.id));
  return m;
}

/** Program ids pinned in the sock/<hash> directories other than keep, by attach type. */
async function olderIds(root: string, keep: string | undefined, tool: BpfTool) {
  const ids: [SockAttachType, number, string][] = [];
  const dirs: string[] = [];
  if (!(await exists(`${root}/sock`))) return { ids, dirs };
  for await (const e of Deno.readDir(`${root}/sock`)) {
    const dir = `${root}/sock/${e.name}`;
    if (dir === keep || !e.isDirectory) continue;
    dirs.push(dir);
    for (const [type, prog] of Object.entries(SOCK_PROGS) as [SockAttachType, string][]) {
      if (!(await exists(`${dir}/${prog}`))) continue;
      const { id } = await tool.json(["prog", "show", "pinned", `${dir}/${prog}`], IdSchema);
      ids.push([type, id, dir]);
    }
  }
  return { ids, dirs };
}

/**
 * Attaches the pinned programs to cgroup (each once), then detaches the programs of older
 * objects of this bpffs root and removes their pins.
 */
export async function attachSock(pins: SockPins, cgroup: string): Promise<void> {
  const tool = new BpfTool();
  const root = pins.dir.slice(0, pins.dir.lastIndexOf("/sock/"));
  let attached = await attachedIds(tool, cgroup);
  for (const [type, path] of Object.entries(pins.progs) as [SockAttachType, string][]) {
    const { id } = await tool.json(["prog", "show", "pinned", path], IdSchema);
    if (attached.get(type)?.has(id)) continue;
    await tool.run(
      ["cgroup", "attach", cgroup, type, "pinned", path, "multi"],
      `Cannot attach "${path}" to the cgroup "${cgroup}" (${type})`,
    );
  }
  attached = await attachedIds(tool, cgroup);
  await detachOlder(tool, root, pins.dir, cgroup, attached);
}

async function detachOlder(
  tool: BpfTool,
  root: string,
  keep: string | undefined,
  cgroup: string | undefined,
  attached: Map<string, Set<number>>,
): Promise<void> {
  const { ids, dirs } = await olderIds(root, keep, tool);
  for (const [type, id] of ids) {
    if (cgroup === undefined || !attached.get(type)?.has(id)) continue;
    await tool.run(["cgroup", "detach", cgroup, type, "id", String(id)], `Cannot detach ${id}`);
  }
  for (const d of dirs) await Deno.remove(d, { recursive: true }).catch(() => {});
}

export interface SockLbOptions {
  enabled: boolean;
  cgroupRoot?: string;
  bpffsRoot: string;
  buildDir: string;
  stateDir: string;
  log: Logger;
}

const NoteSchema = z.object({ cgroup: z.string() });

/**
 * The agent's start: with `enabled`, load and attach (the cgroup checked first) and load socket
 * termination (its pins, or none when the kernel cannot: warned); without it, detach what an
 * earlier agent attached (its cgroup is noted in the state dir).
 */
export async function setupSockLb(
  o: SockLbOptions,
): Promise<{ cgroup: string; term: SockTermPins | undefined } | undefined> {
  const note = `${o.stateDir}/sock-lb.json`;
  const root = trim(o.bpffsRoot);
  const text = await Deno.readTextFile(note).catch(() => undefined);
  const noted = text === undefined ? undefined : NoteSchema.parse(JSON.parse(text)).cgroup;
  const cgroup = o.enabled ? o.cgroupRoot ?? await defaultCgroupRoot() : undefined;
  if (cgroup !== undefined) await checkCgroup2(cgroup);
  if (noted !== undefined && noted !== cgroup) { // turned off, or moved to another cgroup
    const tool = new BpfTool();
    const attached = await attachedIds(tool, noted).catch(() => new Map());
    await detachOlder(tool, root, undefined, noted, attached);
    await Deno.remove(note);
    o.log.info("socket LB detached", { cgroup: noted });
  }
  if (cgroup === undefined) { // socket termination's iterators serve only the socket LB
    await Deno.remove(`${root}/sock_term`, { recursive: true }).catch(() => {});
    return undefined;
  }
  const pins = await loadSock(o);
  await Deno.writeTextFile(note, JSON.stringify({ cgroup }));
  await attachSock(pins, cgroup);
  o.log.info("socket LB attached", { cgroup, programs: pins.dir });
  let term: SockTermPins | undefined;
  try {
    term = await loadSockTerm(o);
  } catch (err) {
    o.log.warn(
      "socket LB: connections to a removed backend are not ended (they keep their backend " +
        "while they live): " + (err instanceof SockTermNotSupportedError
          ? "the kernel lacks bpf_sock_destroy (needs Linux >= 6.5)"
          : "cannot load socket termination (bpf/sock_term.c)"),
      { error: err },
    );
  }
  return { cgroup, term };
}
