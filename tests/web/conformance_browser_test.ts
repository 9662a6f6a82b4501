// The browser simulator as a consumer of the conformance corpus: every case file is opened in
// Chromium through its share link and the verdicts are read from the query rows the page renders
// (`data-testid="query-result"`, `data-verdict`). Expectations live in the corpus.

import { encodeBase64Url, loadScenario } from "../../policy-wasm/mod.ts";
import { conformanceTest, type Consumer } from "../policy_cases/runner.ts";
import { CHROMIUM, queryVerdicts, type Simulator, startSimulator } from "./_fixture.ts";

let sim: Simulator | undefined;

const browserConsumer: Consumer = {
  name: "browser simulator (Chromium)",
  needs: { binaries: [CHROMIUM] },
  async run(file, text) {
    sim ??= await startSimulator();
    const { scenario } = loadScenario(text, file);
    const hash = `#scenario=${encodeBase64Url(new TextEncoder().encode(JSON.stringify(scenario)))}`;
    const page = await sim.open(hash);
    try {
      const rows = page.getByTestId("query-result");
      await rows.nth(scenario.queries.length - 1).waitFor();
      return { verdicts: (await queryVerdicts(page)) as ("allowed" | "denied")[] };
    } finally {
      await page.close();
    }
  },
  async close() {
    await sim?.close();
    sim = undefined;
  },
};

conformanceTest(browserConsumer);
