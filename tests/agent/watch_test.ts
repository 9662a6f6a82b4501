// List-then-watch (agent/_watch.ts): a compacted history or a failed watch lists again so the
// handler converges; a failing handler does not stop the watch. And the node lease: when the
// store loses it, a new one is granted and the identity references and node record come back.

import assert from "node:assert/strict";
import type { KvEntry, KvStore, WatchEvent } from "../../agent/kvstore/kvstore.ts";
import { WatchCompactedError } from "../../agent/kvstore/errors.ts";
import { watchPrefix } from "../../agent/_watch.ts";
import { SILENT } from "../../agent/log.ts";
import { refKey } from "../../agent/identity/keys.ts";
import { endpointBody, eventually, startAgent } from "./_fixture.ts";

const enc = new TextEncoder();
const entry = (key: string, v: string): KvEntry => ({ key, value: enc.encode(v), revision: v });

/** A store whose watch fails in the ways given, one per call, then idles until aborted. */
function fakeStore(data: Map<string, string>, failures: (Error | WatchEvent[])[]): KvStore {
  return {
    name: "fake",
    cursor: () => Promise.resolve("0"),
    list: (prefix: string) =>
      Promise.resolve([...data].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => entry(k, v))),
    async *watch(_prefix: string, opts?: { signal?: AbortSignal }) {
      const next = failures.shift();
      if (next instanceof Error) throw next;
      for (const e of next ?? []) yield e;
      await new Promise<void>((resolve) =>
        opts?.signal?.addEventListener("abort", () => resolve())
      );
    },
  } as unknown as KvStore;
}

Deno.test("watchPrefix: lists again after a compacted history or a failed watch; handler errors are logged", async () => {
  const data = new Map([["p/a", "1"]]);
  const snapshots: string[][] = [];
  const events: string[] = [];
  const store = fakeStore(data, [
    [{ type: "put", entry: entry("p/b", "2"), cursor: "1" }, {
      type: "put",
      entry: entry("p/bad", "x"),
      cursor: "2",
    }],
  ]);
  // The first watch yields two events and then the history is compacted while it idles.
  const abort = new AbortController();
  const w = watchPrefix(store, "p/", {
    snapshot: (entries) => void snapshots.push(entries.map((e) => e.key)),
    event: (e) => {
      if (e.type === "put" && e.entry.key === "p/bad") throw new Error("handler failed");
      events.push(e.type === "put" ? e.entry.key : e.key);
    },
  }, { signal: abort.signal, log: SILENT });
  await w.ready;
  await eventually("the good event", () => events.length === 1);
  abort.abort();
  await w.done;
  assert.deepEqual(snapshots, [["p/a"]]);
  assert.deepEqual(events, ["p/b"], "the failing event was skipped, the watch went on");

  const again: string[][] = [];
  data.set("p/c", "3");
  const store2 = fakeStore(data, [
    new WatchCompactedError("0", "compacted"),
    new Error("stream broke"),
  ]);
  const abort2 = new AbortController();
  const w2 = watchPrefix(store2, "p/", {
    snapshot: (e) => void again.push(e.map((x) => x.key)),
    event: () => {},
  }, {
    signal: abort2.signal,
    log: SILENT,
  });
  await w2.ready;
  await eventually("three listings", () => again.length === 3, 5000);
  abort2.abort();
  await w2.done;
  assert.deepEqual(again, [["p/a", "p/c"], ["p/a", "p/c"], ["p/a", "p/c"]]);
});

Deno.test("node lease: a lost lease is granted anew and the references and node record are put again", async () => {
  const t = await startAgent();
  try {
    const ep = await t.call("PUT", "/v1/endpoint/1", endpointBody("a", { app: "a" }));
    const ref = refKey(ep.body.identity, "node-a");
    const old = t.agent.lease.id;
    await t.agent.store.revokeLease(old);
    assert.equal(await t.agent.store.get(ref), null, "revoking the lease deleted the reference");
    assert.equal(await t.agent.store.get("cilia/nodes/node-a"), null);
    await t.agent.lease.refresh();
    assert.notEqual(t.agent.lease.id, old);
    assert.equal((await t.agent.store.get(ref))?.lease, t.agent.lease.id);
    assert.equal((await t.agent.store.get("cilia/nodes/node-a"))?.lease, t.agent.lease.id);
  } finally {
    await t.close();
  }
});
