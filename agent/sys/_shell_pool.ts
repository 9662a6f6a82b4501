// A few long-lived `sh` processes that run the agent's commands (ip, tc, bpftool, nsenter) for
// it. Deno starts every child with a fork of the agent, on the main thread: with the agent's
// large heap, and a busy machine, each took 3-20 ms during which nothing else ran (a V8 profile
// of 150 CNI ADDs put 28 s, a third of the agent's wall time, in `op_spawn_child`). A shell forks
// a small process instead, and the agent only writes a line and reads one. It runs argv exactly
// (every word single-quoted, no expansion), with standard input from a file or /dev/null and the
// output in two files of its own (read only when not empty), one command per shell at a time. It never retries a
// command: when a shell dies under one, that command fails (callers see an error, as for a spawn
// that failed), and later commands start a new shell.

import type { ExecResult } from "./exec.ts";

/**
 * Where the short-lived files of a command go (its standard input; the shell pool's output
 * files): /dev/shm when it is there (tmpfs: creating, writing and removing a file take
 * microseconds, where the disk's file system took milliseconds a file under load), else the
 * system's temporary directory.
 */
export const scratch: { dir?: string } = (() => {
  try {
    return Deno.statSync("/dev/shm").isDirectory ? { dir: "/dev/shm" } : {};
  } catch {
    return {};
  }
})();

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

interface Pending {
  resolve: (line: string) => void;
  reject: (err: Error) => void;
}

/** One `sh` reading commands on its standard input and answering `<status> <id>` per line. */
class Shell {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  #pending: Pending | undefined;
  alive = true;
  busy = false;
  /** Names its output files: the pool's count of shells started before it. */
  readonly index: number;

  constructor(index: number, onExit: (s: Shell) => void) {
    this.index = index;
    this.#child = new Deno.Command("sh", {
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    this.#writer = this.#child.stdin.getWriter();
    this.#read().catch(() => {}).finally(() => {
      this.alive = false;
      this.#pending?.reject(new Error("The command shell exited during the command"));
      this.#pending = undefined;
      onExit(this);
    });
  }

  async #read(): Promise<void> {
    let buf = "";
    for await (const chunk of this.#child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const p = this.#pending;
        this.#pending = undefined;
        p?.resolve(line);
      }
    }
  }

  /** Runs one script line; resolves to the line the shell answers. */
  run(script: string): Promise<string> {
    const { promise, resolve, reject } = Promise.withResolvers<string>();
    this.#pending = { resolve, reject };
    this.#writer.write(new TextEncoder().encode(script)).catch((err) => {
      if (this.#pending?.reject === reject) this.#pending = undefined;
      reject(new Error("Cannot write to the command shell", { cause: err }));
    });
    return promise;
  }

  async close(): Promise<void> {
    await this.#writer.close().catch(() => {});
    await this.#child.status;
  }
}

export class ShellPool {
  readonly #dir: string;
  readonly #max: number;
  readonly #shells = new Set<Shell>();
  #seq = 0;
  #started = 0;
  #closed = false;

  private constructor(dir: string, max: number) {
    this.#dir = dir;
    this.#max = max;
  }

  /**
   * A pool of at most `max` shells (started on demand), with its output directory, named after
   * this process; the directories of pools whose process is gone (killed before close) are
   * removed first, so that none piles up in /dev/shm's memory.
   */
  static async create(max = 4): Promise<ShellPool> {
    const base = scratch.dir ?? Deno.env.get("TMPDIR") ?? "/tmp";
    for await (const e of Deno.readDir(base)) {
      const pid = /^cilia-sh-(\d+)-/.exec(e.name)?.[1];
      if (pid === undefined || !e.isDirectory || (await exists(`/proc/${pid}`))) continue;
      await Deno.remove(`${base}/${e.name}`, { recursive: true }).catch(() => {});
    }
    const dir = await Deno.makeTempDir({ prefix: `cilia-sh-${Deno.pid}-`, dir: base });
    return new ShellPool(dir, max);
  }

  /**
   * Runs argv in an idle shell; undefined when every shell is busy (the caller spawns it
   * itself). A missing program is Deno.errors.NotFound, as for Deno.Command.
   */
  async exec(argv: readonly string[], stdinFile?: string): Promise<ExecResult | undefined> {
    const shell = this.#idle();
    if (shell === undefined) return undefined;
    const id = ++this.#seq;
    // The shell's own two files, truncated by each command; the answer says which are not empty.
    const out = `${this.#dir}/${shell.index}.out`, err = `${this.#dir}/${shell.index}.err`;
    const words = argv.map(quote).join(" ");
    const stdin = quote(stdinFile ?? "/dev/null");
    const script = `if command -v ${quote(argv[0]!)} >/dev/null 2>&1; then ` +
      `${words} <${stdin} >${quote(out)} 2>${quote(err)}; s=$?; o=0; e=0; ` +
      `[ -s ${quote(out)} ] && o=1; [ -s ${quote(err)} ] && e=1; echo "$s ${id} $o $e"; ` +
      `else echo "notfound ${id}"; fi\n`;
    shell.busy = true;
    try {
      const line = await shell.run(script);
      const [status, echoed, hasOut, hasErr] = line.split(" ");
      if (echoed !== String(id)) {
        throw new Error(`Unexpected answer from the command shell: "${line}"`);
      }
      if (status === "notfound") {
        throw new Deno.errors.NotFound(`Failed to spawn '${argv[0]}': program not found`);
      }
      const read = async (file: string, has: string | undefined) =>
        has === "1" ? new TextDecoder().decode(await Deno.readFile(file)) : "";
      const [stdout, stderr] = await Promise.all([read(out, hasOut), read(err, hasErr)]);
      return { argv: [...argv], code: Number(status), stdout, stderr };
    } finally {
      shell.busy = false;
    }
  }

  #idle(): Shell | undefined {
    if (this.#closed) return undefined;
    for (const s of this.#shells) if (s.alive && !s.busy) return s;
    if (this.#shells.size >= this.#max) return undefined;
    // A new index, never a dead shell's: what that shell ran may still hold its files.
    const s = new Shell(this.#started++, (gone) => this.#shells.delete(gone));
    this.#shells.add(s);
    return s;
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#shells].map((s) => s.close()));
    this.#shells.clear();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}
