// Shared by the services e2e tests: a TCP server that answers every read with its own name (so a
// client learns which backend it reached), and a Deno script run inside a pod's network namespace.
// Also what their setups share: waiting for listeners, `bin/cilia` runs, service upserts and the
// cleanup of child processes. Needs root (ip netns exec).
import assert from "node:assert/strict";
import type { Reply } from "../agent/_fixture.ts";
import { root } from "../cni/_fixture.ts";
import type { Lab } from "../helpers/netns.ts";

/** A node whose agent API a test calls (CiliaNode, ClusterNode). */
interface ApiNode {
  call(method: string, path: string, body?: unknown): Promise<Reply>;
}

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

/**
 * Script text the client scripts start with: `within(p, ms)` (rejects after ms, and 250 ms more:
 * a client process the loaded machine did not run for ms sees its timer and its finished I/O
 * together when it runs again, and the grace lets the I/O win) and `ask(c)` (writes one byte to
 * the TCP connection c, resolves with the line it answers, trimmed).
 */
export const CLIENT_LIB = `
const enc = new TextEncoder(), dec = new TextDecoder();
const within = (p, t) => { p.catch(() => {}); let id; return Promise.race([p, new Promise((_, r) => { id = setTimeout(() => { id = setTimeout(() => r(new Error("timeout")), 250); }, t); })]).finally(() => clearTimeout(id)); };
async function ask(c) {
  await c.write(enc.encode("x"));
  let s = ""; const buf = new Uint8Array(64);
  while (!s.endsWith("\\n")) { const n = await c.read(buf); if (n === null) throw new Error("closed"); s += dec.decode(buf.subarray(0, n)); }
  return s.trim();
}`;

/** Polls fn every 50 ms until it is true; throws naming what after ms. */
export async function waitFor(what: string, fn: () => Promise<boolean>, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
}

/** Waits until `ss -Hln FILTER` in netns lists at least `count` listening sockets. */
export function waitListening(lab: Lab, netns: string, filter: string, count = 1): Promise<void> {
  return waitFor(`${count} listener(s) on "${filter}" in ${netns}`, async () => {
    const ss = await lab.exec(netns, ["ss", "-Hln", filter]);
    return ss.stdout.trim().split("\n").filter((l) => l !== "").length >= count;
  });
}

/** `bin/cilia ARGS -H unix://SOCKET` with this Deno; asserts exit 0 and returns stdout. */
export async function cilia(socket: string, ...args: string[]): Promise<string> {
  const r = await new Deno.Command(`${root}bin/cilia`, {
    args: [...args, "-H", `unix://${socket}`],
    env: { CILIA_DENO: Deno.execPath() },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  assert.equal(r.code, 0, `cilia ${args.join(" ")}: ${dec.decode(r.stderr)}`);
  return dec.decode(r.stdout);
}

/** PUT /v1/service through node's API; asserts it was stored (200 or 201). */
export async function putService(node: ApiNode, body: Record<string, unknown>): Promise<void> {
  const r = await node.call("PUT", "/v1/service", body);
  assert.ok(r.status === 200 || r.status === 201, JSON.stringify(r.body));
}

/** Kills each child (SIGKILL) and reaps it, reading piped output; for a test's `finally`. */
export async function killAll(children: Deno.ChildProcess[]): Promise<void> {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch { /* gone */ }
    await c.output().catch(() => c.status);
  }
}
