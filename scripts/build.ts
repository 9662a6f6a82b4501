// `deno task build`: every artifact in order, with progress on stderr — policy.wasm (embedded in
// the engine), the eBPF objects, the web bundle, the CNI plugin's bundle. Steps whose script does
// not exist yet are skipped.

const root = new URL("../", import.meta.url).pathname;
const STEPS: [string, string][] = [
  ["policy engine (policy.wasm)", "scripts/build_wasm.ts"],
  ["eBPF objects", "scripts/build_bpf.ts"],
  ["web simulator bundle", "scripts/build_web.ts"],
  ["CNI plugin bundle", "scripts/build_cni.ts"],
];

for (const [what, script] of STEPS) {
  try {
    await Deno.stat(root + script);
  } catch {
    continue;
  }
  const started = performance.now();
  console.error(`build: ${what}…`);
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", root + script],
    cwd: root,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (code !== 0) {
    console.error(`build: ${what} failed (exit ${code})`);
    Deno.exit(code);
  }
  console.error(`build: ${what} done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
}
