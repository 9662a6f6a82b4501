// A typed wrapper around `bpftool -j`: runs it, validates the JSON it prints with zod, and turns
// failures into BpfToolError with a verifier summary and a hint. It knows bpftool's command
// shapes, not the meaning of cilia's maps (see codecs.ts) nor where they are pinned (loader.ts).
import { z } from "zod";
import { execCommand } from "../sys/exec.ts";

/** bpftool exited non-zero; `summary` holds the last meaningful (verifier) lines. */
export class BpfToolError extends Error {
  readonly argv: string[];
  readonly exitCode: number;
  readonly summary: string;
  readonly log: string;
  readonly hint: string | undefined;
  constructor(
    message: string,
    opts: { argv: string[]; exitCode: number; log: string; hint?: string | undefined },
  ) {
    super(opts.hint ? `${message}\nhint: ${opts.hint}` : message);
    this.name = "BpfToolError";
    this.argv = opts.argv;
    this.exitCode = opts.exitCode;
    this.log = opts.log;
    this.summary = summarize(opts.log);
    this.hint = opts.hint;
  }
}

/** The lines that explain a failure: the verifier's last words, then bpftool's own error. */
export function summarize(log: string, lines = 6): string {
  const all = log.split("\n").map((l) => l.trimEnd()).filter((l) =>
    l !== "" && !/^Warning: bpftool is now running|^If it used to work/.test(l)
  );
  const begin = all.findIndex((l) => l.includes("-- BEGIN PROG LOAD LOG --"));
  const end = all.findIndex((l) => l.includes("-- END PROG LOAD LOG --"));
  const errors = all.filter((l) => l.startsWith("Error:") || l.startsWith('{"error"'));
  if (begin >= 0 && end > begin) {
    const verifier = all.slice(begin + 1, end).filter((l) => !/^processed \d+ insns/.test(l));
    return [...verifier.slice(-(lines - 1)), ...errors.slice(-1)].join("\n");
  }
  return all.slice(-lines).join("\n");
}

/** A hint for the failures we know how to explain. */
export function hintFor(log: string): string | undefined {
  if (/BEGIN PROG LOAD LOG|processed \d+ insns/.test(log)) {
    return "the verifier rejected the program: the summary shows its last lines; " +
      "the full log is in BpfToolError.log (or run `bpftool -d prog loadall ...`)";
  }
  if (/Operation not permitted|EPERM/.test(log)) {
    return "run as root or grant CAP_BPF and CAP_NET_ADMIN (and CAP_PERFMON for events)";
  }
  if (/not.*bpf.?fs|not on a BPF file system|wrong fs type|Couldn't retrieve pinned/i.test(log)) {
    return "mount a bpffs first: mount -t bpf bpf /sys/fs/bpf (or a per-node directory)";
  }
  return undefined;
}

const hexBytes = z.array(z.string().regex(/^0x[0-9a-f]{1,2}$/i));
export const MapDumpSchema = z.array(
  z.object({
    key: hexBytes,
    value: hexBytes.optional(),
    values: z.array(z.object({ cpu: z.number(), value: hexBytes })).optional(),
  }).passthrough(),
);
export const BatchSchema = z.array(z.object({ command: z.array(z.string()), output: z.unknown() }));
export const ProgRunSchema = z.object({ retval: z.number(), duration: z.number() }).passthrough();
export const BtfMemberSchema = z.object({ name: z.string(), bits_offset: z.number() });
export const BtfDumpSchema = z.object({
  types: z.array(
    z.object({
      id: z.number(),
      kind: z.string(),
      name: z.string(),
      size: z.number().optional(),
      members: z.array(BtfMemberSchema.passthrough()).optional(),
    }).passthrough(),
  ),
});
export const ProgShowSchema = z.object({ id: z.number(), name: z.string(), tag: z.string() })
  .passthrough();
export const MapShowSchema = z.object({
  id: z.number(),
  name: z.string(),
  type: z.string(),
  bytes_key: z.number().optional(),
  bytes_value: z.number().optional(),
}).passthrough();

export function bytesFromHex(hex: readonly string[]): Uint8Array {
  return Uint8Array.from(hex, (h) => parseInt(h, 16));
}

