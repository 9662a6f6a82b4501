// Tests of PolicyEngine.regexSet(): up to 31 patterns compiled into one DFA and matched in one
// pass, one input (match) or a batch of inputs per call (matchBatch). Every mask bit is checked
// against JavaScript's RegExp on random patterns (with assertions, so the DFA's context matters),
// random ASCII and non-ASCII inputs, and a pattern set large enough to flush the DFA cache.

import assert from "node:assert/strict";
import { PolicyEngine, REGEX_SET_MAX } from "../../policy-wasm/mod.ts";
import { prng } from "../helpers/prng.ts";

const engine = await PolicyEngine.create();

function pick<T>(rnd: () => number, items: readonly T[]): T {
  return items[Math.floor(rnd() * items.length)]!;
}

const ATOMS = ["a", "b", ".", "[ab]", "[^a]", "\\w", "é", "[^é]", "/", "[0-9]", "x"];
const QUANTS = ["", "", "", "*", "+", "?", "{2}", "{0,2}", "{1,}"];
const ASSERTS = ["^", "$", "\\b", "\\B"];

function genRegex(rnd: () => number, depth: number): string {
  const alts = rnd() < 0.25 ? 2 : 1;
  const out: string[] = [];
  for (let i = 0; i < alts; i++) {
    let concat = "";
    const n = Math.floor(rnd() * 4);
    for (let j = 0; j < n; j++) {
      const r = rnd();
      if (r < 0.07) {
        concat += pick(rnd, ASSERTS);
        continue;
      }
      const atom = r < 0.25 && depth > 0 ? `(?:${genRegex(rnd, depth - 1)})` : pick(rnd, ATOMS);
      concat += atom + pick(rnd, QUANTS);
    }
    out.push(concat);
  }
  return out.join("|");
}

function genInput(rnd: () => number): string {
  const n = Math.floor(rnd() * 8);
  let s = "";
  for (let i = 0; i < n; i++) s += pick(rnd, ["a", "b", "a", "/", "1", "x", " ", "é", "😀"]);
  return s;
}

/** Full match in JavaScript: sticky at 0 and nothing after. */
function jsFullMatch(pattern: string): (input: string) => boolean {
  const js = new RegExp(`(?:${pattern})(?![^])`, "uy");
  return (input) => {
    js.lastIndex = 0;
    return js.test(input);
  };
}

function jsMask(tests: ((s: string) => boolean)[], input: string): number {
  return tests.reduce((m, t, i) => t(input) ? m | (1 << i) : m, 0);
}

Deno.test("regexSet() sets bit i exactly when pattern i fully matches, as RegExp does", () => {
  const rnd = prng(0x5e75);
  let bits = 0;
  for (let round = 0; round < 150; round++) {
    const n = 1 + Math.floor(rnd() * REGEX_SET_MAX);
    const patterns = Array.from({ length: n }, () => genRegex(rnd, 2));
    const tests = patterns.map(jsFullMatch);
    const inputs = Array.from({ length: 40 }, () => genInput(rnd));
    const set = engine.regexSet(patterns);
    const batch = set.matchBatch(inputs);
    inputs.forEach((input, j) => {
      const want = jsMask(tests, input);
      const what = `${JSON.stringify(patterns)} on ${JSON.stringify(input)}`;
      assert.equal(batch[j], want, `matchBatch: ${what}`);
      assert.equal(set.match(input), want, `match: ${what}`);
      bits += want === 0 ? 0 : 1;
    });
    set.release();
  }
  assert.ok(bits > 1000, `too few matching inputs to mean anything (${bits})`);
});

Deno.test("regexSet() batches: empty inputs, all ASCII, mixed UTF-8, one input", () => {
  const patterns = ["/public/.*", "/api/v[0-9]+/users/[a-z0-9-]+", "GET|HEAD", "[0-9]+", ""];
  const tests = patterns.map(jsFullMatch);
  const set = engine.regexSet(patterns);
  const cases = [
    ["", "/public/", "GET", "12", ""],
    ["/public/é", "", "/api/v2/users/bob", "😀", "HEAD"],
    ["/public/" + "x".repeat(5000)],
    [],
  ];
  for (const inputs of cases) {
    assert.deepEqual([...set.matchBatch(inputs)], inputs.map((s) => jsMask(tests, s)));
  }
  set.release();
});

