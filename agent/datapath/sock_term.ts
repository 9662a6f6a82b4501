// Socket termination for the socket LB (bpf/sock_term.c): loads the iterator programs (sharing
// cilia_lb_sock_revnat with sock.o, which must be loaded first) and, when a service update removed
// backends, writes the removed (service, backend) pairs into cilia_lb_sock_term and has one
// iterator per program read in each local network namespace, which ends the sockets the socket LB
// translated to them. A socket iterator walks the namespace of the thread that creates it, so the
// walk runs in a Worker (_sock_term_worker.ts, one per run: its own OS thread, which setns()es
// into each namespace and back while the agent's event loop runs on; no process per pod). This
// thread writes the pairs and makes the iterator links before the walk and deletes and closes them
// after it, also when the Worker fails, cannot return to its own namespace (it is terminated: the
// agent's thread never leaves its namespace), does not answer within the bound (30 s) or the
// agent closes (it is asked to stop at its next namespace through a shared flag, and terminated
// where it is if it does not within 2 s; only then may its open fds stay open).
// Layout: <root>/sock_term/<object hash>/<program>, <root>/maps/cilia_lb_sock_term. It uses
// libbpf through ffi.ts and its own handle, held only while it writes or closes; it never decides
// which backends left (service/manager.ts does).
import { BpfTool, BpfToolError } from "./bpftool.ts";
import { buildObject } from "./build.ts";
import { closeFd, errnoText, mapDelete, mapUpdate, objGet, withLibs } from "./ffi.ts";
import { parseIPv4, parseIPv6 } from "./_addr.ts";
import type { RemovedBackend } from "../service/manager.ts";
import type { WalkReply, WalkRequest } from "./_sock_term_worker.ts";

export const SOCK_TERM_MAP = "cilia_lb_sock_term";
const SOCK_REVNAT_MAP = "cilia_lb_sock_revnat"; // sock.o's (sock_loader.ts)
const PROGS = ["cil_sock_term_tcp", "cil_sock_term_udp"] as const;
const MAX_PAIRS = 1024; // cilia_lb_sock_term's max_entries
const BPF_TRACE_ITER = 28;
/** How long a Worker asked to stop may take before it is terminated where it is (ms). */
const STOP_GRACE_MS = 2000;

const BPF_SYMBOLS = {
  bpf_link_create: { parameters: ["i32", "i32", "i32", "pointer"], result: "i32" },
} as const;

const exists = (path: string) => Deno.lstat(path).then(() => true, () => false);

/** The kernel lacks bpf_sock_destroy or the socket iterators (Linux < 6.5). */
export class SockTermNotSupportedError extends Error {
  override name = "SockTermNotSupportedError";
  readonly feature = "bpf_sock_destroy";
  readonly minimumKernel = "6.5";
}

export interface SockTermPins {
  progs: string[];
  map: string;
}

