// identityDiff(): the per-identity diff an identity change makes in one endpoint's map-state. Its
// cost must be the identity's own entries, not the endpoint's: a server that admits every client
// holds one entry per client identity, and each new client (a CNI ADD) diffs it once. The maps
// below count every entry they hand out, so the test fails if the diff walks them.
import assert from "node:assert/strict";
import type { MapStateEntry } from "@cilia/policy-wasm";
import { entryKey, identityDiff, indexEntries } from "../../agent/endpoint/mapstate_diff.ts";

const entry = (
  identity: number,
  port: number,
  verdict: "allow" | "deny" = "allow",
): MapStateEntry => ({
  direction: "ingress",
  identity,
  proto: 6,
  portLo: port,
  portHi: port,
  verdict,
  cookie: 0,
});

/** A Map that counts the entries it is asked for: by key, and by walking it. */
class CountingMap extends Map<string, MapStateEntry> {
  touched = 0;
  override get(key: string): MapStateEntry | undefined {
    this.touched++;
    return super.get(key);
  }
  override *[Symbol.iterator](): MapIterator<[string, MapStateEntry]> {
    for (const kv of super.entries()) {
      this.touched++;
      yield kv;
    }
  }
  override *values(): MapIterator<MapStateEntry> {
    for (const [, v] of this) yield v;
  }
  override *entries(): MapIterator<[string, MapStateEntry]> {
    yield* this[Symbol.iterator]();
  }
}

/** An endpoint's entries with one per peer identity 1000…1000+n-1 (port 8080). */
const endpointWith = (n: number) =>
  new CountingMap(indexEntries(Array.from({ length: n }, (_, i) => entry(1000 + i, 8080))));

Deno.test("identityDiff() of a new identity costs its entries, not the endpoint's", async (t) => {
  const next = [entry(9, 8080), entry(9, 5202), entry(7, 80)]; // identity 7's entry is not in scope
  const touched: number[] = [];
  for (const n of [10, 1_000, 10_000]) {
    await t.step(`${n} entries already there`, () => {
      const current = endpointWith(n);
      const d = identityDiff(current, next, { identity: 9, fresh: true });
      assert.deepEqual(d.adds.map(entryKey), ["ingress/9/6/8080-8080", "ingress/9/6/5202-5202"]);
      assert.deepEqual(d.deletes, []);
      touched.push(current.touched);
    });
  }
  assert.deepEqual(touched, [2, 2, 2], "entries looked at per diff, with 10, 1,000, 10,000 there");
});

Deno.test("identityDiff() of a known identity also deletes its entries that went", () => {
  const current = endpointWith(3);
  current.set(entryKey(entry(1001, 5202)), entry(1001, 5202));
  const d = identityDiff(current, [entry(1001, 8080, "deny")], { identity: 1001, fresh: false });
  assert.deepEqual(d.adds.map((e) => [entryKey(e), e.verdict]), [[
    "ingress/1001/6/8080-8080",
    "deny",
  ]]);
  assert.deepEqual(d.deletes.map(entryKey), ["ingress/1001/6/5202-5202"]);
});

Deno.test("identityDiff() of a new identity leaves out what is already written", () => {
  const current = endpointWith(2);
  current.set(entryKey(entry(9, 8080)), entry(9, 8080));
  const d = identityDiff(current, [entry(9, 8080), entry(9, 53)], { identity: 9, fresh: true });
  assert.deepEqual(d.adds.map(entryKey), ["ingress/9/6/53-53"]);
});
