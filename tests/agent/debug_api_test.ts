// `/v1/debug/*` (agent/api/routes_debug.ts): absent unless `--debug-api true`; with it, a full
// collection on request (what the churn bench judges memory by) and a heap snapshot.

import assert from "node:assert/strict";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { resolveConfig } from "../../agent/config.ts";
import { startAgent } from "./_fixture.ts";
import { diff, groups } from "../../scripts/bench/_heap_diff.ts";

type Gc = { gc?: () => void };

Deno.test("debug API: off by default; --debug-api takes true or false", async () => {
  assert.equal(resolveConfig({ nodeName: "n" }).debugApi, false);
  assert.equal(resolveConfig({ nodeName: "n", debugApi: "true" }).debugApi, true);
  assert.throws(
    () => resolveConfig({ nodeName: "n", debugApi: "yes" }),
    /"debug-api": Expected "true" or "false"/,
  );
  const t = await startAgent();
  try {
    for (const path of ["/v1/debug/gc", "/v1/debug/heap-snapshot"]) {
      const r = await t.call("POST", path);
      assert.equal(r.status, 404, JSON.stringify(r.body));
      assert.equal(r.body.error.code, "not_found");
    }
  } finally {
    await t.close();
  }
});

Deno.test("debug API: a full collection frees garbage and reports memory after it", async () => {
  const t = await startAgent({ config: { debugApi: "true" } });
  const had = (globalThis as Gc).gc;
  try {
    if (had === undefined) {
      // Without --expose-gc the route says why it cannot collect.
      const r = await t.call("POST", "/v1/debug/gc");
      assert.equal(r.status, 501, JSON.stringify(r.body));
      assert.equal(r.body.error.code, "gc_unavailable");
      setFlagsFromString("--expose-gc");
      (globalThis as Gc).gc = runInNewContext("gc") as () => void;
    }
    const before = await t.call("POST", "/v1/debug/gc");
    assert.equal(before.status, 200, JSON.stringify(before.body));
    for (const k of ["rss", "heapUsed", "heapTotal", "external", "wasm", "engineStrings", "gcMs"]) {
      assert.equal(typeof before.body[k], "number", k);
    }
    assert.ok(before.body.heapUsed > 0 && before.body.heapUsed <= before.body.heapTotal);
    // glibc gave its free pages back: the resident set after that is a real figure.
    assert.ok(before.body.rssTrimmed > 0 && before.body.rssTrimmed <= before.body.rss * 1.05);
    // 64 MiB of unreachable arrays: the figure after the collection must not hold them.
    let junk: number[][] | undefined = Array.from({ length: 64 }, () => new Array(131072).fill(1));
    assert.equal(junk.length, 64);
    junk = undefined;
    const after = await t.call("POST", "/v1/debug/gc");
    assert.ok(
      after.body.heapUsed < before.body.heapUsed + 8 * 1024 * 1024,
      `heap after GC ${after.body.heapUsed} vs ${before.body.heapUsed} before the garbage`,
    );
    const snap = await t.call("POST", "/v1/debug/heap-snapshot");
    assert.equal(snap.status, 200, JSON.stringify(snap.body));
    assert.ok(snap.body.path.startsWith(`${t.dir}/state/heap-`), snap.body.path);
    const parsed = JSON.parse(await Deno.readTextFile(snap.body.path));
    assert.ok(parsed.snapshot.node_count > 1000, "a heap snapshot with nodes");
    // What the leak hunt does with two: 5,000 objects kept between them are named, by count.
    class LeakProbe {
      constructor(readonly n: number) {}
    }
    const kept = Array.from({ length: 5000 }, (_, i) => new LeakProbe(i));
    const again = await t.call("POST", "/v1/debug/heap-snapshot");
    const grown = diff(
      groups(parsed),
      groups(JSON.parse(await Deno.readTextFile(again.body.path))),
      1000,
    );
    assert.equal(kept.length, 5000);
    const row = grown.find((l) => l.endsWith("object:LeakProbe"));
    assert.ok(row, grown.slice(0, 10).join("\n"));
    assert.match(row, /^\s*\d+ B\s+5000 #/);
  } finally {
    if (had === undefined) delete (globalThis as Gc).gc;
    await t.close();
  }
});
