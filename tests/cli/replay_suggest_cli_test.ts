// `cilia policy replay` and `cilia policy suggest` as users run them: saved flows (cilia's and
// Hubble's JSON) in, exit codes for CI, -o json, and suggested policies that `policy validate`,
// `policy lint` and (through --scenario-out) `policy test` accept.

import assert from "node:assert/strict";
import { threeTierFlows } from "../policy/_flows.ts";

const root = new URL("../../", import.meta.url).pathname;
const hubble = `${root}tests/policy/fixtures/flows/hubble_starwars.ndjson`;

async function cilia(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command(`${root}bin/cilia`, {
    args,
    cwd: root,
    stdin: "null",
    env: { CILIA_DENO: Deno.execPath(), NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
}

Deno.test("cilia policy replay/suggest: exit codes, -o json, suggestions that validate, lint and test clean", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-replay-" });
  try {
    const flows = `${dir}/flows.json`;
    await Deno.writeTextFile(flows, threeTierFlows());
    const three = `${root}examples/policies/three-tier.yaml`;
    const draft = `${dir}/draft.yaml`;
    await Deno.writeTextFile(
      draft,
      (await Deno.readTextFile(three)).replace('port: "5432"', 'port: "5433"'),
    );

    await t.step("replay: the policy in force changes nothing, exit 0", async () => {
      const r = await cilia(["policy", "replay", "--policy", three, "--input", flows]);
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, /^0 of 6 connection\(s\) would change/m);
    });
    await t.step(
      "replay: a draft that cuts a connection lists it and exits 1; -o json",
      async () => {
        const r = await cilia(["policy", "replay", "--policy", draft, "--input", flows]);
        assert.equal(r.code, 1, r.err);
        assert.match(r.out, /CHANGE\s+CONNECTION\s+FLOWS\s+THE DRAFT SAYS/);
        assert.match(r.out, /newly denied\s+default\/backend -> default\/db TCP\/5432\s+2/);
        const j = await cilia([
          "policy",
          "replay",
          "--policy",
          draft,
          "--input",
          flows,
          "-o",
          "json",
        ]);
        assert.equal(j.code, 1);
        const report = JSON.parse(j.out);
        assert.equal(report.summary.newlyDenied, 1);
        assert.equal(report.changes[0].connection, "default/backend -> default/db TCP/5432");
        assert.ok(report.changes[0].trace.length > 0);
      },
    );
    await t.step("replay: usage errors exit 2", async () => {
      const r = await cilia(["policy", "replay", "--input", flows]);
      assert.equal(r.code, 2);
      assert.match(r.err, /--policy FILE/);
      const n = await cilia(["policy", "replay", "--policy", three]);
      assert.equal(n.code, 2);
      assert.match(n.err, /--input FLOWS.json/);
    });
    await t.step(
      "suggest from Hubble flows: YAML that validates, lints and tests clean",
      async () => {
        const scenario = `${dir}/suggested.scenario.yaml`;
        const r = await cilia(["policy", "suggest", "--input", hubble, "--scenario-out", scenario]);
        assert.equal(r.code, 0, r.err);
        const out = `${dir}/suggested.yaml`;
        await Deno.writeTextFile(out, r.out);
        assert.match(r.out, /kind: CiliumNetworkPolicy/);
        assert.equal((await cilia(["policy", "validate", out])).code, 0);
        const lint = await cilia(["policy", "lint", out]);
        assert.equal(lint.code, 0, lint.out + lint.err);
        const test = await cilia(["policy", "test", scenario]);
        assert.equal(test.code, 0, test.out + test.err);
        assert.match(test.out, /^\d+ passed, 0 failed$/m);
      },
    );
    await t.step("suggest -o json: a list of policies", async () => {
      const r = await cilia(["policy", "suggest", "--input", flows, "-o", "json"]);
      assert.equal(r.code, 0, r.err);
      const names = JSON.parse(r.out).map((p: { metadata: { name: string } }) => p.metadata.name);
      assert.deepEqual(names.sort(), [
        "backend-from-traffic",
        "db-from-traffic",
        "frontend-from-traffic",
      ]);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cilia ui refuses a non-loopback address without --allow-remote", async () => {
  const r = await cilia(["ui", "--listen", "0.0.0.0:0"]);
  assert.equal(r.code, 2);
  assert.match(r.err, /Refusing to listen on "0\.0\.0\.0".*--allow-remote/);
});
