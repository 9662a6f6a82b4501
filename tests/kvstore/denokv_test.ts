import { assertEquals, assertRejects } from "./_assert.ts";
import { openKvStore, WatchCompactedError } from "../../agent/kvstore/kvstore.ts";
import { bytes, kvStoreSuite, sleep, take, text } from "./kvstore_suite.ts";

const FAST = { sweepIntervalMs: 50, pollIntervalMs: 10 };

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cilia-kv-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("Deno KV store passes the kvstore suite", (t) =>
  withTempDir((dir) =>
    kvStoreSuite(t, () => openKvStore(`denokv://${dir}/kv.sqlite`, { denokv: FAST }))
  ));

Deno.test("Deno KV store: two processes doing CAS increments on one file lose no update", () =>
  withTempDir(async (dir) => {
    const url = `denokv://${dir}/kv.sqlite`; // a fresh file that both children open at once
    const perChild = 300;
    const children = [1, 2].map(() =>
      new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--unstable-kv",
          `--allow-read=${dir}`,
          `--allow-write=${dir}`,
          new URL("./_cas_child.ts", import.meta.url).pathname,
          url,
          String(perChild),
          "counter",
        ],
        stdin: "null",
      }).output()
    );
    const outputs = await Promise.all(children);
    for (const o of outputs) assertEquals(o.code, 0, new TextDecoder().decode(o.stderr));
    const store = await openKvStore(url, { denokv: FAST });
    try {
      assertEquals(text(await store.get("counter")), String(2 * perChild));
      // Every change is in the log exactly once: one creation plus every increment, in order.
      assertEquals(await store.cursor(), String(1 + 2 * perChild));
      const events = await take(store, "counter", { after: "0", count: 1 + 2 * perChild });
      assertEquals(
        events.map((e) => e.type === "put" ? text(e.entry) : "?"),
        Array.from({ length: 1 + 2 * perChild }, (_, i) => String(i)),
      );
    } finally {
      await store.close();
    }
  }));

Deno.test("Deno KV store: watch() from a trimmed cursor throws WatchCompactedError", () =>
  withTempDir(async (dir) => {
    const opts = { denokv: { ...FAST, logRetentionMs: 100 } };
    const store = await openKvStore(`denokv://${dir}/kv.sqlite`, opts);
    try {
      const start = await store.cursor();
      await store.put("a", bytes("1"));
      await store.put("a", bytes("2"));
      await sleep(300); // retention is 100 ms: the sweep trims both changes
      await assertRejects(take(store, "", { after: start, count: 1 }), WatchCompactedError);
      const now = await store.cursor();
      await store.put("a", bytes("3"));
      assertEquals((await take(store, "", { after: now, count: 1 }))[0]?.cursor, "3");
    } finally {
      await store.close();
    }
  }));

Deno.test("Deno KV store: a putAll() larger than one commit holds is refused, writing nothing", async () => {
  const store = await openKvStore("denokv://:memory:");
  try {
    const entries = Array.from({ length: 16 }, (_, i) => ({
      key: `big/${i}`,
      value: new Uint8Array(60_000),
    }));
    await assertRejects(store.putAll(entries), /expected at most 786432 bytes in one write/);
    assertEquals(await store.list("big/"), []);
    await store.putAll(entries.slice(0, 6)); // 720 kB: fits
    assertEquals((await store.list("big/")).length, 6);
  } finally {
    await store.close();
  }
});

Deno.test("openKvStore() rejects URLs it cannot use, saying what it expected", async () => {
  await assertRejects(openKvStore("denokv://relative/kv.sqlite"), /expected an absolute path/);
  await assertRejects(openKvStore("etcd://"), /expected "etcd:\/\/host:port/);
  await assertRejects(openKvStore("redis://x"), /starting with "denokv:\/\/" or "etcd:\/\/"/);
  const store = await openKvStore("denokv://:memory:");
  await store.put("k", bytes("v"));
  assertEquals(text(await store.get("k")), "v");
  await store.close();
});
