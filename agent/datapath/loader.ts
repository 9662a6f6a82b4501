// Loads the compiled object into the kernel and pins it under the bpffs root, reusing maps that
// are already pinned (an agent restart keeps its maps and established connections), and attaches
// the pinned programs to endpoint veths with tc (clsact, atomic `filter replace`). Layout:
//   <root>/maps/<map name>          one pin per map, never replaced while it exists
//   <root>/progs/<object hash>/<prog name>   one directory per loaded object
// A pinned map whose size differs from the configured one is never reused silently: loading
// stops with what to do (a map cannot be resized in place, and replacing it would cut every
// endpoint and overlay program off the entries they use). Pins an older cilia left that this
// version cannot use (another events or metrics map type, proxy maps of another layout or
// name) are removed before loading, so an in-place upgrade starts. It does not write map
// contents (datapath.ts does).
import { z } from "zod";
import type { BpfTool } from "./bpftool.ts";
import { LAYOUTS } from "./codecs.ts";
import { execCommand } from "../sys/exec.ts";
import { ifIndex, tcAttach } from "./ffi.ts";

/**
 * The services' maps (bpf/lib/lb_maps.h, lb_affinity.h), pinned here and shared by host.o
 * (netdev_loader.ts) and sock.o (sock_loader.ts).
 */
export const LB_MAPS = [
  "cilia_lb_services",
  "cilia_lb_slots",
  "cilia_lb_backends",
  "cilia_lb_revnat",
  "cilia_lb_affinity",
  "cilia_lb_affinity_match",
] as const;

export const MAP_NAMES = [
  "cilia_endpoints",
  // a local endpoint's veth and MACs by its IPv4 address: host.o's and overlay.o's delivery
  // (bpf/lib/tunnel.h, 5.)
  "cilia_lxc_ipv4",
  "cilia_ipcache",
  "cilia_policy",
  "cilia_ct",
  "cilia_events",
  "cilia_events_lost",
  "cilia_metrics",
  "cilia_proxy_cfg",
  "cilia_proxy_orig",
  "cilia_proxy_nat",
  ...LB_MAPS,
  // host.o's (netdev_loader.ts), pinned here first: node IP and tunnel port for VXLAN written
  // by the endpoint's program, NodePort replies left to the tunnel device (bpf/lib/vxlan.h)
  "cilia_nat_cfg",
  "cilia_snat",
] as const;
export type MapName = typeof MAP_NAMES[number];
export const PROG_FROM_CONTAINER = "cil_from_container";
export const PROG_TO_CONTAINER = "cil_to_container";
/** The lxc object's program array for same-node delivery (bpf/lib/peer.h), pinned in progDir. */
export const PEER_CALLS_MAP = "cilia_peer_calls";

export interface Pins {
  root: string;
  maps: Record<MapName, string>;
  progDir: string;
  fromContainer: string;
  toContainer: string;
}

