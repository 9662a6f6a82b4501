// Compiles the eBPF programs with the pinned clang flags into a template cache keyed by a hash
// of the sources, the flags and the compiler version: an object that is current is never built
// again, and a new endpoint never needs a compile (per-endpoint values live in maps). Node-wide
// settings fixed at compile time (map sizes) enter as `-D` defines and are part of the key. It does not
// load anything into the kernel (loader.ts does).
import { execCommand } from "../sys/exec.ts";

/** The pinned compiler flags. Changing them changes every cache key. */
export const CLANG_FLAGS: readonly string[] = [
  "-O2",
  "-g",
  "-target",
  "bpf",
  "-mcpu=v3",
  "-Wall",
  "-Werror",
  "-Wno-unused-function",
];

export const DEFAULT_SOURCE_DIR = new URL("../../bpf/", import.meta.url).pathname;

export interface BuildOptions {
  /** The bpf/ directory (lxc.c and lib/*.h). */
  sourceDir?: string;
  /** Where objects are cached: `<name>-<hash>.o` plus a copy at `<name>.o`. */
  buildDir: string;
  /** Program file without ".c"; default "lxc". */
  name?: string;
  clang?: string;
  /** `-DNAME=value` for node-wide compile-time settings (map sizes); part of the cache key. */
  defines?: Readonly<Record<string, number>>;
}

export interface BuiltObject {
  path: string;
  hash: string;
  cached: boolean;
}

async function sourceFiles(dir: string): Promise<string[]> {
  const files: string[] = [];
  for (const sub of ["", "lib/"]) {
    for await (const e of Deno.readDir(dir + sub)) {
      if (e.isFile && /\.[ch]$/.test(e.name)) files.push(sub + e.name);
    }
  }
  return files.sort();
}

/** Versions by compiler path, asked once per process (a start asked twice, a process each). */
const versions = new Map<string, Promise<string>>();

export function clangVersion(clang: string): Promise<string> {
  let v = versions.get(clang);
  if (v === undefined) {
    v = (async () => {
      const res = await execCommand([clang, "--version"]);
      if (res.code !== 0) throw new Error(`Cannot run "${clang}": exited with status ${res.code}`);
      return res.stdout.split("\n")[0] ?? "";
    })();
    versions.set(clang, v);
    v.catch(() => versions.delete(clang));
  }
  return v;
}

/** The flags including the multiarch include directory for <asm/types.h>. */
export function clangArgs(sourceDir: string, source: string, out: string): string[] {
  const arch = Deno.build.arch === "aarch64" ? "aarch64" : "x86_64";
  return [...CLANG_FLAGS, `-I/usr/include/${arch}-linux-gnu`, "-c", sourceDir + source, "-o", out];
}

/** The cache key: sha256 over flags, compiler version and every source file. */
export async function sourceHash(sourceDir: string, clang = "clang"): Promise<string> {
  const parts: string[] = [CLANG_FLAGS.join(" "), await clangVersion(clang)];
  for (const f of await sourceFiles(sourceDir)) {
    parts.push(f, await Deno.readTextFile(sourceDir + f));
  }
  return await sha256Hex(parts.join("\0"));
}

function defineArgs(defines: Readonly<Record<string, number>> = {}): string[] {
  return Object.keys(defines).sort().map((k) => `-D${k}=${defines[k]}`);
}

async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Builds `<name>.o` unless the cache has it for the current sources. */
export async function buildObject(opts: BuildOptions): Promise<BuiltObject> {
  const sourceDir = opts.sourceDir ?? DEFAULT_SOURCE_DIR;
  const name = opts.name ?? "lxc";
  const clang = opts.clang ?? "clang";
  const defines = defineArgs(opts.defines);
  const base = await sourceHash(sourceDir, clang);
  // Without defines the key is the source hash alone (objects built by scripts/ stay current).
  const hash = (defines.length === 0 ? base : await sha256Hex([base, ...defines].join("\0")))
    .slice(0, 16);
  const cachedPath = `${opts.buildDir}/${name}-${hash}.o`;
  const latest = `${opts.buildDir}/${name}.o`;
  await Deno.mkdir(opts.buildDir, { recursive: true });
  let cached = true;
  if (!(await exists(cachedPath))) {
    cached = false;
    const tmp = `${cachedPath}.${crypto.randomUUID().slice(0, 8)}.tmp`;
    const res = await execCommand([clang, ...defines, ...clangArgs(sourceDir, `${name}.c`, tmp)]);
    if (res.code !== 0) {
      await Deno.remove(tmp).catch(() => {});
      throw new Error(
        `Cannot build "${name}.c": clang exited with status ${res.code}:\n${res.stderr.trim()}`,
      );
    }
    await Deno.rename(tmp, cachedPath); // atomic: concurrent builders never see half an object
  }
  const tmpLatest = `${latest}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  await Deno.copyFile(cachedPath, tmpLatest);
  await Deno.rename(tmpLatest, latest);
  return { path: cachedPath, hash, cached };
}
