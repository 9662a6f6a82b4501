// The test side of _prober.ts: starts the helper in a network namespace and sends it requests
// concurrently, matching replies by id. It only transports requests; the lab decides what to ask.
import type { ProbeRequest, ProbeResult } from "./_prober.ts";

const SCRIPT = new URL("./_prober.ts", import.meta.url).pathname;

export class Prober {
  readonly netns: string;
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #pending = new Map<number, (r: ProbeResult) => void>();
  readonly #reader: Promise<void>;
  readonly #ready: Promise<void>;
  #next = 1;

  private constructor(netns: string) {
    this.netns = netns;
    this.#child = new Deno.Command("ip", {
      args: ["netns", "exec", netns, Deno.execPath(), "run", "-A", "--no-config"]
        .concat(["--unstable-net", SCRIPT]),
      env: { DENO_NO_UPDATE_CHECK: "1", DENO_NO_PROMPT: "1" },
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#writer = this.#child.stdin.getWriter();
    let ready!: () => void;
    this.#ready = new Promise((r) => ready = r);
    this.#pending.set(0, () => ready());
    this.#reader = this.#read();
  }

  /** Starts the helper in netns and waits until its raw sockets are open. */
  static async start(netns: string): Promise<Prober> {
    const p = new Prober(netns);
    const exited = p.#child.status.then((s) => {
      throw new Error(`The probe helper in "${netns}" exited with status ${s.code}`);
    });
    await Promise.race([p.#ready, exited]);
    exited.catch(() => {});
    return p;
  }

  async #read(): Promise<void> {
    let buf = "";
    for await (const chunk of this.#child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const reply = JSON.parse(buf.slice(0, i)) as { id: number; result: ProbeResult };
        buf = buf.slice(i + 1);
        this.#pending.get(reply.id)?.(reply.result);
        this.#pending.delete(reply.id);
      }
    }
    for (const resolve of this.#pending.values()) resolve("error: the probe helper exited");
    this.#pending.clear();
  }

  call(req: Omit<ProbeRequest, "id">): Promise<ProbeResult> {
    const id = this.#next++;
    const line = new TextEncoder().encode(JSON.stringify({ id, ...req }) + "\n");
    return new Promise((resolve, reject) => {
      this.#pending.set(id, resolve);
      this.#writer.write(line).catch((e) => {
        this.#pending.delete(id);
        reject(e);
      });
    });
  }

  /** Starts a listener; throws when it cannot (address missing, port taken). */
  async listen(proto: "tcp" | "udp", port: number, src?: string): Promise<void> {
    const r = await this.call({ op: "listen", proto, port, ...(src ? { src } : {}) });
    if (r !== "ok") {
      throw new Error(`Cannot listen on ${proto}/${src ?? "::"}:${port} in "${this.netns}": ${r}`);
    }
  }

  async close(): Promise<void> {
    await this.#writer.close().catch(() => {});
    await this.#reader.catch(() => {});
    await this.#child.status;
  }
}
