/**
 * `cilia-cni`, the CNI plugin that container runtimes execute once per command: reads the CNI
 * environment and the network configuration on stdin, prints the result (or the CNI error object)
 * on stdout and exits 0 (or 1). Thin on purpose: it starts fast and leaves the work to the agent.
 * Its module graph must stay free of npm packages (bin/cilia-cni runs it with `--no-config`, and
 * tests/cni/plugin_unit_test.ts checks the graph). With `CILIA_CNI_TIMING=1` in the environment it
 * also writes one line to stderr, `cilia-cni timing {…}`, with wall-clock marks for `bench cni`.
 */

import { runPlugin } from "./plugin.ts";
import { epochMs, type RequestTiming } from "./client.ts";

const startedAt = epochMs();

/** All of stdin. Read synchronously: the first use of web streams costs the plugin ~4 ms. */
function readStdin(): string {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  for (let n = Deno.stdin.readSync(buf); n !== null && n > 0; n = Deno.stdin.readSync(buf)) {
    chunks.push(buf.slice(0, n));
  }
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all);
}

if (import.meta.main) {
  const env = Deno.env.toObject();
  const requests: RequestTiming[] = [];
  const timing = env.CILIA_CNI_TIMING ? { onTiming: (t: RequestTiming) => requests.push(t) } : {};
  const out = await runPlugin(env, readStdin(), timing);
  if (out.stdout) await Deno.stdout.write(new TextEncoder().encode(out.stdout));
  if (env.CILIA_CNI_TIMING) {
    const marks = { origin: performance.timeOrigin, startedAt, requests, doneAt: epochMs() };
    await Deno.stderr.write(
      new TextEncoder().encode(`cilia-cni timing ${JSON.stringify(marks)}\n`),
    );
  }
  Deno.exit(out.code);
}