/** Loads sock_term.o unless it is pinned already; throws when the kernel cannot load it. */
export async function loadSockTerm(
  o: { bpffsRoot: string; buildDir: string; sourceDir?: string },
): Promise<SockTermPins> {
  const root = o.bpffsRoot.replace(/\/+$/, "") || "/";
  const obj = await buildObject({
    buildDir: o.buildDir,
    name: "sock_term",
    ...(o.sourceDir ? { sourceDir: o.sourceDir } : {}),
  });
  const dir = `${root}/sock_term/${obj.hash}`, map = `${root}/maps/${SOCK_TERM_MAP}`;
  const pins = { progs: PROGS.map((p) => `${dir}/${p}`), map };
  if ((await Promise.all([...pins.progs, map].map(exists))).every((x) => x)) return pins;
  const revnat = `${root}/maps/${SOCK_REVNAT_MAP}`;
  if (!(await exists(revnat))) {
    throw new Error(`Cannot load socket termination: the map "${revnat}" is missing`);
  }
  const tag = crypto.randomUUID().slice(0, 8);
  const staging = `${root}/sock_term/staging_${tag}`, stagingMaps = `${root}/sock_term/maps_${tag}`;
  const args = ["prog", "loadall", obj.path, staging, "map", "name", SOCK_REVNAT_MAP, "pinned"];
  args.push(revnat);
  if (await exists(map)) args.push("map", "name", SOCK_TERM_MAP, "pinned", map);
  args.push("pinmaps", stagingMaps);
  await Deno.mkdir(`${root}/sock_term`, { recursive: true });
  try {
    await new BpfTool().run(args, `Cannot load "${obj.path}"`).catch((err) => {
      const line = err instanceof BpfToolError
        ? err.log.split("\n").find((l) => /bpf_sock_destroy|bpf_iter_(tcp|udp)/.test(l))
        : undefined;
      if (line === undefined) throw err;
      throw new SockTermNotSupportedError(
        `Cannot load socket termination: the kernel lacks bpf_sock_destroy or socket ` +
          `iterators (needs Linux >= 6.5): ${line.trim()}`,
        { cause: err },
      );
    });
    if (!(await exists(map))) await Deno.rename(`${stagingMaps}/${SOCK_TERM_MAP}`, map);
    for await (const e of Deno.readDir(`${root}/sock_term`)) { // older objects
      const d = `${root}/sock_term/${e.name}`;
      if (d !== staging && d !== stagingMaps) await Deno.remove(d, { recursive: true });
    }
    await Deno.rename(staging, dir);
  } finally {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    await Deno.remove(stagingMaps, { recursive: true }).catch(() => {});
  }
  return pins;
}

/** bpf/sock_term.c's struct sock_term_key for one pair. */
export function encodeTermKey(r: RemovedBackend): Uint8Array {
  const key = new Uint8Array(40), v = new DataView(key.buffer);
  const addr = (ip: string, what: string) => {
    const a = parseIPv4(ip) ?? parseIPv6(ip);
    if (!a) throw new TypeError(`Invalid ${what} address "${ip}": expected IPv4 or IPv6`);
    return a;
  };
  const be = addr(r.backend.ip, "backend"), svc = addr(r.frontend.ip, "service");
  if (be.length !== svc.length) {
    throw new TypeError(`Backend "${r.backend.ip}" is of another family than "${r.frontend.ip}"`);
  }
  key.set(be, 0);
  key.set(svc, 16);
  v.setUint16(32, r.backend.port); // network order, as the socket holds it
  v.setUint16(34, r.frontend.port);
  key[36] = be.length === 4 ? 4 : 6;
  key[37] = r.frontend.protocol === "TCP" ? 6 : 17;
  return key;
}

export interface TermResult {
  /** Namespaces walked (this agent's own included). */
  walked: number;
  /** Namespaces that could not be walked, with the reason. */
  failed: { netns: string; error: string }[];
}

export interface TerminateOptions {
  /** How long the walk may take before its Worker is stopped and the run fails (ms; 30 s). */
  timeoutMs?: number;
  /** Stops the walk (the agent closes): its Worker is terminated and the run fails. */
  signal?: AbortSignal;
  /** Tests only: the Worker fails to return to its netns (see WalkRequest.faultCloseHome). */
  faultCloseHome?: boolean;
}

/** The Worker could not return to its own netns and was terminated; the agent is unaffected. */
export class NetnsRestoreError extends Error {
  override name = "NetnsRestoreError";
}

/**
 * Ends the sockets the socket LB translated to the removed pairs, in this agent's namespace and
 * each one given. The walk runs in a Worker; throws when it fails, stalls or is aborted (the
 * pairs are deleted from the map in every case).
 */
export async function terminateSockets(
  pins: SockTermPins,
  removed: readonly RemovedBackend[],
  netns: readonly string[],
  o: TerminateOptions = {},
): Promise<TermResult> {
  const keys = removed.map(encodeTermKey); // every pair checked before any write
  const result: TermResult = { walked: 0, failed: [] };
  for (let i = 0; i < keys.length; i += MAX_PAIRS) {
    const r = await runOnce(pins, keys.slice(i, i + MAX_PAIRS), netns, o);
    result.walked = r.walked;
    result.failed.push(...r.failed);
  }
  return result;
}

