import assert from "node:assert/strict";
import { compilePolicies, PolicyValidationError } from "@cilia/policy-wasm";
import { PolicyCompiler } from "../../agent/policy/compiler.ts";
import { splitDocuments } from "../../agent/policy/documents.ts";

const root = new URL("../../", import.meta.url).pathname;

Deno.test("PolicyCompiler compiles in a worker exactly as in place, errors included", async (t) => {
  const text = await Deno.readTextFile(`${root}examples/policies/three-tier.yaml`);
  const sources = [{ text, file: "three-tier.yaml" }];
  const opts = { clusterName: "default", regexCheck: () => undefined };
  const worker = new PolicyCompiler({ ...opts, workerMinBytes: 0 });
  try {
    await t.step("the same spec, warnings and documents", async () => {
      const got = await worker.compile(sources, { split: true });
      const want = compilePolicies(sources, opts);
      assert.deepStrictEqual(got.spec, want.spec);
      assert.deepStrictEqual(got.warnings, want.warnings);
      assert.deepStrictEqual(got.docs, splitDocuments(text));
    });
    await t.step("a bad policy is a PolicyValidationError with its located issues", async () => {
      const bad = [{ text: text.replace('port: "5432"', 'port: "99999"'), file: "bad.yaml" }];
      const issues = (f: () => unknown) =>
        Promise.resolve().then(f).then(
          () => assert.fail("the bad policy compiled"),
          (e) => {
            assert.ok(e instanceof PolicyValidationError, String(e));
            return e.issues;
          },
        );
      assert.deepStrictEqual(
        await issues(() => worker.compile(bad)),
        await issues(() => compilePolicies(bad, opts)),
      );
    });
  } finally {
    worker.close();
  }
});
