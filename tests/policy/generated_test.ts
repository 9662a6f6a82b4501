// Generated, not mirrored: the constants that cross the C / WASM / TypeScript boundary (drop
// reasons, verdicts, directions, endpoint and policy flags, policy prefix lengths, policy matches,
// event types, trace points, conntrack states) are defined only by scripts/gen's tables. No
// hand-written header or module defines one of them again. (That the generated files are current is
// checked by determinism_test.ts.)

import assert from "node:assert/strict";
import { CONSTANTS } from "../../scripts/gen/constants.ts";
import { DROP_REASONS, VERDICTS } from "../../scripts/gen/drop_reasons.ts";
import { OUTPUTS } from "../../scripts/gen/main.ts";

const root = new URL("../../", import.meta.url).pathname;

const NAMES = new Set([
  ...CONSTANTS.flatMap((g) => g.rows.map(([name]) => name)),
  ...DROP_REASONS.map(([, name]) => `DROP_${name}`),
  ...VERDICTS.map(([, name]) => `VERDICT_${name}`),
  "VERDICT_NAMES",
]);

async function* sources(dir: string, ext: RegExp): AsyncGenerator<string> {
  for await (const e of Deno.readDir(root + dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) yield* sources(path, ext);
    else if (ext.test(e.name) && !e.name.includes(".generated.")) yield path;
  }
}

/** `path:line: text` of every definition of a generated name in the files under `dirs`. */
async function definitions(dirs: string[], ext: RegExp, define: RegExp): Promise<string[]> {
  const found: string[] = [];
  for (const dir of dirs) {
    for await (const path of sources(dir, ext)) {
      const lines = (await Deno.readTextFile(root + path)).split("\n");
      lines.forEach((line, i) => {
        const name = define.exec(line)?.[1];
        if (name !== undefined && NAMES.has(name)) found.push(`${path}:${i + 1}: ${line.trim()}`);
      });
    }
  }
  return found;
}

Deno.test("generated constants are defined only in the generated files", async (t) => {
  await t.step("every table row has a generated C, AssemblyScript or TypeScript home", () => {
    const outputs = OUTPUTS.map(([, render]) => render()).join("\n");
    for (const name of NAMES) assert.match(outputs, new RegExp(`\\b${name}\\b`), name);
  });
  await t.step("C: no #define of them in bpf/", async () => {
    assert.deepEqual(await definitions(["bpf"], /\.[ch]$/, /^\s*#\s*define\s+(\w+)/), []);
  });
  await t.step("TypeScript and AssemblyScript: no const of them", async () => {
    const dirs = ["agent", "cli", "web/app", "policy-wasm", "scripts", "tests"];
    const found = await definitions(dirs, /\.ts$/, /\bconst\s+(\w+)\s*[:=]/);
    assert.deepEqual(found.filter((f) => !f.startsWith("scripts/gen/")), []);
  });
});
