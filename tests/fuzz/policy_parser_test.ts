// Fuzzing the policy language front end: structured mutations of every valid policy of
// examples/policies and tests/policy_cases (dropped, renamed, duplicated and swapped fields,
// wrong types, huge numbers, unicode, deep nesting) and text mutations of their YAML/JSON
// (duplicate keys, anchors, recursive aliases, alias bombs, truncation) through compilePolicies().
// Properties: it returns a spec or throws PolicyValidationError whose issues all have a message
// and a path; nothing else escapes; each call is fast (alias bombs are bounded); and a spec that
// compiled loads into the engine or is refused with EngineError/PolicyValidationError.

import {
  compilePolicies,
  EngineError,
  lintPolicies,
  loadScenarios,
  PolicyEngine,
  PolicyValidationError,
  runScenario,
} from "../../policy-wasm/mod.ts";
import { Findings, fuzzSeed, iterations, Rand } from "./_rand.ts";
import {
  aliasBomb,
  deepValue,
  type Json,
  mutateText,
  mutateValue,
  policyCorpus,
  scenarioCorpus,
  serialize,
} from "./_mutate_values.ts";

const corpus = await policyCorpus();
const engine = await PolicyEngine.create();
const regexCheck = (p: string) => engine.checkRegex(p);
/** A compile slower than this is a finding (the slowest valid corpus file takes a few ms). */
const SLOW_MS = 1_000;
/** lintPolicies() compares entries pairwise (5000 rules take about 2 s): only runaways count. */
const SLOW_LINT_MS = 5_000;

interface Verdict {
  kind: "spec" | "invalid" | "escaped";
  detail: string;
}

function compileOnce(text: string, found: Findings, what: () => string): Verdict {
  const started = performance.now();
  let v: Verdict;
  try {
    const c = compilePolicies({ text, file: "fuzz.yaml" }, { regexCheck });
    const ms = performance.now() - started;
    if (ms > SLOW_MS) found.add(`${what()}: compilePolicies() took ${Math.round(ms)} ms`);
    v = { kind: "spec", detail: `${c.spec.rules.length} rules` };
    try {
      engine.setPolicy(c.spec);
    } catch (err) {
      if (!(err instanceof EngineError || err instanceof PolicyValidationError)) {
        found.add(
          `${what()}: setPolicy() threw ${(err as Error)?.name}: ${(err as Error)?.message}`,
        );
      }
    }
    const linting = performance.now();
    try {
      lintPolicies(c);
    } catch (err) {
      found.add(
        `${what()}: lintPolicies() threw ${(err as Error)?.name}: ${(err as Error)?.message}`,
      );
    }
    const lintMs = performance.now() - linting;
    if (lintMs > SLOW_LINT_MS) found.add(`${what()}: lintPolicies() took ${Math.round(lintMs)} ms`);
    return v;
  } catch (err) {
    if (err instanceof PolicyValidationError) {
      v = { kind: "invalid", detail: err.message };
      if (err.issues.length === 0) found.add(`${what()}: PolicyValidationError without issues`);
      for (const i of err.issues) {
        if (typeof i.message !== "string" || i.message.trim() === "") {
          found.add(`${what()}: an issue without a message: ${JSON.stringify(i)}`);
        }
        if (typeof i.path !== "string") {
          found.add(`${what()}: an issue without a path: ${JSON.stringify(i)}`);
        }
        if (i.line !== undefined && !(Number.isInteger(i.line) && i.line >= 1)) {
          found.add(`${what()}: an issue with line ${i.line}`);
        }
        if (/\bundefined\b|\[object Object\]/.test(i.message)) {
          found.add(`${what()}: an issue message names a JavaScript value: ${i.message}`);
        }
      }
    } else {
      v = { kind: "escaped", detail: `${(err as Error)?.name}: ${(err as Error)?.message}` };
      found.add(`${what()}: threw ${v.detail.slice(0, 300)}`);
    }
  }
  const ms = performance.now() - started;
  if (ms > SLOW_MS) found.add(`${what()}: compilePolicies() took ${Math.round(ms)} ms`);
  return v;
}

