// Runs the node's external tools (bpftool, tc, ip, clang, nsenter), optionally inside a named
// network namespace through nsenter, which keeps the caller's mount namespace so a per-node bpffs
// mounted outside /sys stays visible. It only spawns and collects; callers interpret the output.
// Shared by the datapath, the endpoint plumbing, the node setup, tests and scripts.

import { scratch, ShellPool } from "./_shell_pool.ts";

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

let shells: ShellPool | undefined;

/**
 * From now on, commands run in a few long-lived shells (`_shell_pool.ts`) instead of a fork of
 * this process each; a direct spawn only when every shell is busy. For the agent, whose heap
 * makes each fork expensive; close the returned pool on exit.
 */
export async function useShellPool(max?: number): Promise<{ close(): Promise<void> }> {
  const pool = await ShellPool.create(max);
  shells = pool;
  return {
    close: async () => {
      if (shells === pool) shells = undefined;
      await pool.close();
    },
  };
}

/** Commands between two full garbage collections (each takes a few ms on the agent's heap). */
const COLLECT_EVERY = 256;
let sinceCollected = 0;

function collectNow(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined || ++sinceCollected < COLLECT_EVERY) return;
  sinceCollected = 0;
  setTimeout(gc, 0);
}

/**
 * Runs argv to completion; never throws for a non-zero exit (see ExecResult.code).
 *
 * Memory: it always uses `Deno.Command.output()`, never `spawn()`. The `ChildProcess` streams
 * of `spawn()` hold about 100 KB of native memory per process until V8 collects their wrappers,
 * which on the agent's small heap happens rarely: RSS grew by hundreds of MB over a few hundred
 * pods (denoland/deno#24674; `output()` bypasses the streams). Standard input therefore goes
 * through a temporary file that `sh` redirects. What `output()` still holds (about 10 KB per
 * process) is freed by a full collection: when the process runs with `--expose-gc` (the agent
 * does), one is requested after every COLLECT_EVERY commands.
 */
export async function execCommand(
  argv: readonly string[],
  opts: ExecOptions = {},
): Promise<ExecResult> {
  const full = netnsArgv(argv, opts.netns);
  let file: string | undefined;
  let run = full;
  if (opts.stdin !== undefined) {
    file = await Deno.makeTempFile({ prefix: "cilia-stdin-", ...scratch });
    await Deno.writeFile(
      file,
      typeof opts.stdin === "string" ? new TextEncoder().encode(opts.stdin) : opts.stdin,
    );
    run = ["sh", "-c", 'exec "$@" <"$0"', file, ...full];
  }
  try {
    const viaShell = await shells?.exec(full, file);
    if (viaShell !== undefined) return viaShell;
    collectNow();
    const [cmd, ...args] = run;
    const out = await new Deno.Command(cmd!, { args, stdin: "null" }).output();
    const dec = new TextDecoder();
    return {
      argv: full,
      code: out.code,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
    };
  } finally {
    if (file !== undefined) await Deno.remove(file).catch(() => {});
  }
}
