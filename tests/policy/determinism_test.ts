// Same snapshot in → byte-identical result out: rule encoding, map-state and query results do not
// depend on instance, history or insertion order; and the generated constant tables are current.

import assert from "node:assert/strict";
import {
  compilePolicies,
  loadScenario,
  PolicyEngine,
  prepareScenario,
} from "../../policy-wasm/mod.ts";
import { encodeRules } from "../../policy-wasm/src/encode.ts";
import { OUTPUTS } from "../../scripts/gen/main.ts";

const root = new URL("../../", import.meta.url).pathname;

async function mapStates(file: string, shuffle: boolean): Promise<string> {
  const engine = await PolicyEngine.create();
  const loaded = loadScenario(await Deno.readTextFile(root + file), file);
  if (shuffle) {
    // Load something unrelated first, so the engine's history differs.
    const other = compilePolicies({
      text: await Deno.readTextFile(root + "examples/policies/header-token.yaml"),
    });
    engine.setPolicy(other.spec);
    engine.upsertIdentities([{ id: 4000, labels: ["k8s:x=y"] }]);
  }
  const { cluster } = prepareScenario(engine, loaded);
  const out = JSON.stringify(cluster.endpoints.map((e) => engine.computeMapState(e.id)));
  engine.close();
  return out;
}

Deno.test("map-state is identical across engine instances and histories", async () => {
  for (
    const f of [
      "examples/policies/http-get-public.scenario.yaml",
      "examples/policies/kafka-produce-consume.scenario.yaml",
    ]
  ) {
    const a = await mapStates(f, false);
    const b = await mapStates(f, true);
    assert.equal(a, b, f);
    assert.ok(a.length > 100);
  }
});

Deno.test("encodeRules() is deterministic: same spec, same bytes", async () => {
  const text = await Deno.readTextFile(root + "examples/policies/kafka-produce-consume.yaml");
  const a = encodeRules(compilePolicies({ text }).spec, {
    enforcement: "default",
    allowLocalhost: true,
    clusterName: "default",
  }).bytes;
  const b = encodeRules(compilePolicies({ text }).spec, {
    enforcement: "default",
    allowLocalhost: true,
    clusterName: "default",
  }).bytes;
  assert.deepEqual(a, b);
  assert.equal(new DataView(a.buffer).getUint32(0, true), 0x50494c43, "magic");
  assert.equal(new DataView(a.buffer).getUint16(4, true), 1, "version");
});

Deno.test("the engine refuses messages with a bad magic, version or truncation and keeps its state", async () => {
  const engine = await PolicyEngine.create();
  const spec = compilePolicies({
    text: await Deno.readTextFile(root + "examples/policies/http-get-public.yaml"),
  }).spec;
  engine.setPolicy(spec);
  const { bytes } = encodeRules(spec, engine.options);
  for (
    const broken of [
      bytes.slice(0, bytes.length - 3),
      (() => {
        const b = bytes.slice();
        b[4] = 9;
        return b;
      })(),
    ]
  ) {
    // Reach the raw export through a fresh instance to check the status codes directly.
    const module = await WebAssembly.compile(
      await Deno.readFile(root + "policy-wasm/build/policy.wasm"),
    );
    const inst = new WebAssembly.Instance(module, {});
    const ex = inst.exports as unknown as {
      memory: WebAssembly.Memory;
      input_reserve(n: number): number;
      rules_load(n: number): number;
    };
    const ptr = ex.input_reserve(broken.length);
    new Uint8Array(ex.memory.buffer, ptr, broken.length).set(broken);
    const st = ex.rules_load(broken.length);
    assert.ok(st === -1 || st === -2, `status ${st}`);
  }
  assert.equal(engine.spec, spec);
  engine.close();
});

Deno.test("generated constant tables (C, AssemblyScript, TypeScript) are current", async () => {
  for (const [path, render] of OUTPUTS) {
    assert.equal(
      await Deno.readTextFile(root + path),
      render(),
      `${path} is stale: run "deno task gen"`,
    );
  }
});
