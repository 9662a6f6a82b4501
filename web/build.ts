// Builds the policy simulator into web/dist/ with esbuild: minified ESM split for a fast first
// load — app.js and the chunk it imports (the simulator, the engine's TypeScript face), policy.wasm
// as a file of its own (streamed and compiled while it downloads), and later chunks for CodeMirror
// and live mode — plus the stylesheet and index.html with preloads for the first screen. It owns
// the build only; serving is web/static.ts. No chunk may touch `Deno.*`: the build fails when one
// does.

import * as esbuild from "esbuild";
import { loadPolicyWasm } from "../policy-wasm/src/wasm.ts";

/** The engine's file in the build; main.ts fetches it. */
export const WASM_FILE = "policy.wasm";

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

/**
 * zod's `z` namespace re-exports every message locale (`z.locales`), so a bundle that imports `z`
 * carries all of them (about 300 KiB minified); the simulator uses only English, zod's default.
 * This keeps `z.locales.en` and drops the rest.
 */
const zodEnglishOnly: esbuild.Plugin = {
  name: "zod-english-only",
  setup(build) {
    build.onLoad({ filter: /[\\/]zod[\\/]v4[\\/]locales[\\/]index\.js$/ }, () => ({
      contents: `export { default as en } from "./en.js";`,
      loader: "js",
    }));
  },
};

/** Bundles the simulator; throws when esbuild fails or the bundle references `Deno.*`. */
export async function buildWeb(opts: BuildWebOptions = {}): Promise<BuildWebResult> {
  const started = performance.now();
  const outdir = opts.outdir ?? DIST_DIR;
  let result: esbuild.BuildResult<{ write: false; metafile: true }>;
  try {
    result = await esbuild.build({
      entryPoints: { app: here("app/main.ts"), style: here("style.css") },
      outdir,
      bundle: true,
      write: false,
      format: "esm",
      // Dynamic imports (the CodeMirror editor, live mode) become chunks of their own.
      splitting: true,
      chunkNames: "[name]-[hash]",
      metafile: true,
      platform: "browser",
      target: ["es2022", "chrome110", "firefox115", "safari16"],
      minify: opts.minify ?? true,
      legalComments: "none",
      charset: "utf8",
      logLevel: "silent",
      plugins: [zodEnglishOnly],
    });
  } catch (cause) {
    throw new Error(`Cannot build the web simulator: esbuild failed`, { cause });
  } finally {
    await esbuild.stop();
  }
  const html = withPreloads(await Deno.readTextFile(here("index.html")), result.metafile);
  const outputs = [
    ...result.outputFiles.map((f) => ({ name: basename(f.path), bytes: f.contents })),
    { name: "index.html", bytes: new TextEncoder().encode(html) },
    // The engine as a file of its own (the bytes embedded in policy-wasm, so they are the same).
    { name: WASM_FILE, bytes: await loadPolicyWasm() },
  ];
  for (const o of outputs.filter((o) => o.name.endsWith(".js"))) {
    const hit = /\bDeno\.[A-Za-z]+/.exec(new TextDecoder().decode(o.bytes));
    if (hit) {
      throw new Error(
        `Cannot build the web simulator: the bundle "${o.name}" references "${hit[0]}"`,
      );
    }
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

/**
 * Preloads for everything the first screen needs: app.js's static imports (transitively) and the
 * engine (policy.wasm, compiled while it streams in), so they download in parallel with app.js
 * instead of one round trip after another. The CodeMirror and live-mode chunks load after
 * (main.ts requests CodeMirror at once).
 */
function withPreloads(html: string, meta: esbuild.Metafile): string {
  const outputs = Object.entries(meta.outputs);
  const byPath = new Map(outputs);
  const app = outputs.find(([p]) => basename(p) === "app.js")?.[0];
  const need = new Set<string>();
  const visit = (path: string) => {
    for (const i of byPath.get(path)?.imports ?? []) {
      if (i.kind !== "import-statement" || need.has(i.path)) continue;
      need.add(i.path);
      visit(i.path);
    }
  };
  if (app) visit(app);
  const links = [
    `<link rel="preload" href="${WASM_FILE}" as="fetch" type="application/wasm" crossorigin>`,
    ...[...need].map((p) => `<link rel="modulepreload" href="${basename(p)}">`),
  ];
  const tag = `<script type="module" src="app.js"></script>`;
  if (!html.includes(tag)) {
    throw new Error(`Cannot build the web simulator: index.html has no ${tag}`);
  }
  return html.replace(tag, [...links, tag].join("\n    "));
}

function basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

async function removeStale(dir: string, keep: Set<string>): Promise<void> {
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && !keep.has(e.name)) await Deno.remove(`${dir}/${e.name}`);
  }
}
