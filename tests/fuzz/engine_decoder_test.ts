// Fuzzing the policy engine's message decoders through the bare WASM exports: mutated seed
// messages and random bytes for every export, nonsense length and id arguments, absurd input
// sizes. Properties: no export traps; statuses are the documented ones; a rejected message leaves
// the engine's observable state (map-states, query answers, IP lookups) exactly as it was; an
// accepted one leaves an engine that still answers without trapping.

import { Findings, fuzzSeed, hex, iterations, Rand } from "./_rand.ts";
import { mutateBytes } from "./_mutate_bytes.ts";
import {
  fingerprint,
  isTrap,
  loadSeeds,
  type MessageExport,
  seededEngine,
  STATEFUL,
} from "./_raw_engine.ts";

const seeds = await loadSeeds();
const baseline = fingerprint(seededEngine(seeds), seeds);
const EXPORTS = Object.keys(seeds.messages) as MessageExport[];
const ALL_MESSAGES = EXPORTS.flatMap((fn) => seeds.messages[fn]);
/** Statuses an export may return (wire.ts ST_*). */
const STATUSES = new Set([0, -1, -2, -3, -4, -5, -6]);

Deno.test("engine exports never trap on mutated messages, and a rejected message changes nothing", () => {
  const seed = fuzzSeed(0xdec0de);
  const r = new Rand(seed);
  const found = new Findings();
  let engine = seededEngine(seeds);
  let rejected = 0, accepted = 0;
  const n = iterations(12_000);
  for (let i = 0; i < n; i++) {
    const fn = r.pick(EXPORTS);
    const base = r.chance(0.85) ? r.pick(seeds.messages[fn]) : r.pick(ALL_MESSAGES);
    const [msg, how] = mutateBytes(r, base, ALL_MESSAGES);
    const what = `${fn}(${how}) ${hex(msg, 96)}`;
    const o = engine.send(fn, msg);
    if (isTrap(o)) {
      found.add(`${what}: trapped: ${o.trap}`);
      engine = seededEngine(seeds);
      continue;
    }
    if (!STATUSES.has(o.status)) found.add(`${what}: unknown status ${o.status}`);
    const stateful = (STATEFUL as readonly string[]).includes(fn);
    if (o.status < 0) rejected++;
    else accepted++;
    if (!stateful && i % 25 !== 0) continue;
    let after: string;
    try {
      after = fingerprint(engine, seeds);
    } catch (err) {
      found.add(`${what}: a later call ${(err as Error).message}`);
      engine = seededEngine(seeds);
      continue;
    }
    if (o.status < 0 || !stateful) {
      if (after !== baseline) found.add(`${what}: rejected with ${o.status} but the state changed`);
    } else {
      engine = seededEngine(seeds); // accepted: the state may differ; start over
    }
  }
  found.assertNone("Mutated engine messages", seed);
  // The mutations must exercise both paths, or the test proves nothing.
  if (rejected < n / 4 || accepted < n / 50) {
    throw new Error(`Too few rejected (${rejected}) or accepted (${accepted}) of ${n} messages`);
  }
});

