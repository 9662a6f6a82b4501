// Same snapshot in → byte-identical result out: rule encoding, map-state and query results do not
// depend on instance, history or insertion order; a message with a bad magic, version or length is
// refused with its status by the engine it was sent to, which keeps its state; every message kind
// matches its golden wire fixture (tests/policy/fixtures/wire/, regenerated with
// CILIA_UPDATE_GOLDEN=1, so a format change shows in a diff); the generated tables are current.

import assert from "node:assert/strict";
import {
  compilePolicies,
  loadScenario,
  PolicyEngine,
  PolicyValidationError,
  prepareScenario,
} from "../../policy-wasm/mod.ts";
import { encodeRules } from "../../policy-wasm/src/encode.ts";
import { MAGIC, VERSION } from "../../policy-wasm/src/wire.ts";
import { fingerprint, loadSeeds, seededEngine, STATEFUL } from "../fuzz/_raw_engine.ts";
import { assertGolden } from "../helpers/golden.ts";
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
  assert.equal(new DataView(a.buffer).getUint16(4, true), VERSION, "version");
});

const MESSAGES = [...STATEFUL, "query", "ip_lookup"] as const;

/** `bytes` with `at` set to `value`. */
function patched(bytes: Uint8Array, at: number, value: number): Uint8Array {
  const b = bytes.slice();
  b[at] = value;
  return b;
}

Deno.test("the engine refuses a bad magic, version or truncation with its status and keeps its state", async (t) => {
  const seeds = await loadSeeds();
  const engine = seededEngine(seeds);
  const before = fingerprint(engine, seeds);
  for (const fn of MESSAGES) {
    const good = seeds.messages[fn][0]!;
    assert.equal(new DataView(good.buffer).getUint32(0, true), MAGIC, `${fn} starts with CLIP`);
    const cases: [string, Uint8Array, number][] = [
      ["bad magic", patched(good, 0, good[0]! ^ 0xff), -1],
      ["bad version", patched(good, 4, VERSION + 1), -1],
      ["truncated", good.slice(0, good.length - 3), -2],
      ["empty", new Uint8Array(), -1],
    ];
    for (const [what, bytes, status] of cases) {
      await t.step(`${fn}: ${what} → status ${status}, state unchanged`, () => {
        assert.notDeepEqual(bytes, good);
        assert.deepEqual(engine.send(fn, bytes), { status });
        assert.equal(fingerprint(engine, seeds), before);
      });
    }
  }
  await t.step("the seed messages are still accepted, to the same state", () => {
    for (const [fn, bytes] of seeds.setup) assert.deepEqual(engine.send(fn, bytes), { status: 0 });
    assert.equal(fingerprint(engine, seeds), before);
  });
});

/** `value` with every string equal to `from` replaced by `to` (a deep copy). */
function replaceString<T>(value: T, from: string, to: string): T {
  return JSON.parse(JSON.stringify(value, (_k, v) => v === from ? to : v)) as T;
}

Deno.test("PolicyEngine keeps its rules and map-state when the engine refuses new rules", async () => {
  const engine = await PolicyEngine.create();
  const file = "examples/policies/http-get-public.scenario.yaml";
  const loaded = loadScenario(await Deno.readTextFile(root + file), file);
  const { cluster } = prepareScenario(engine, loaded);
  const spec = engine.spec;
  const mapState = () => JSON.stringify(cluster.endpoints.map((e) => engine.computeMapState(e.id)));
  const before = mapState();
  // A path regex the engine cannot compile, past the TypeScript checks: the engine refuses the
  // rules (status -3) and the facade reports it as a located validation error.
  const bad = replaceString(spec, "/public/.*", "/public/(");
  assert.notDeepEqual(bad, spec);
  assert.throws(
    () => engine.setPolicy(bad),
    (e: unknown) => e instanceof PolicyValidationError && /Invalid path regex/.test(e.message),
  );
  assert.equal(engine.spec, spec);
  assert.equal(mapState(), before);
  engine.close();
});

Deno.test("engine messages match their golden wire fixtures byte for byte", async (t) => {
  // The fuzz seed uses every part of the message format (tests/fuzz/_seed_policy.ts).
  const seeds = await loadSeeds();
  for (const fn of MESSAGES) {
    await t.step(fn, async () => {
      const file = new URL(`./fixtures/wire/${fn}.hex`, import.meta.url);
      await assertGolden(file, `${fn}: the fuzz seed's messages`, seeds.messages[fn]);
    });
  }
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