/** Writes the pairs and makes the links (this thread), walks (Worker), deletes and closes. */
async function runOnce(
  pins: SockTermPins,
  keys: Uint8Array[],
  netns: readonly string[],
  o: TerminateOptions,
): Promise<TermResult> {
  const fds: number[] = [], links: number[] = [];
  let mapFd = -1;
  try {
    withLibs(() => {
      const libbpf = Deno.dlopen("libbpf.so.1", BPF_SYMBOLS);
      try {
        mapFd = objGet(pins.map);
        for (const k of keys) {
          const r = mapUpdate(mapFd, k, new Uint8Array([1]));
          if (r !== 0) throw new Error(`Cannot write "${pins.map}": ${errnoText(-r)}`);
        }
        for (const p of pins.progs) {
          const prog = objGet(p);
          fds.push(prog);
          const link = libbpf.symbols.bpf_link_create(prog, 0, BPF_TRACE_ITER, null);
          if (link < 0) throw new Error(`Cannot create an iterator of "${p}": ${errnoText(-link)}`);
          fds.push(link);
          links.push(link);
        }
      } finally {
        libbpf.close();
      }
    });
    return await walkInWorker({
      links,
      netns: [...netns],
      ...(o.faultCloseHome ? { faultCloseHome: true } : {}),
    }, o);
  } finally {
    withLibs(() => { // after the Worker answered, failed or was terminated
      if (mapFd >= 0) {
        for (const k of keys) mapDelete(mapFd, k);
        closeFd(mapFd);
      }
      for (const fd of fds) closeFd(fd);
    });
  }
}

/** One Worker for one walk, terminated when it answered, failed, stalled or was aborted. */
async function walkInWorker(req: WalkRequest, o: TerminateOptions): Promise<TermResult> {
  const ms = o.timeoutMs ?? 30_000, count = req.netns.length + 1;
  const stop = new Int32Array(new SharedArrayBuffer(4));
  const w = new Worker(new URL("./_sock_term_worker.ts", import.meta.url).href, {
    type: "module",
  });
  const timers: ReturnType<typeof setTimeout>[] = [];
  let onAbort = () => {};
  const reply = new Promise<WalkReply>((resolve) => {
    w.onmessage = (e: MessageEvent<WalkReply>) => resolve(e.data);
    w.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      resolve({ t: "error", message: `its worker threw: ${e.message}` });
    };
  });
  const halted = new Promise<string>((resolve) => {
    timers.push(setTimeout(() => resolve(`did not answer within ${ms} ms`), ms));
    onAbort = () => resolve("was aborted");
    o.signal?.addEventListener("abort", onAbort, { once: true });
    if (o.signal?.aborted) onAbort();
  });
  try {
    w.postMessage({ ...req, stop } satisfies WalkRequest);
    const first = await Promise.race([reply, halted]);
    if (typeof first !== "string") return answer(first);
    // The Worker stops at its next namespace, at home with its fds closed; one that does not
    // within STOP_GRACE_MS is terminated where it is (its fds stay open: see the header).
    Atomics.store(stop, 0, 1);
    const late = await Promise.race([
      reply,
      new Promise<undefined>((r) => timers.push(setTimeout(() => r(undefined), STOP_GRACE_MS))),
    ]);
    if (late?.t === "done") return late.result; // it finished meanwhile
    if (late !== undefined && late.t !== "stopped") return answer(late);
    const how = late === undefined ? `terminated: it did not stop within ${STOP_GRACE_MS} ms` : "";
    throw new Error(
      `Socket termination ${first} (${count} namespaces): its worker was stopped${
        how ? ` (${how})` : ""
      }`,
    );
  } finally {
    for (const t of timers) clearTimeout(t);
    o.signal?.removeEventListener("abort", onAbort);
    w.terminate();
  }
}

/** The Worker's answer: its result, or the error it names. */
function answer(m: WalkReply): TermResult {
  switch (m.t) {
    case "done":
      return m.result;
    case "stuck":
      throw new NetnsRestoreError(
        `Socket termination's worker stayed in another netns and was stopped (the agent's ` +
          `thread never left its own): ${m.message}`,
      );
    case "stopped":
      throw new Error("Socket termination's worker stopped unasked");
    case "error":
      throw new Error(`Socket termination failed: ${m.message}`);
  }
}