export function hexArgs(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

export interface BpfToolOptions {
  binary?: string;
  netns?: string | undefined;
}

export class BpfTool {
  readonly #binary: string;
  readonly #netns: string | undefined;
  constructor(opts: BpfToolOptions = {}) {
    this.#binary = opts.binary ?? "bpftool";
    this.#netns = opts.netns;
  }

  /** Runs bpftool with args; returns stdout or throws BpfToolError. */
  async run(args: readonly string[], what = "Cannot run bpftool"): Promise<string> {
    const res = await execCommand([this.#binary, ...args], { netns: this.#netns });
    if (res.code !== 0) {
      const log = [res.stderr, res.stdout].filter((s) => s).join("\n");
      throw new BpfToolError(
        `${what}: bpftool exited with status ${res.code}: ${summarize(log, 2)}`,
        {
          argv: res.argv,
          exitCode: res.code,
          log,
          hint: hintFor(log),
        },
      );
    }
    return res.stdout;
  }

  /** Runs `bpftool -j args` and validates its JSON output. */
  async json<T>(args: readonly string[], schema: z.ZodType<T>, what?: string): Promise<T> {
    const out = await this.run(["-j", ...args], what);
    let parsed: unknown;
    try {
      parsed = JSON.parse(out);
    } catch (cause) {
      throw new SyntaxError(`Cannot parse bpftool output of "${args.join(" ")}": not JSON`, {
        cause,
      });
    }
    const res = schema.safeParse(parsed);
    if (!res.success) {
      throw new TypeError(
        `Unexpected bpftool output of "${args.join(" ")}": ${res.error.issues[0]?.message}`,
        { cause: res.error },
      );
    }
    return res.data;
  }

  /** Runs many commands (one per line, without "bpftool") in one process: `bpftool batch file`. */
  async batch(lines: readonly string[], what = "Cannot apply map changes"): Promise<void> {
    if (lines.length === 0) return;
    const file = await Deno.makeTempFile({ prefix: "cilia-batch-" });
    try {
      await Deno.writeTextFile(file, lines.join("\n") + "\n");
      await this.run(["batch", "file", file], what);
    } finally {
      await Deno.remove(file).catch(() => {});
    }
  }

  /**
   * Like batch, but with `-j`: stops at the first failing command and reports how many
   * commands succeeded and the failing command's error instead of throwing for it.
   */
  async batchUntilError(
    lines: readonly string[],
  ): Promise<{ done: number; error: string | undefined }> {
    if (lines.length === 0) return { done: 0, error: undefined };
    const file = await Deno.makeTempFile({ prefix: "cilia-batch-" });
    try {
      await Deno.writeTextFile(file, lines.join("\n") + "\n");
      const res = await execCommand([this.#binary, "-j", "batch", "file", file], {
        netns: this.#netns,
      });
      if (res.code === 0) return { done: lines.length, error: undefined };
      const parsed = BatchSchema.safeParse(JSON.parse(res.stdout || "null"));
      const last = parsed.success ? parsed.data.at(-1) : undefined;
      const error = (last?.output as { error?: unknown } | null | undefined)?.error;
      if (!parsed.success || typeof error !== "string") {
        const log = [res.stderr, res.stdout].filter((s) => s).join("\n");
        throw new BpfToolError(`Cannot run bpftool batch: exited with status ${res.code}`, {
          argv: res.argv,
          exitCode: res.code,
          log,
          hint: hintFor(log),
        });
      }
      return { done: parsed.data.length - 1, error };
    } finally {
      await Deno.remove(file).catch(() => {});
    }
  }

  /** Every entry of a pinned map; per-CPU maps report `values`. */
  mapDump(pinned: string): Promise<z.infer<typeof MapDumpSchema>> {
    return this.json(
      ["map", "dump", "pinned", pinned],
      MapDumpSchema,
      `Cannot dump map "${pinned}"`,
    );
  }

  /**
   * One test run of a pinned program on the given packet (and optional __sk_buff ctx); `out`
   * is the packet as the program left it.
   */
  async progRun(
    pinned: string,
    data: Uint8Array,
    opts: { ctx?: Uint8Array; repeat?: number } = {},
  ): Promise<z.infer<typeof ProgRunSchema> & { out: Uint8Array }> {
    const dir = await Deno.makeTempDir({ prefix: "cilia-run-" });
    try {
      await Deno.writeFile(`${dir}/data`, data);
      const args = ["prog", "run", "pinned", pinned, "data_in", `${dir}/data`];
      args.push("data_out", `${dir}/out`);
      if (opts.ctx) {
        await Deno.writeFile(`${dir}/ctx`, opts.ctx);
        args.push("ctx_in", `${dir}/ctx`);
      }
      if (opts.repeat) args.push("repeat", String(opts.repeat));
      const r = await this.json(args, ProgRunSchema, `Cannot run program "${pinned}"`);
      return { ...r, out: await Deno.readFile(`${dir}/out`) };
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  }

  btfDump(objectPath: string): Promise<z.infer<typeof BtfDumpSchema>> {
    return this.json(["btf", "dump", "file", objectPath], BtfDumpSchema);
  }
}
