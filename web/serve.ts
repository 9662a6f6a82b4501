// `deno task web`: serves the simulator (web/dist/) on 127.0.0.1, building it first when it is
// missing. `--port N` (default 8080; 0 picks a free port); the URL is printed once listening.

import { serveSimulator } from "./static.ts";
import { buildWeb, DIST_DIR } from "./build.ts";

const USAGE = "Usage: deno task web [--port N]   (default 8080; 0 picks a free port)";

function parsePort(args: string[]): number {
  let port = 8080;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "-h" || a === "--help") {
      console.log(USAGE);
      Deno.exit(0);
    }
    const m = /^--port(?:=(.*))?$/.exec(a);
    if (!m) throw new TypeError(`Unknown argument "${a}": ${USAGE}`);
    const v = m[1] ?? args[++i];
    port = Number(v);
    if (v === undefined || !/^\d+$/.test(v) || port > 65535) {
      throw new RangeError(`Invalid port "${v ?? ""}": expected 0-65535`);
    }
  }
  return port;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

if (import.meta.main) {
  let port: number;
  try {
    port = parsePort(Deno.args);
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(2);
  }
  if (!(await exists(`${DIST_DIR}/index.html`))) {
    console.log("web/dist/ is missing: building the simulator first");
    const r = await buildWeb();
    console.log(`Built ${r.outdir} in ${r.ms} ms`);
  }
  Deno.serve({
    hostname: "127.0.0.1",
    port,
    onListen: ({ hostname, port }) =>
      console.log(`cilia policy simulator: http://${hostname}:${port}/`),
  }, (req) => serveSimulator(req));
}