Deno.test("engine exports never trap on nonsense lengths, ids and handles", () => {
  const seed = fuzzSeed(0x1e9);
  const r = new Rand(seed);
  const found = new Findings();
  let engine = seededEngine(seeds);
  const cap = () => engine.x.memory.buffer.byteLength - engine.x.input_reserve(0);
  for (let i = 0; i < iterations(600); i++) {
    const fn = r.pick(EXPORTS);
    const msg = r.pick(seeds.messages[fn]);
    const len = r.pick([
      -1,
      -(2 ** 31),
      0,
      7,
      8,
      msg.length - 1,
      msg.length + 1,
      msg.length + 4096,
      cap(),
      cap() + 1,
      2 ** 31 - 1,
      r.u32() | 0,
    ]);
    const o = engine.send(fn, msg, len);
    const what = `${fn}(len ${len}) of a valid message (${msg.length} bytes)`;
    if (isTrap(o)) {
      found.add(`${what}: trapped: ${o.trap}`);
      engine = seededEngine(seeds);
      continue;
    }
    if (!STATUSES.has(o.status)) found.add(`${what}: unknown status ${o.status}`);
    if (len < msg.length && o.status === 0 && (STATEFUL as readonly string[]).includes(fn)) {
      found.add(`${what}: a truncated message was accepted`);
    }
    if (o.status !== 0 || len !== msg.length) {
      try {
        if (o.status < 0 && fingerprint(engine, seeds) !== baseline) {
          found.add(`${what}: rejected with ${o.status} but the state changed`);
        }
      } catch (err) {
        found.add(`${what}: a later call ${(err as Error).message}`);
      }
      engine = seededEngine(seeds);
    }
  }
  const ids = [0, 1, 2, 256, 999, 0xffffffff, 0x7fffffff, ...seeds.endpointIds];
  for (let i = 0; i < iterations(300); i++) {
    const ep = r.chance(0.7) ? r.pick(ids) : r.u32();
    const id = r.chance(0.7) ? r.pick([...seeds.identityIds, ...ids]) : r.u32();
    const o = r.chance(0.5)
      ? engine.guard(() => engine.x.mapstate_compute(ep))
      : engine.guard(() => engine.x.mapstate_for_identity(ep, id));
    if (isTrap(o)) {
      found.add(`mapstate(${ep}, ${id}) trapped: ${o.trap}`);
      engine = seededEngine(seeds);
    } else if (o.status !== 0 && o.status !== -4 && o.status !== -6) {
      found.add(`mapstate(${ep}, ${id}): unexpected status ${o.status}`);
    }
  }
  for (let i = 0; i < iterations(300); i++) {
    const pattern = new TextEncoder().encode(r.pick(["a+", "(x|y)*z", "[^/]+", ""]));
    const len = r.pick([-1, -(2 ** 31), 0, pattern.length, cap(), cap() + 1, 2 ** 31 - 1]);
    const handle = r.pick([-1, 0, 1, 2 ** 31 - 1, -(2 ** 31), r.u32() | 0]);
    const flags = r.pick([0, 1, 7, -1, 2 ** 31 - 1]);
    const ops: [string, () => number][] = [
      [`regex_compile(len ${len}, flags ${flags})`, () => {
        const ptr = engine.x.input_reserve(pattern.length);
        new Uint8Array(engine.x.memory.buffer, ptr, pattern.length).set(pattern);
        const h = engine.x.regex_compile(len, flags);
        if (h >= 0) engine.x.regex_release(h);
        return h;
      }],
      [`regex_match(${handle}, len ${len})`, () => engine.x.regex_match(handle, len)],
      [`regex_release(${handle})`, () => (engine.x.regex_release(handle), 0)],
      [`regex_error_offset()`, () => engine.x.regex_error_offset()],
    ];
    const [what, op] = r.pick(ops);
    const o = engine.guard(op);
    if (isTrap(o)) {
      found.add(`${what} trapped: ${o.trap}`);
      engine = seededEngine(seeds);
    }
  }
  try {
    if (fingerprint(engine, seeds) !== baseline) {
      found.add("the state changed after read-only calls");
    }
  } catch (err) {
    found.add(`after nonsense arguments, a later call ${(err as Error).message}`);
  }
  found.assertNone("Nonsense export arguments", seed);
});

Deno.test("input_reserve() of an absurd size traps or reserves, and never hangs", async () => {
  const worker = new Worker(new URL("./_reserve_worker.ts", import.meta.url), { type: "module" });
  const sizes = [2 ** 31 - 1, 2 ** 30 + 1, 2 ** 30, -1, -(2 ** 31)];
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const answered = new Promise<string[]>((
      resolve,
    ) => (worker.onmessage = (e) => resolve(e.data)));
    worker.postMessage(sizes);
    const answer = await Promise.race([
      answered,
      new Promise<never>((_, reject) =>
        timer = setTimeout(
          () => reject(new Error(`input_reserve(${sizes.join(" | ")}) did not return within 10 s`)),
          10_000,
        )
      ),
    ]);
    const bad = answer.map((a, i) => [sizes[i], a] as const).filter(([, a]) =>
      a !== "reserved" && !a.startsWith("trap")
    );
    if (bad.length > 0) throw new Error(`input_reserve() answered: ${JSON.stringify(bad)}`);
  } finally {
    clearTimeout(timer);
    worker.terminate();
  }
});
