// Builds the policy simulator into web/dist/ with esbuild: one minified ESM bundle for the browser
// (the simulator, CodeMirror and the policy engine with its embedded policy.wasm), the stylesheet
// and index.html. It owns the build only; serving is web/static.ts. The bundle must never touch
// `Deno.*`: the build fails when it does.

import * as esbuild from "esbuild";

export interface BuildWebOptions {
  /** Output directory; default web/dist/. */
  outdir?: string;
  /** Minify (default true). */
  minify?: boolean;
}

export interface BuildWebResult {
  outdir: string;
  files: { name: string; bytes: number }[];
  ms: number;
}

const WEB = new URL("./", import.meta.url);
const here = (rel: string) => decodeURIComponent(new URL(rel, WEB).pathname);

/** The default output directory, web/dist/. */
export const DIST_DIR: string = here("dist");

/** Bundles the simulator; throws when esbuild fails or the bundle references `Deno.*`. */
export async function buildWeb(opts: BuildWebOptions = {}): Promise<BuildWebResult> {
  const started = performance.now();
  const outdir = opts.outdir ?? DIST_DIR;
  let result: esbuild.BuildResult<{ write: false }>;
  try {
    result = await esbuild.build({
      entryPoints: { app: here("app/main.ts"), style: here("style.css") },
      outdir,
      bundle: true,
      write: false,
      format: "esm",
      platform: "browser",
      target: ["es2022", "chrome110", "firefox115", "safari16"],
      minify: opts.minify ?? true,
      legalComments: "none",
      charset: "utf8",
      logLevel: "silent",
    });
  } catch (cause) {
    throw new Error(`Cannot build the web simulator: esbuild failed`, { cause });
  } finally {
    await esbuild.stop();
  }
  const outputs = [
    ...result.outputFiles.map((f) => ({ name: basename(f.path), bytes: f.contents })),
    { name: "index.html", bytes: await Deno.readFile(here("index.html")) },
  ];
  const app = outputs.find((o) => o.name === "app.js");
  const text = app ? new TextDecoder().decode(app.bytes) : "";
  const hit = /\bDeno\.[A-Za-z]+/.exec(text);
  if (hit) {
    throw new Error(`Cannot build the web simulator: the bundle references "${hit[0]}"`);
  }
  await Deno.mkdir(outdir, { recursive: true });
  for (const o of outputs) await Deno.writeFile(`${outdir}/${o.name}`, o.bytes);
  await removeStale(outdir, new Set(outputs.map((o) => o.name)));
  return {
    outdir,
    files: outputs.map((o) => ({ name: o.name, bytes: o.bytes.length })),
    ms: Math.round(performance.now() - started),
  };
}

function basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

async function removeStale(dir: string, keep: Set<string>): Promise<void> {
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && !keep.has(e.name)) await Deno.remove(`${dir}/${e.name}`);
  }
}
