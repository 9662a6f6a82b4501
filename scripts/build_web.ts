// Builds the in-browser policy simulator into web/dist/ (`deno task build:web`). The build itself
// lives in web/build.ts so that `deno task web` can build on first use; this script is its
// command line and the entry tests call.

import { buildWeb } from "../web/build.ts";

export { buildWeb, type BuildWebOptions, type BuildWebResult } from "../web/build.ts";

if (import.meta.main) {
  const r = await buildWeb();
  for (const f of r.files) console.log(`  ${f.name.padEnd(12)} ${(f.bytes / 1024).toFixed(1)} KiB`);
  console.log(`Built ${r.outdir} in ${r.ms} ms`);
}
