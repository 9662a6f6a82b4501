// Shared fixture of the browser tests: builds the simulator once per test file into a temp dir
// (never into the source tree; removed when the file's tests end), serves it on 127.0.0.1 with
// the simulator's own handler, and launches the system Chromium through
// playwright-core with the flags that work on this machine (MACHINE.md §6). Everything opened here
// is closed by `close()`; callers call it in `finally`.

import { type BrowserContext, chromium, type Page } from "playwright-core";
import { buildWeb } from "../../scripts/build_web.ts";
import { serveSimulator } from "../../web/mod.ts";

export interface Simulator {
  context: BrowserContext;
  origin: string;
  /** A fresh page on the simulator, ready (engine loaded, first run done). */
  open(hash?: string, viewport?: { width: number; height: number }): Promise<Page>;
  /** URLs the pages requested outside their own origin (must stay empty). */
  foreignRequests: string[];
  /** Uncaught errors and console errors of the pages (must stay empty). */
  pageErrors: string[];
  close(): Promise<void>;
}

/** The system Chromium (Debian package "chromium"). */
export const CHROMIUM = "/usr/bin/chromium";

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

let built: Promise<string> | undefined;

/** The simulator built once for this test file, in a temp dir removed at exit. */
export function builtSimulator(): Promise<string> {
  return built ??= (async () => {
    const outdir = await Deno.makeTempDir({ prefix: "cilia-web-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(outdir, { recursive: true }));
    await buildWeb({ outdir });
    return outdir;
  })();
}

export async function startSimulator(): Promise<Simulator> {
  const root = await builtSimulator();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => serveSimulator(req, { root }),
  );
  const origin = `http://127.0.0.1:${server.addr.port}`;
  const userDataDir = await Deno.makeTempDir({ prefix: "cilia-chromium-" });
  let context: BrowserContext;
  try {
    // playwright passes --user-data-dir itself for a persistent context.
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      args: FLAGS,
      viewport: { width: 1440, height: 900 },
      acceptDownloads: true,
    });
  } catch (e) {
    await server.shutdown();
    await Deno.remove(userDataDir, { recursive: true });
    throw e;
  }
  const foreignRequests: string[] = [];
  const pageErrors: string[] = [];
  const b = context;
  return {
    context: b,
    origin,
    foreignRequests,
    pageErrors,
    async open(hash = "", viewport = { width: 1440, height: 900 }) {
      const page = await b.newPage();
      await page.setViewportSize(viewport);
      page.on("request", (r) => {
        const url = r.url();
        if (!url.startsWith(origin + "/") && !/^(data|blob):/.test(url)) foreignRequests.push(url);
      });
      page.setDefaultTimeout(10_000);
      page.on("pageerror", (e) => pageErrors.push(e.message));
      page.on("console", (m) => {
        if (m.type() === "error") pageErrors.push(m.text());
      });
      await page.goto(`${origin}/index.html${hash}`);
      await waitReady(page);
      return page;
    },
    async close() {
      try {
        await b.close();
      } finally {
        await server.shutdown();
        await Deno.remove(userDataDir, { recursive: true }).catch(() => {});
      }
    },
  };
}

/**
 * Waits until the app has finished at least `runs` runs (default: 1) and CodeMirror (a chunk
 * loaded after the first screen) has replaced the plain editor.
 */
export async function waitReady(page: Page, runs = 1): Promise<void> {
  await page.waitForFunction(
    (n) =>
      Number(document.getElementById("app")?.dataset.runs ?? 0) >= n &&
      document.getElementById("editor")?.dataset.editor !== "plain",
    runs,
  );
}

/** The number of runs the app has done so far. */
export async function runCount(page: Page): Promise<number> {
  return Number(await page.locator("#app").getAttribute("data-runs"));
}

/** `data-verdict` of every query result row, in order. */
export function queryVerdicts(page: Page): Promise<string[]> {
  return page.$$eval(
    "[data-testid=query-result]",
    (rows) => rows.map((r) => (r as HTMLElement).dataset.verdict ?? ""),
  );
}

/** `from>to` → `data-verdict` of every matrix cell. */
export function matrixVerdicts(page: Page): Promise<Record<string, string>> {
  return page.$$eval("[data-testid=matrix-cell]", (cells) =>
    Object.fromEntries(cells.map((c) => {
      const d = (c as HTMLElement).dataset;
      return [`${d.from}>${d.to}`, d.verdict ?? ""];
    })));
}