Deno.test("compilePolicies() on mutated policies: a spec or a located PolicyValidationError", () => {
  const seed = fuzzSeed(0x9011c7);
  const r = new Rand(seed);
  const found = new Findings();
  const kinds = { spec: 0, invalid: 0, escaped: 0 };
  for (let i = 0; i < iterations(2_500); i++) {
    let value: Json = structuredClone(r.pick(corpus));
    const how: string[] = [];
    for (let m = r.range(1, 3); m > 0; m--) {
      const [next, desc] = mutateValue(r, value);
      value = next;
      how.push(desc);
    }
    let text = serialize(r, value);
    if (r.chance(0.3)) {
      const [t, desc] = mutateText(r, text);
      text = t;
      how.push(desc);
    }
    const v = compileOnce(
      text,
      found,
      () => `#${i} (${how.join("; ")}) ${JSON.stringify(text.slice(0, 300))}`,
    );
    kinds[v.kind]++;
  }
  found.assertNone("Mutated policies", seed);
  if (kinds.spec < 100 || kinds.invalid < 500) {
    throw new Error(`Too few valid (${kinds.spec}) or invalid (${kinds.invalid}) mutants`);
  }
});

Deno.test("compilePolicies() on hostile documents: bounded, and only PolicyValidationError", async (t) => {
  const found = new Findings();
  const policy = (spec: string, kind = "CiliumNetworkPolicy", api = "cilium.io/v2") =>
    `apiVersion: ${api}\nkind: ${kind}\nmetadata: {name: x}\nspec: ${spec}\n`;
  const cases: [string, string][] = [
    ["alias bomb 9×9", aliasBomb(9, 9)],
    ["alias bomb 30×2", aliasBomb(30, 2)],
    ["alias bomb in spec", aliasBomb(8, 10, "spec")],
    [
      "alias bomb as a List",
      aliasBomb(9, 9, "items").replace("kind: CiliumNetworkPolicy", "kind: List"),
    ],
    ["alias before its anchor", `kind: List\nitems: [*a]\na: &a x\n`],
    ["recursive alias", "a: &a {b: *a}\n"],
    [
      "recursive alias in metadata",
      policy("{endpointSelector: {}}").replace("{name: x}", "&m {name: x, self: *m}"),
    ],
    [
      "recursive alias in a selector",
      policy("{endpointSelector: &s {matchLabels: {a: b}, x: *s}}"),
    ],
    ["recursive alias in toPorts", policy("{endpointSelector: {}, ingress: [&r {toPorts: [*r]}]}")],
    ["kind toString", policy("{}", "toString")],
    ["kind __proto__", policy("{}", "__proto__")],
    ["kind constructor", policy("{}", "constructor")],
    ["kind hasOwnProperty", policy("{}", "hasOwnProperty")],
    ["apiVersion __proto__", policy("{}", "CiliumNetworkPolicy", "__proto__")],
    ["key __proto__", policy("{endpointSelector: {matchLabels: {__proto__: x}}}")],
    [
      "metadata __proto__",
      policy("{endpointSelector: {}}").replace("{name: x}", "{name: x, __proto__: {y: 1}}"),
    ],
    ["deep flow nesting", "[".repeat(20_000) + "]".repeat(20_000)],
    ["deep flow maps", "{a: ".repeat(5_000) + "1" + "}".repeat(5_000)],
    [
      "deep block nesting",
      Array.from({ length: 3000 }, (_, i) => " ".repeat(i) + "- ").join("\n") + "x",
    ],
    ["deep JSON in spec", policy(JSON.stringify(deepValue(new Rand(1), 3000)))],
    [
      "deep JSON in labels",
      policy(`{endpointSelector: {matchLabels: ${JSON.stringify(deepValue(new Rand(2), 2000))}}}`),
    ],
    ["10k documents", "---\n{}\n".repeat(10_000)],
    [
      "5k ingress rules",
      policy(
        `{endpointSelector: {}, ingress: [${
          Array(5000).fill("{fromEntities: [world]}").join(",")
        }]}`,
      ),
    ],
    [
      "huge port",
      policy("{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: 1e400}]}]}]}"),
    ],
    [
      "bigint port",
      policy(
        "{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: 123456789012345678901234567890}]}]}]}",
      ),
    ],
    ["NaN port", policy("{endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: .nan}]}]}]}")],
    ["binary tag", "!!binary aGVsbG8="],
    ["custom tags", policy("!foo {endpointSelector: !bar {}}")],
    ["set and omap tags", policy("!!set {endpointSelector: ~}")],
    ["collection key", "? [a, b]\n: c\n"],
    ["NUL bytes", policy('{endpointSelector: {matchLabels: {"a\\0": "\\0"}}}')],
    ["lone surrogate", policy('{endpointSelector: {matchLabels: {a: "\\ud800"}}}')],
    ["only a BOM", "\ufeff"],
    ["only whitespace", " \n\t\n"],
    ["YAML directive", "%YAML 1.1\n---\n" + policy("{endpointSelector: {}}")],
    ["merge key", policy("{<<: {endpointSelector: {}}}")],
  ];
  for (const [name, text] of cases) {
    await t.step(name, () => {
      const before = found.list.length;
      compileOnce(text, found, () => name);
      if (found.list.length > before) throw new Error(found.list.slice(before).join("\n"));
    });
  }
});

