// The `cilia` executable as a consumer of the conformance corpus: `bin/cilia policy test -o json`
// on every case file, verdicts read back from its JSON output. Expectations live in the corpus.

import { conformanceTest, type Consumer } from "../policy_cases/runner.ts";

const root = new URL("../../", import.meta.url).pathname;

const cliConsumer: Consumer = {
  name: "cilia CLI",
  async run(file) {
    const out = await new Deno.Command(`${root}bin/cilia`, {
      args: ["policy", "test", "-o", "json", `tests/policy_cases/${file}`],
      cwd: root,
      stdout: "piped",
      stderr: "piped",
      env: { CILIA_DENO: Deno.execPath() },
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    if (out.code > 1 || text.trim() === "") {
      throw new Error(
        `cilia policy test exited with ${out.code}: ${new TextDecoder().decode(out.stderr)}`,
      );
    }
    const model = JSON.parse(text) as {
      scenarios: { results: { verdict: "allowed" | "denied"; trace: string[] }[] }[];
    };
    const results = model.scenarios[0]?.results ?? [];
    return { verdicts: results.map((r) => r.verdict), traces: results.map((r) => r.trace) };
  },
};

conformanceTest(cliConsumer);
