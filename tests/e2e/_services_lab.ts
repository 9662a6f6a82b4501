// Shared by the services e2e tests: a TCP server that answers every read with its own name (so a
// client learns which backend it reached), and a Deno script run inside a pod's network namespace.
// Needs root (ip netns exec).

export const NAME_SERVER = `
const [name, port] = Deno.args;
const enc = new TextEncoder();
for await (const c of Deno.listen({ hostname: "0.0.0.0", port: Number(port) })) {
  (async () => {
    const buf = new Uint8Array(64);
    try { while ((await c.read(buf)) !== null) await c.write(enc.encode(name + "\\n")); } catch {}
    try { c.close(); } catch {}
  })();
}`;

type Io = "piped" | "null";

/** `deno run -A --no-config SCRIPT ARGS…` inside NETNS; stdout piped unless told otherwise. */
export function denoIn(
  netns: string,
  script: string,
  args: string[],
  io: { stdin?: Io; stdout?: Io } = {},
): Deno.Command {
  return new Deno.Command("ip", {
    args: ["netns", "exec", netns, Deno.execPath(), "run", "-A", "--no-config", script, ...args],
    env: { DENO_NO_UPDATE_CHECK: "1" },
    stdin: io.stdin ?? "null",
    stdout: io.stdout ?? "piped",
    stderr: "inherit",
  });
}
