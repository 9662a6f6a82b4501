/**
 * `cilia-cni`, the CNI plugin that container runtimes execute once per command: reads the CNI
 * environment and the network configuration on stdin, prints the result (or the CNI error object)
 * on stdout and exits 0 (or 1). Thin on purpose: it starts fast and leaves the work to the agent.
 */

import { runPlugin } from "./plugin.ts";

async function readStdin(): Promise<string> {
  const chunks: Uint8Array[] = [];
  for await (const c of Deno.stdin.readable) chunks.push(c);
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return new TextDecoder().decode(all);
}

if (import.meta.main) {
  const out = await runPlugin(Deno.env.toObject(), await readStdin());
  if (out.stdout) await Deno.stdout.write(new TextEncoder().encode(out.stdout));
  Deno.exit(out.code);
}
