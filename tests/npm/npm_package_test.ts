// The engine as an npm package: `deno task build:npm` output imported by Node.js (the machine's
// node, 20+) from a fresh project, running a scenario and a trace, and type-checked by tsc as a
// TypeScript consumer would.

import assert from "node:assert/strict";
import { buildNpm } from "../../scripts/build_npm.ts";

const root = new URL("../../", import.meta.url).pathname;

const CONSUMER = `
import { PolicyEngine, loadScenario, runScenario, compilePolicies, PolicyValidationError } from "@cilia/policy";
import { readFileSync } from "node:fs";
const engine = await PolicyEngine.create();
const file = process.argv[2];
const report = runScenario(engine, loadScenario(readFileSync(file, "utf8"), file));
let invalid = "";
try {
  compilePolicies({ text: "apiVersion: cilium.io/v2\\nkind: CiliumNetworkPolicy\\nmetadata: {name: x}\\nspec: {endpointSelectr: {}}\\n" });
} catch (e) {
  if (e instanceof PolicyValidationError) invalid = e.issues[0].message;
}
console.log(JSON.stringify({ node: process.version, passed: report.passed, failed: report.failed, verdicts: report.results.map((r) => r.verdict), invalid }));
`;

const TYPED = `
import { PolicyEngine, type QueryResult, type ScenarioReport } from "@cilia/policy";
export async function f(): Promise<QueryResult["verdict"]> {
  const e: PolicyEngine = await PolicyEngine.create();
  const r: ScenarioReport | undefined = undefined;
  void r;
  return e.query({ endpoint: 1, direction: "ingress", peer: 2, proto: 6, port: 80 }).verdict;
}
`;

Deno.test("the npm package runs under Node.js and type-checks for TypeScript consumers", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-npm-" });
  try {
    const dist = await buildNpm({ outdir: `${dir}/dist` });
    await Deno.mkdir(`${dir}/node_modules/@cilia`, { recursive: true });
    await Deno.symlink(dist, `${dir}/node_modules/@cilia/policy`);
    for (const dep of ["zod", "yaml"]) {
      await Deno.symlink(`${root}node_modules/${dep}`, `${dir}/node_modules/${dep}`);
    }
    await Deno.writeTextFile(`${dir}/package.json`, JSON.stringify({ type: "module" }));
    await Deno.writeTextFile(`${dir}/consumer.mjs`, CONSUMER);
    const scenario = `${root}examples/policies/kafka-produce-consume.scenario.yaml`;
    const run = await new Deno.Command("node", {
      args: ["consumer.mjs", scenario],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(run.stderr);
    assert.equal(run.code, 0, err);
    const out = JSON.parse(new TextDecoder().decode(run.stdout));
    assert.match(out.node, /^v(2[0-9]|[3-9][0-9])\./);
    assert.equal(out.failed, 0);
    assert.equal(out.passed, 11);
    assert.deepEqual(out.verdicts.slice(0, 3), ["allowed", "allowed", "denied"]);
    assert.match(out.invalid, /Unknown field "endpointSelectr": did you mean "endpointSelector"\?/);

    await Deno.writeTextFile(`${dir}/typed.ts`, TYPED);
    await Deno.writeTextFile(
      `${dir}/tsconfig.json`,
      JSON.stringify({
        compilerOptions: {
          strict: true,
          noEmit: true,
          module: "nodenext",
          moduleResolution: "nodenext",
          target: "es2022",
          lib: ["es2022", "dom"],
          types: [],
          skipLibCheck: false,
        },
        files: ["typed.ts"],
      }),
    );
    const tsc = await new Deno.Command(`${root}node_modules/.bin/tsc`, {
      args: ["-p", "."],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(tsc.code, 0, new TextDecoder().decode(tsc.stdout));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