Deno.test("loadScenarios() and runScenario() on mutated scenarios: only the errors the CLI reports", async () => {
  // cli/policy_test.ts prints PolicyValidationError, EngineError, RangeError and SyntaxError as
  // located one-line errors; anything else is a bug.
  const clean = (e: unknown) =>
    e instanceof PolicyValidationError || e instanceof EngineError || e instanceof RangeError ||
    e instanceof SyntaxError;
  const scenarios = await scenarioCorpus();
  const seed = fuzzSeed(0x5ce9);
  const r = new Rand(seed);
  const found = new Findings();
  const hostile = [
    "apiVersion: v1\nkind: {toString: x}\n",
    'apiVersion: v1\nkind: "\\e[2J\\e[31mRed"\n',
    aliasBomb(9, 9, "queries").replace(/^apiVersion.*\nkind.*\n/, ""),
    "name: x\npolicies: [*p]\n",
    "name: x\npolicies: [1, {a: b}, null]\nendpoints: {}\nqueries: [[]]\n",
  ];
  for (const text of hostile) {
    try {
      loadScenarios(text, "hostile.yaml");
      found.add(`${JSON.stringify(text)} loaded`);
    } catch (err) {
      if (!clean(err)) {
        found.add(
          `${JSON.stringify(text)}: threw ${(err as Error)?.name}: ${(err as Error)?.message}`,
        );
      }
      // deno-lint-ignore no-control-regex
      if (/[\x00-\x08\x0b-\x1f]/.test((err as Error).message)) {
        found.add(
          `${JSON.stringify(text)}: a raw control character in ${
            JSON.stringify((err as Error).message)
          }`,
        );
      }
    }
  }
  let ran = 0;
  for (let i = 0; i < iterations(400); i++) {
    let value: Json = structuredClone(r.pick(scenarios));
    const how: string[] = [];
    for (let m = r.int(3); m > 0; m--) {
      const [next, desc] = mutateValue(r, value);
      value = next;
      how.push(desc);
    }
    const text = serialize(r, value);
    const what = () => `#${i} (${how.join("; ")}) ${JSON.stringify(text.slice(0, 200))}`;
    const started = performance.now();
    try {
      for (const loaded of loadScenarios(text, "fuzz.yaml")) {
        const e = await PolicyEngine.create();
        try {
          runScenario(e, loaded);
          ran++;
        } finally {
          e.close();
        }
      }
    } catch (err) {
      if (!clean(err)) {
        found.add(`${what()}: threw ${(err as Error)?.name}: ${(err as Error)?.message}`);
      }
    }
    const ms = performance.now() - started;
    if (ms > SLOW_MS) found.add(`${what()}: took ${Math.round(ms)} ms`);
  }
  found.assertNone("Mutated scenarios", seed);
  if (ran < iterations(400) / 5) throw new Error(`Only ${ran} mutated scenarios ran`);
});

Deno.test({
  name: "compilePolicies() fuzz: closing the engine",
  fn: () => engine.close(),
});
