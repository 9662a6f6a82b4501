// Builds bpf/build/{lxc,overlay,host,sock,sock_term}.o with the pinned clang flags (cached by source
// hash; see agent/datapath/build.ts). Usage: deno run -A scripts/build_bpf.ts [--force]
import { buildObject } from "../agent/datapath/build.ts";

const root = new URL("../", import.meta.url).pathname;
const buildDir = `${root}bpf/build`;
if (Deno.args.includes("--force")) {
  await Deno.mkdir(buildDir, { recursive: true });
  for await (const e of Deno.readDir(buildDir)) {
    if (e.name.endsWith(".o")) await Deno.remove(`${buildDir}/${e.name}`);
  }
}
for (const name of ["lxc", "overlay", "host", "sock", "sock_term"]) {
  const started = performance.now();
  const obj = await buildObject({ sourceDir: `${root}bpf/`, buildDir, name });
  const ms = (performance.now() - started).toFixed(0);
  console.error(
    `${obj.cached ? "cached" : "built"} ${buildDir}/${name}.o (${obj.hash}) in ${ms} ms`,
  );
}
