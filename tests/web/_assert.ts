// Assertions and example files shared by the web tests. assertEquals compares JSON-canonical
// values (key order and undefined properties ignored), which is what page data needs.

import { type LoadedScenario, loadScenario } from "../../policy-wasm/mod.ts";

function canonical(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === "object") {
    return Object.fromEntries(
      Object.entries(v).filter(([, x]) => x !== undefined).sort(([a], [b]) => a < b ? -1 : 1)
        .map(([k, x]) => [k, canonical(x)]),
    );
  }
  return v;
}

export function assertEquals(actual: unknown, expected: unknown, message = ""): void {
  const a = JSON.stringify(canonical(actual), null, 2);
  const e = JSON.stringify(canonical(expected), null, 2);
  if (a !== e) {
    throw new Error(
      `Values differ${message ? `: ${message}` : ""}\nactual:   ${a}\nexpected: ${e}`,
    );
  }
}

export function assert(cond: unknown, message = "Expected a truthy value"): asserts cond {
  if (!cond) throw new Error(message);
}

const EXAMPLES_DIR = new URL("../../examples/policies/", import.meta.url);

/** Every examples/policies/*.scenario.yaml, loaded. */
export async function exampleScenarios(): Promise<{ name: string; loaded: LoadedScenario }[]> {
  const out: { name: string; loaded: LoadedScenario }[] = [];
  for await (const e of Deno.readDir(EXAMPLES_DIR)) {
    if (!e.isFile || !e.name.endsWith(".scenario.yaml")) continue;
    const text = await Deno.readTextFile(new URL(e.name, EXAMPLES_DIR));
    out.push({ name: e.name, loaded: loadScenario(text, `examples/policies/${e.name}`) });
  }
  if (out.length === 0) throw new Error("Expected scenario files in examples/policies/");
  return out.sort((a, b) => a.name < b.name ? -1 : 1);
}
