// The `cilia` executable as a consumer of the conformance corpus: one `bin/cilia policy test -o json`
// over every case file (the command takes several files and reports each scenario with its file;
// one process instead of one Deno start per file), verdicts read back per file from its JSON
// output. Each file is still its own step, checked against its own expectations; a file the CLI
// could not load fails its step with the CLI's error. Expectations live in the corpus.

import { conformanceTest, type Consumer, type ConsumerResult } from "../policy_cases/runner.ts";

const root = new URL("../../", import.meta.url).pathname;
const path = (file: string) => `tests/policy_cases/${file}`;

interface Model {
  failures: { file: string; message: string }[];
  scenarios: { file?: string; results: { verdict: "allowed" | "denied"; trace: string[] }[] }[];
}

/** Runs `cilia policy test -o json` once over `files`; its model, or why there is none. */
async function policyTest(files: string[]): Promise<Model> {
  const out = await new Deno.Command(`${root}bin/cilia`, {
    args: ["policy", "test", "-o", "json", ...files.map(path)],
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
  return JSON.parse(text) as Model;
}

let files: string[] = [];
let batch: Promise<Model> | undefined;

const cliConsumer: Consumer = {
  name: "cilia CLI",
  prepare(cases) {
    files = cases.map((c) => c.file);
    batch = undefined;
  },
  async run(file): Promise<ConsumerResult> {
    // Started by the first step, so the process belongs to a step (and its sanitizers).
    const model = files.includes(file)
      ? await (batch ??= policyTest(files))
      : await policyTest([file]);
    const errors = model.failures.filter((f) => f.file === path(file));
    if (errors.length > 0) {
      throw new Error(
        `cilia policy test could not run "${file}":\n${errors.map((e) => e.message).join("\n")}`,
      );
    }
    const results = model.scenarios.find((s) => s.file === path(file))?.results ?? [];
    return { verdicts: results.map((r) => r.verdict), traces: results.map((r) => r.trace) };
  },
};

conformanceTest(cliConsumer);
