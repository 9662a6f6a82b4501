// The WASM policy engine as a consumer of the conformance corpus (tests/policy_cases/): each case
// file is loaded as a scenario into a fresh PolicyEngine and every query is evaluated with
// runScenario(); the trace lines of the scenario report explain mismatches. This file only adapts
// the engine to the runner; expectations live in the corpus.

import { loadScenario, PolicyEngine, runScenario } from "../../policy-wasm/mod.ts";
import { conformanceTest, type Consumer } from "../policy_cases/runner.ts";

const engineConsumer: Consumer = {
  name: "wasm engine",
  async run(file, text) {
    const loaded = loadScenario(text, `tests/policy_cases/${file}`);
    // A fresh engine per file, so no state leaks from one case into the next.
    const engine = await PolicyEngine.create();
    try {
      const report = runScenario(engine, loaded);
      return {
        verdicts: report.results.map((r) => r.verdict),
        traces: report.results.map((r) => r.trace),
      };
    } finally {
      engine.close();
    }
  },
};

conformanceTest(engineConsumer);
