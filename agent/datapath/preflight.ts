// Checks that the kernel datapath can run here before anything is loaded: the capabilities it
// needs (CAP_BPF or CAP_SYS_ADMIN, CAP_NET_ADMIN), a bpffs at the pin root, and the tools it
// drives (clang, bpftool, tc, ip). Each failure is one error naming what is missing and how to
// fix it. It changes nothing (but creates the pin root directory, as checkBpffs does).
import { execCommand } from "../sys/exec.ts";
import { clangVersion } from "./build.ts";
import { checkBpffs } from "./loader.ts";

export class DatapathUnavailableError extends Error {
  override name = "DatapathUnavailableError";
  constructor(message: string, readonly hint: string, options?: ErrorOptions) {
    super(`${message}\nhint: ${hint}`, options);
  }
}

const CAP_NET_ADMIN = 12n;
const CAP_SYS_ADMIN = 21n;
const CAP_BPF = 39n;

/** The effective capability set of this process (from /proc/self/status). */
export async function effectiveCapabilities(): Promise<bigint> {
  const status = await Deno.readTextFile("/proc/self/status");
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  return m ? BigInt(`0x${m[1]}`) : 0n;
}

const has = (caps: bigint, cap: bigint) => (caps & (1n << cap)) !== 0n;

async function tool(name: string, args: string[]): Promise<boolean> {
  try {
    return (await execCommand([name, ...args])).code === 0;
  } catch {
    return false; // not installed
  }
}

/** Throws DatapathUnavailableError unless the datapath can be loaded under `bpffsRoot`. */
export async function checkDatapath(bpffsRoot: string): Promise<void> {
  const caps = await effectiveCapabilities();
  const missing = [
    ...(has(caps, CAP_BPF) || has(caps, CAP_SYS_ADMIN) ? [] : ["CAP_BPF"]),
    ...(has(caps, CAP_NET_ADMIN) ? [] : ["CAP_NET_ADMIN"]),
  ];
  if (missing.length > 0) {
    throw new DatapathUnavailableError(
      `Cannot load the kernel datapath: the agent lacks ${missing.join(" and ")}`,
      `run the agent as root, or start it with --datapath none (no enforcement)`,
    );
  }
  // clang's version is the one the object cache key asks for next (build.ts asks once).
  const found = await Promise.all([
    clangVersion("clang").then(() => true, () => false),
    tool("bpftool", ["version"]),
  ]);
  for (const [i, name] of ["clang", "bpftool"].entries()) {
    if (!found[i]) {
      throw new DatapathUnavailableError(
        `Cannot load the kernel datapath: "${name}" is not installed`,
        `run scripts/setup (it installs clang, bpftool and iproute2)`,
      );
    }
  }
  try {
    await checkBpffs(bpffsRoot);
  } catch (cause) {
    throw new DatapathUnavailableError(
      `Cannot load the kernel datapath: "${bpffsRoot}" is not on a bpffs`,
      `mount one (mount -t bpf bpf /sys/fs/bpf), give --bpffs-root a directory on a bpffs, ` +
        `or start the agent with --datapath none`,
      { cause },
    );
  }
}
