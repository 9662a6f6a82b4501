// The browser simulator as a consumer of the conformance corpus: every case file is opened in
// Chromium through its share link and the verdicts are read from the query rows the page renders
// (`data-testid="query-result"`, `data-verdict`). Expectations live in the corpus.
// A few pages run at once and each opens case after case, the way a user follows one share link
// after another (the app's hashchange: load, then one run on the page's engine); a page's first
// case is its first load. A case whose link the page did not open (no new run) fails.

import type { Page } from "playwright-core";
import { encodeBase64Url, loadScenario } from "../../policy-wasm/mod.ts";
import { conformanceTest, type Consumer } from "../policy_cases/runner.ts";
import { CHROMIUM, queryVerdicts, type Simulator, startSimulator } from "./_fixture.ts";

/** Pages at once: each is a renderer process busy for the whole run, on CI's 2 cores. */
const PAGES = 2;

let sim: Promise<Simulator> | undefined;
/** Pages done with their last case, ready for the next. */
const idle: Page[] = [];

/** Follows the share link `hash` on an open page: resolves once the app has loaded and run it. */
async function follow(page: Page, hash: string): Promise<void> {
  const runs = await page.evaluate((h) =>
    new Promise<number>((resolve, reject) => {
      const before = Number(document.getElementById("app")?.dataset.runs ?? 0);
      const timer = setTimeout(() => reject(new Error(`no hashchange for ${h}`)), 10_000);
      // Registered after the app's own listener, so it runs once the app has loaded the link.
      addEventListener("hashchange", () => {
        clearTimeout(timer);
        resolve(Number(document.getElementById("app")?.dataset.runs ?? 0) - before);
      }, { once: true });
      location.hash = h;
    }), hash);
  if (runs < 1) throw new Error("The simulator did not open the share link (no new run)");
}

const browserConsumer: Consumer = {
  name: "browser simulator (Chromium)",
  needs: { binaries: [CHROMIUM] },
  concurrency: PAGES,
  async run(file, text) {
    const s = await (sim ??= startSimulator());
    const { scenario } = loadScenario(text, file);
    const hash = `#scenario=${encodeBase64Url(new TextEncoder().encode(JSON.stringify(scenario)))}`;
    const reused = idle.pop();
    const page = reused ?? await s.open(hash);
    let ok = false;
    try {
      if (reused) await follow(page, hash);
      const rows = page.getByTestId("query-result");
      await rows.nth(scenario.queries.length - 1).waitFor();
      const verdicts = (await queryVerdicts(page)) as ("allowed" | "denied")[];
      ok = true;
      return { verdicts };
    } finally {
      // A page that failed is not trusted with another case.
      if (ok) idle.push(page);
      else await page.close();
    }
  },
  async close() {
    const s = await sim?.catch(() => undefined);
    sim = undefined;
    idle.length = 0;
    await s?.close();
  },
};

conformanceTest(browserConsumer);