export interface LoadResult {
  pins: Pins;
  /** True when the programs were loaded now (false: the pinned ones were current). */
  loaded: boolean;
  /** Maps that existed and were reused. */
  reusedMaps: MapName[];
  /** Program directories of older objects, to remove once endpoints use the new programs. */
  stale: string[];
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** Throws with a mount hint unless root is (inside) a bpffs. */
export async function checkBpffs(root: string): Promise<void> {
  const hint = `mount one first: mount -t bpf bpf /sys/fs/bpf (or a per-node directory)`;
  try {
    await Deno.mkdir(root, { recursive: true });
  } catch (cause) {
    throw new Error(`Cannot create the bpffs root "${root}": ${hint}`, { cause });
  }
  const res = await execCommand(["stat", "-f", "-c", "%T", root]);
  if (res.stdout.trim() !== "bpf_fs") {
    throw new Error(
      `Cannot pin under "${root}": it is on "${res.stdout.trim()}", not a bpffs; ${hint}`,
    );
  }
}

export function pinsFor(root: string, hash: string): Pins {
  const maps = Object.fromEntries(MAP_NAMES.map((n) => [n, `${root}/maps/${n}`])) as Record<
    MapName,
    string
  >;
  const progDir = `${root}/progs/${hash}`;
  return {
    root,
    maps,
    progDir,
    fromContainer: `${progDir}/${PROG_FROM_CONTAINER}`,
    toContainer: `${progDir}/${PROG_TO_CONTAINER}`,
  };
}

/** A configured map size and the agent flag that sets it (for messages). */
export interface MapSize {
  max: number;
  flag: string;
}

const MaxEntriesSchema = z.object({ max_entries: z.number() }).passthrough();

/** The max_entries of a pinned map (`bpftool map show`). */
export async function pinnedMaxEntries(bpftool: BpfTool, pinned: string): Promise<number> {
  const info = await bpftool.json(
    ["map", "show", "pinned", pinned],
    MaxEntriesSchema,
    `Cannot read map "${pinned}"`,
  );
  return info.max_entries;
}

const MapTypeSchema = z.object({ type: z.string() }).passthrough();

/**
 * A map pinned by an older cilia with another map type cannot be reused: its pin goes, so the new
 * object makes one of `type`. For maps without state worth keeping: cilia_events (a perf event
 * array before, a ring buffer now) and cilia_metrics (a per-CPU hash before, a per-CPU array now,
 * bpf/lib/metrics.h; its counters start again from zero). Programs still attached keep writing to
 * the old map until they are replaced.
 */
async function dropPinOfOtherType(bpftool: BpfTool, pinned: string, type: string): Promise<void> {
  if (!(await exists(pinned))) return;
  const info = await bpftool.json(
    ["map", "show", "pinned", pinned],
    MapTypeSchema,
    `Cannot read map "${pinned}"`,
  );
  if (info.type !== type) await Deno.remove(pinned);
}

const MapKeyValueSchema = z.object({ bytes_key: z.number(), bytes_value: z.number() })
  .passthrough();

/** Key and value sizes of this version's L7 redirect maps (bpf/lib/proxy.h, via codecs.ts). */
const PROXY_MAPS: Record<string, { key: number; value: number }> = {
  cilia_proxy_cfg: { key: 4, value: LAYOUTS.proxyCfg.size },
  cilia_proxy_orig: { key: LAYOUTS.proxyOrigKey.size, value: LAYOUTS.proxyOrigValue.size },
  cilia_proxy_nat: { key: LAYOUTS.proxyNatKey.size, value: LAYOUTS.proxyNatValue.size },
};

/**
 * `cilia_proxy_*` pins an older cilia left that this version does not use: a name it does not
 * have, or one of its names with other key or value sizes (the maps grew to IPv6 addresses;
 * reusing one would fail verification or mis-read every entry). Those pins go, so the new
 * object makes its own. They hold only the redirects of connections in flight, cut anyway when
 * the programs are replaced, and the node's proxy addresses, which the proxy writes at start.
 * Returns the names removed.
 */
export async function dropOldProxyMaps(bpftool: BpfTool, mapsDir: string): Promise<string[]> {
  const dropped: string[] = [];
  for await (const e of Deno.readDir(mapsDir)) {
    if (!e.name.startsWith("cilia_proxy_")) continue;
    const path = `${mapsDir}/${e.name}`;
    const want = PROXY_MAPS[e.name];
    if (want) {
      const have = await bpftool.json(
        ["map", "show", "pinned", path],
        MapKeyValueSchema,
        `Cannot read map "${path}"`,
      );
      if (have.bytes_key === want.key && have.bytes_value === want.value) continue;
    }
    await Deno.remove(path);
    dropped.push(e.name);
  }
  return dropped.sort();
}

/**
 * A `cilia_endpoints` pin of an older layout (36-byte values, before the host side's MAC,
 * bpf/lib/endpoint.h) cannot be reused: the new object would refuse it. Its pin goes, so the new
 * object makes its own; the agent writes every endpoint's entry again before it re-attaches the
 * endpoint's programs (KernelSink), and programs still attached keep the old map until then.
 */
async function dropOldEndpointsMap(bpftool: BpfTool, pinned: string): Promise<void> {
  if (!(await exists(pinned))) return;
  const have = await bpftool.json(
    ["map", "show", "pinned", pinned],
    MapKeyValueSchema,
    `Cannot read map "${pinned}"`,
  );
  if (have.bytes_value !== LAYOUTS.endpointInfo.size) await Deno.remove(pinned);
}

/** Throws unless every reused map with a configured size has exactly that size. */
async function checkSizes(
  bpftool: BpfTool,
  pins: Pins,
  opts: { reused: readonly MapName[]; sizes: Partial<Record<MapName, MapSize>> },
): Promise<void> {
  for (const n of opts.reused) {
    const want = opts.sizes[n];
    if (want === undefined) continue;
    const have = await pinnedMaxEntries(bpftool, pins.maps[n]);
    if (have === want.max) continue;
    throw new RangeError(
      `Cannot reuse pinned map "${n}": it holds at most ${have} entries, but ${want.flag} is ` +
        `${want.max}; a pinned map is never resized in place. Start with ${want.flag}=${have} to ` +
        `keep it, or stop the agent, remove "${pins.maps[n]}" (endpoints lose its entries until ` +
        `the agent writes them again${n === "cilia_ct" ? ", and tracked connections" : ""}) ` +
        `and start again`,
    );
  }
}

/** Loads `object` (identified by `hash`) unless its programs are pinned already. */
export async function loadPinned(
  bpftool: BpfTool,
  opts: {
    root: string;
    object: string;
    hash: string;
    /** Sizes the object was built with; a reused pinned map of another size is refused. */
    sizes?: Partial<Record<MapName, MapSize>>;
  },
): Promise<LoadResult> {
  const pins = pinsFor(opts.root, opts.hash);
  await Deno.mkdir(`${opts.root}/maps`, { recursive: true });
  await Deno.mkdir(`${opts.root}/progs`, { recursive: true });
  await dropPinOfOtherType(bpftool, pins.maps.cilia_events, "ringbuf");
  await dropPinOfOtherType(bpftool, pins.maps.cilia_metrics, "percpu_array");
  await dropOldProxyMaps(bpftool, `${opts.root}/maps`);
  await dropOldEndpointsMap(bpftool, pins.maps.cilia_endpoints);
  const reusedMaps: MapName[] = [];
  for (const n of MAP_NAMES) if (await exists(pins.maps[n])) reusedMaps.push(n);
  if (opts.sizes) await checkSizes(bpftool, pins, { reused: reusedMaps, sizes: opts.sizes });
  const stale: string[] = [];
  for await (const e of Deno.readDir(`${opts.root}/progs`)) {
    if (e.name !== opts.hash) stale.push(`${opts.root}/progs/${e.name}`);
  }
  const current = (await exists(pins.fromContainer)) && (await exists(pins.toContainer));
  if (current && reusedMaps.length === MAP_NAMES.length) {
    return { pins, loaded: false, reusedMaps, stale };
  }
  const tag = crypto.randomUUID().slice(0, 8);
  const stagingProgs = `${opts.root}/progs/staging_${tag}`;
  const stagingMaps = `${opts.root}/maps/staging_${tag}`;
  const args = ["prog", "loadall", opts.object, stagingProgs];
  for (const n of reusedMaps) args.push("map", "name", n, "pinned", pins.maps[n]);
  args.push("pinmaps", stagingMaps);
  try {
    await bpftool.run(args, `Cannot load "${opts.object}"`);
    for (const n of MAP_NAMES) {
      const staged = `${stagingMaps}/${n}`;
      if (!reusedMaps.includes(n) && await exists(staged)) await Deno.rename(staged, pins.maps[n]);
    }
    // The object's own tail-call array (bpf/lib/peer.h) lives and goes with its programs: the
    // kernel empties a program array once nothing holds it, so it stays pinned.
    const calls = `${stagingMaps}/${PEER_CALLS_MAP}`;
    if (await exists(calls)) await Deno.rename(calls, `${stagingProgs}/${PEER_CALLS_MAP}`);
    if (await exists(pins.progDir)) await Deno.remove(pins.progDir, { recursive: true });
    await Deno.rename(stagingProgs, pins.progDir);
  } finally {
    await Deno.remove(stagingMaps, { recursive: true }).catch(() => {});
    await Deno.remove(stagingProgs, { recursive: true }).catch(() => {});
  }
  return { pins, loaded: true, reusedMaps, stale };
}

async function run(
  argv: string[],
  netns: string | undefined,
  what: string,
  stdin?: string,
): Promise<string> {
  const res = await execCommand(argv, stdin === undefined ? { netns } : { netns, stdin });
  if (res.code !== 0) {
    throw new Error(`${what}: ${argv[0]} exited with status ${res.code}: ${res.stderr.trim()}`);
  }
  return res.stdout;
}

/**
 * Attaches (or atomically replaces) both programs on an endpoint's host-side veth: in process
 * (libbpf, `tcAttach`) when running in the node's namespace, else with one tc process.
 */
export async function attachEndpoint(pins: Pins, ifname: string, netns?: string): Promise<void> {
  if (netns === undefined) {
    const index = ifIndex(ifname);
    if (index === undefined) throw new Error(`Cannot attach to "${ifname}": no such link`);
    return tcAttach(index, { ingress: pins.fromContainer, egress: pins.toContainer });
  }
  // One tc process for the qdisc and both filters (`tc -batch`; it stops at the first error).
  const lines = attachLines(pins, ifname);
  await run(["tc", "-batch", "-"], netns, `Cannot attach to "${ifname}"`, lines.join("\n") + "\n");
}

/**
 * attachEndpoint() for many veths (after a new object was loaded): one `tc -batch` per
 * ATTACH_BATCH links instead of one process per link. tc stops at the first error, which is
 * thrown; the links before it are attached, the ones after it untouched.
 */
export async function attachEndpoints(
  pins: Pins,
  ifnames: readonly string[],
  netns?: string,
): Promise<void> {
  for (let i = 0; i < ifnames.length; i += ATTACH_BATCH) {
    const chunk = ifnames.slice(i, i + ATTACH_BATCH);
    const lines = chunk.flatMap((n) => attachLines(pins, n));
    await run(
      ["tc", "-batch", "-"],
      netns,
      `Cannot attach to ${chunk.length} links from "${chunk[0]}"`,
      lines.join("\n") + "\n",
    );
  }
}

const ATTACH_BATCH = 250;

function attachLines(pins: Pins, ifname: string): string[] {
  return [
    `qdisc replace dev ${ifname} clsact`,
    ...[["ingress", pins.fromContainer], ["egress", pins.toContainer]].map(([hook, prog]) =>
      `filter replace dev ${ifname} ${hook} protocol all pref 1 handle 1 bpf direct-action ` +
      `pinned ${prog}`
    ),
  ];
}

/** Removes both filters; a missing link or filter is not an error. */
export async function detachEndpoint(ifname: string, netns?: string): Promise<void> {
  for (const hook of ["ingress", "egress"]) {
    await execCommand(
      [
        "tc",
        "filter",
        "del",
        "dev",
        ifname,
        hook,
        "protocol",
        "all",
        "pref",
        "1",
        "handle",
        "1",
        "bpf",
      ],
      { netns },
    );
  }
}

/** Names of the BPF programs attached at a hook of a link (for checks and status). */
/**
 * Whether a filter's name (`attachedPrograms`) is program `prog`: tc names it after the pin
 * (`cil_from_container:[*fsobj]`), libbpf after the kernel's name of at most 15 characters and
 * the id (`cil_from_contai:[42]`).
 */
export function runsProgram(filterName: string, prog: string): boolean {
  return filterName.startsWith(`${prog}:`) || filterName.startsWith(`${prog.slice(0, 15)}:[`);
}

export async function attachedPrograms(
  ifname: string,
  hook: "ingress" | "egress",
  netns?: string,
): Promise<string[]> {
  const res = await execCommand(["tc", "-j", "filter", "show", "dev", ifname, hook], { netns });
  if (res.code !== 0 || res.stdout.trim() === "") return [];
  const filters = JSON.parse(res.stdout) as { options?: { bpf_name?: string } }[];
  return filters.flatMap((f) => f.options?.bpf_name ? [f.options.bpf_name] : []);
}

const TcFilterList = z.array(
  z.object({
    options: z.object({ prog: z.object({ id: z.number() }).passthrough() }).passthrough(),
  })
    .passthrough().partial(),
);

/**
 * The ids of the BPF programs attached at ingress and egress of many links, in one `tc -batch`
 * (`bpftool net show` asks the kernel about every link of the node and took 1.5–5 s with 1,000
 * endpoints; this is about 0.1 s). tc prints one JSON line per command and stops at the first
 * error (a link deleted meanwhile): the links after it are left out of the result, so a caller
 * treats them as not attached. Names that are not plain link names are left out too.
 */
export async function attachedProgramIds(
  ifnames: readonly string[],
  netns?: string,
): Promise<Map<string, { ingress: number[]; egress: number[] }>> {
  const names = ifnames.filter((n) => /^[\w.@-]{1,15}$/.test(n));
  const out = new Map<string, { ingress: number[]; egress: number[] }>();
  if (names.length === 0) return out;
  const lines = names.flatMap((
    n,
  ) => [`filter show dev ${n} ingress`, `filter show dev ${n} egress`]);
  const res = await execCommand(["tc", "-j", "-batch", "-"], {
    netns,
    stdin: lines.join("\n") + "\n",
  });
  const shown = res.stdout.split("\n").filter((l) => l.trim() !== "");
  const ids = (line: string | undefined): number[] | undefined => {
    let json: unknown;
    try {
      json = line === undefined ? undefined : JSON.parse(line);
    } catch {
      return undefined;
    }
    const parsed = TcFilterList.safeParse(json);
    return parsed.success
      ? parsed.data.flatMap((f) => f.options ? [f.options.prog.id] : [])
      : undefined;
  };
  for (let i = 0; i < names.length && 2 * i + 1 < shown.length; i++) {
    const ingress = ids(shown[2 * i]);
    const egress = ids(shown[2 * i + 1]);
    if (ingress === undefined || egress === undefined) break; // unexpected output: stop trusting it
    out.set(names[i]!, { ingress, egress });
  }
  return out;
}
