// Runs the external tools of the datapath (bpftool, tc, ip, clang), optionally inside a named
// network namespace through nsenter, which keeps the caller's mount namespace so a per-node bpffs
// mounted outside /sys stays visible. It only spawns and collects; callers interpret the output.

export interface ExecOptions {
  /** Run in /run/netns/<netns> (nsenter --net); unset = the caller's own network namespace. */
  netns?: string | undefined;
  /** Bytes or text written to the command's standard input. */
  stdin?: string | Uint8Array;
}

export interface ExecResult {
  argv: string[];
  code: number;
  stdout: string;
  stderr: string;
}

/** The argv actually executed for a command in an optional network namespace. */
export function netnsArgv(argv: readonly string[], netns?: string): string[] {
  if (!netns) return [...argv];
  return ["nsenter", `--net=/run/netns/${netns}`, "--", ...argv];
}

/** Runs argv to completion; never throws for a non-zero exit (see ExecResult.code). */
export async function execCommand(
  argv: readonly string[],
  opts: ExecOptions = {},
): Promise<ExecResult> {
  const full = netnsArgv(argv, opts.netns);
  const [cmd, ...args] = full;
  const child = new Deno.Command(cmd!, {
    args,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    const bytes = typeof opts.stdin === "string"
      ? new TextEncoder().encode(opts.stdin)
      : opts.stdin;
    await writer.write(bytes);
    await writer.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return {
    argv: full,
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}
