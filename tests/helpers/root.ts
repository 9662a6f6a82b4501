/**
 * The one place tests say what they need from the machine: root (network namespaces, veth, tc,
 * BPF: every kernel lab mounts its own bpffs, which needs root too) and binaries on PATH (clang,
 * bpftool, etcd, podman, chromium, …). A test that cannot run here is ignored, never failed and
 * never turned into a green test that ran nothing, and the reason is printed:
 *
 *   Deno.test("lxc drops …", needsRoot(), async () => { … });
 *   Deno.test("etcd …", needs({ binaries: ["etcd"] }), async () => { … });
 *   await skipStep(t, "case.yaml", "kernel: no — not expressible as packets");
 *
 * `deno task test:unit` sets CILIA_TESTS=unit: every test that needs root is ignored, even as
 * root (the fast half a contributor runs). Otherwise, under CI (`CI` set in the environment)
 * nothing is ignored for the machine's sake: the gate must see every test, so a missing
 * requirement fails there with the test's own error. It decides only whether a test runs; it
 * never sets anything up.
 */

export interface Needs {
  /** Needs uid 0 (netns, veth, tc, bpffs mounts, BPF maps and programs). */
  root?: boolean;
  /** Executables that must be found on PATH (or at an absolute path given here). */
  binaries?: readonly string[];
}

/** What the kernel tests run: iproute2, tc, bpftool and clang. */
export const KERNEL_TOOLS: readonly string[] = ["ip", "tc", "bpftool", "clang"];

/** The Debian package that brings each binary (scripts/setup installs them all). */
const INSTALL_HINTS: Record<string, string> = {
  etcd: "apt-get install etcd-server",
  chromium: "apt-get install chromium",
  "/usr/bin/chromium": "apt-get install chromium",
  podman: "apt-get install podman runc",
  bpftool: "apt-get install bpftool",
  clang: "apt-get install clang llvm",
  iperf3: "apt-get install iperf3",
  dnsmasq: "apt-get install dnsmasq-base",
  dig: "apt-get install bind9-dnsutils",
};

/** True when the test process runs as root. */
export function isRoot(): boolean {
  return Deno.uid() === 0;
}

function found(binary: string): boolean {
  const isFile = (path: string) => {
    try {
      return Deno.statSync(path).isFile;
    } catch {
      return false;
    }
  };
  if (binary.includes("/")) return isFile(binary);
  const dirs = (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":").filter(Boolean);
  return [...dirs, "/usr/sbin", "/sbin"].some((d) => isFile(`${d}/${binary}`));
}

/** True under `deno task test:unit` (CILIA_TESTS=unit): tests that need root do not run. */
export function unitOnly(): boolean {
  return Deno.env.get("CILIA_TESTS") === "unit";
}

/** Why `n` is not met on this machine, or undefined when it is. */
export function unmet(n: Needs): string | undefined {
  const why: string[] = [];
  if (n.root && unitOnly()) {
    why.push("needs root, and deno task test:unit runs no test that does (deno task test does)");
  } else if (n.root && !isRoot()) {
    why.push(`needs root for network namespaces, veth, tc and BPF (running as uid ${Deno.uid()})`);
  }
  const missing = (n.binaries ?? []).filter((b) => !found(b));
  if (missing.length > 0) {
    const hints = [...new Set(missing.map((b) => INSTALL_HINTS[b]).filter(Boolean))];
    why.push(
      `needs ${missing.map((b) => `"${b}"`).join(", ")} on PATH` +
        (hints.length > 0 ? ` (${hints.join("; ")}, or run scripts/setup)` : ""),
    );
  }
  return why.length > 0 ? why.join("; ") : undefined;
}

const printed = new Set<string>();

function report(reason: string): void {
  if (printed.has(reason)) return;
  printed.add(reason);
  console.log(`ignored here: ${reason}`);
}

/** True under CI, where nothing may be ignored for the machine's sake. */
export function inCi(): boolean {
  const ci = Deno.env.get("CI");
  return ci !== undefined && ci !== "" && ci !== "0" && ci !== "false";
}

/**
 * `Deno.test` options: ignored, with the reason printed, when `n` is not met here (never under
 * CI). Use it as the options argument, or spread it into a test definition.
 */
export function needs(n: Needs): { ignore: boolean } {
  const reason = inCi() && !(n.root && unitOnly()) ? undefined : unmet(n);
  if (reason !== undefined) report(reason);
  return { ignore: reason !== undefined };
}

/** `needs()` for the kernel tests: root and the kernel tools, plus any other `binaries`. */
export function needsRoot(binaries: readonly string[] = []): { ignore: boolean } {
  return needs({ root: true, binaries: [...KERNEL_TOOLS, ...binaries] });
}

/** Registers an ignored step whose name carries the reason (so nothing green ran nothing). */
export async function skipStep(t: Deno.TestContext, name: string, reason: string): Promise<void> {
  await t.step({ name: `${name} (ignored: ${reason})`, ignore: true, fn: () => {} });
}