Deno.test("regexSet() stays right when its DFA cache flushes on long inputs", () => {
  const rnd = prng(0xf105);
  // (a|b)*a(a|b){12} needs 2^13 DFA states: more than the cache holds.
  const patterns = ["[ab]*a[ab]{12}", "[ab]*b[ab]{11}", "(?:ab)*", "[ab]*"];
  const tests = patterns.map(jsFullMatch);
  const set = engine.regexSet(patterns);
  const inputs = Array.from(
    { length: 6 },
    () => Array.from({ length: 3000 }, () => rnd() < 0.5 ? "a" : "b").join(""),
  );
  assert.deepEqual([...set.matchBatch(inputs)], inputs.map((s) => jsMask(tests, s)));
  set.release();
});

Deno.test("regexSet() names the bad pattern and refuses 0 or more than 31", () => {
  assert.throws(
    () => engine.regexSet(["a", "(b"]),
    (e: Error) =>
      e instanceof SyntaxError && e.message.includes('"(b"') &&
      /missing closing \)/.test(e.message),
  );
  assert.throws(() => engine.regexSet([]), RangeError);
  assert.throws(() => engine.regexSet(Array(REGEX_SET_MAX + 1).fill("a")), /expected 1 to 31/);
});

Deno.test("regex_match_batch() refuses bad handles and offsets that decrease or overrun", async () => {
  const url = new URL("../../policy-wasm/build/policy.wasm", import.meta.url);
  const { instance } = await WebAssembly.instantiate(await Deno.readFile(url), {});
  const x = instance.exports as unknown as {
    memory: WebAssembly.Memory;
    input_reserve(len: number): number;
    regex_set_compile(len: number, flags: number): number;
    regex_match_batch(h: number, n: number, len: number): number;
  };
  const write = (words: number[], tail: string) => {
    const bytes = new TextEncoder().encode(tail);
    const ptr = x.input_reserve(4 * words.length + bytes.length);
    const dv = new DataView(x.memory.buffer);
    words.forEach((w, i) => dv.setUint32(ptr + 4 * i, w, true));
    new Uint8Array(x.memory.buffer).set(bytes, ptr + 4 * words.length);
    return 4 * words.length + bytes.length;
  };
  const h = x.regex_set_compile(write([1, 1], "a"), 0);
  assert.ok(h >= 0);
  // A malformed set list (count 2, one pattern) does not compile.
  assert.ok(x.regex_set_compile(write([2, 1], "a"), 0) < 0);
  assert.equal(x.regex_match_batch(h, 2, write([1, 2], "aa")), 2);
  assert.equal(x.regex_match_batch(h + 100, 2, write([1, 2], "aa")), -1);
  assert.equal(x.regex_match_batch(h, 2, write([2, 1], "aa")), -2);
  assert.equal(x.regex_match_batch(h, 2, write([1, 3], "aa")), -2);
  assert.equal(x.regex_match_batch(h, 5, 8), -2);
  assert.equal(x.regex_match_batch(h, -1, 8), -2);
});

Deno.test("a regex set from before a trap refuses to match instead of using another's handle", async () => {
  const Orig = WebAssembly.Instance;
  let trapNext = false;
  (WebAssembly as { Instance: unknown }).Instance = function (
    m: WebAssembly.Module,
    i?: WebAssembly.Imports,
  ) {
    const inst = new Orig(m, i);
    const exports: Record<string, unknown> = { ...inst.exports };
    const query = inst.exports.query as (len: number) => number;
    exports.query = (len: number) => {
      if (!trapNext) return query(len);
      trapNext = false;
      throw new WebAssembly.RuntimeError("unreachable (injected by the test)");
    };
    return { exports };
  };
  try {
    const e = await PolicyEngine.create(
      await Deno.readFile(
        new URL("../../policy-wasm/build/policy.wasm", import.meta.url),
      ),
    );
    const before = e.regexSet(["a"]);
    assert.equal(before.match("a"), 1);
    trapNext = true;
    assert.throws(() =>
      e.query({ endpoint: 1, direction: "ingress", peer: 2, proto: 6, port: 80 })
    );
    const after = e.regexSet(["b"]); // the new instance hands out the same handle number
    assert.equal(after.match("b"), 1);
    assert.throws(() => before.match("b"), /restarted after a trap/);
    assert.throws(() => before.matchBatch(["b"]), /restarted after a trap/);
  } finally {
    (WebAssembly as { Instance: unknown }).Instance = Orig;
  }
});
