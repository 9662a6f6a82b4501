/**
 * The one kvstore conformance suite, run against every backend by its own test file: the
 * caller passes a factory that opens a fresh store on a shared backend. Each step works under
 * its own random key prefix, so steps never see each other's keys.
 */

import { assert, assertEquals, assertMatch, assertNotEquals, assertRejects } from "./_assert.ts";
import {
  type KvEntry,
  type KvStore,
  LeaseExpiredError,
  PUT_ALL_MAX,
  type WatchEvent,
} from "../../agent/kvstore/kvstore.ts";

export type OpenStore = () => Promise<KvStore>;

const enc = new TextEncoder();
const dec = new TextDecoder();
export const bytes = (s: string): Uint8Array => enc.encode(s);
export const text = (e: KvEntry | null): string | null => e === null ? null : dec.decode(e.value);
export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A compact form of an event for comparisons: `put a=1` or `del a`, keys without `root`. */
function show(root: string, e: WatchEvent): string {
  return e.type === "put"
    ? `put ${e.entry.key.slice(root.length)}=${dec.decode(e.entry.value)}`
    : `del ${e.key.slice(root.length)}`;
}

/** Takes events from a watch until there are `count` or `until` says so; fails after `timeoutMs`. */
export async function take(
  store: KvStore,
  prefix: string,
  opts: { after?: string; count?: number; until?: (e: WatchEvent) => boolean; timeoutMs?: number },
): Promise<WatchEvent[]> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), opts.timeoutMs ?? 5000);
  const out: WatchEvent[] = [];
  try {
    const watchOpts = opts.after === undefined
      ? { signal: abort.signal }
      : { signal: abort.signal, after: opts.after };
    for await (const e of store.watch(prefix, watchOpts)) {
      out.push(e);
      if (out.length === opts.count || opts.until?.(e)) return out;
    }
    throw new Error(
      `watch of "${prefix}" ended after ${out.length} events: ${JSON.stringify(out)}`,
    );
  } finally {
    clearTimeout(timer);
  }
}

async function withStore(open: OpenStore, fn: (s: KvStore, root: string) => Promise<void>) {
  const store = await open();
  try {
    await fn(store, `t${crypto.randomUUID().slice(0, 8)}/`);
  } finally {
    await store.close();
  }
}

export async function kvStoreSuite(t: Deno.TestContext, open: OpenStore): Promise<void> {
  const step = (name: string, fn: (s: KvStore, root: string) => Promise<void>) =>
    t.step(name, () => withStore(open, fn));

  await step(
    "put() returns the revision get() reports; delete() says if it existed",
    async (s, r) => {
      assertEquals(await s.get(`${r}a`), null);
      const rev1 = await s.put(`${r}a`, bytes("1"));
      const got = await s.get(`${r}a`);
      assertEquals(got, { key: `${r}a`, value: bytes("1"), revision: rev1 });
      const rev2 = await s.put(`${r}a`, bytes("2"));
      assertNotEquals(rev2, rev1);
      assertEquals(text(await s.get(`${r}a`)), "2");
      assertEquals(await s.delete(`${r}a`), true);
      assertEquals(await s.delete(`${r}a`), false);
      assertEquals(await s.get(`${r}a`), null);
    },
  );

  await step("createIfAbsent() lets exactly one of many racing creators win", async (s, r) => {
    const others = await Promise.all([open(), open()]);
    try {
      const stores = [s, ...others];
      const results = await Promise.all(
        Array.from(
          { length: 24 },
          (_, i) => stores[i % 3]!.createIfAbsent(`${r}id`, bytes(`${i}`)),
        ),
      );
      const winners = results.filter((x) => x.created);
      assertEquals(winners.length, 1);
      for (const x of results) assertEquals(x.entry, winners[0]!.entry);
      assertEquals(await s.get(`${r}id`), winners[0]!.entry);
    } finally {
      await Promise.all(others.map((o) => o.close()));
    }
  });

  await step("createAll() writes every key or none, and racing writers never mix", async (s, r) => {
    const after = await s.cursor();
    assertEquals(
      await s.createAll([{ key: `${r}a`, value: bytes("1") }, { key: `${r}b`, value: bytes("2") }]),
      true,
    );
    assertEquals([text(await s.get(`${r}a`)), text(await s.get(`${r}b`))], ["1", "2"]);
    assertEquals((await s.get(`${r}a`))!.revision, (await s.get(`${r}b`))!.revision, "one write");
    const events = await take(s, r, { after, count: 2 });
    assertEquals(events.map((e) => show(r, e)), ["put a=1", "put b=2"]);
    // One key exists: nothing is written.
    assertEquals(
      await s.createAll([{ key: `${r}c`, value: bytes("3") }, { key: `${r}b`, value: bytes("x") }]),
      false,
    );
    assertEquals([text(await s.get(`${r}c`)), text(await s.get(`${r}b`))], [null, "2"]);
    await assertRejects(
      s.createAll([{ key: `${r}d`, value: bytes("1") }, { key: `${r}d`, value: bytes("2") }]),
      /expected distinct keys/,
    );
    assertEquals(await s.get(`${r}d`), null);
    const others = await Promise.all([open(), open()]);
    try {
      const stores = [s, ...others];
      const won = await Promise.all(Array.from({ length: 12 }, (_, i) =>
        stores[i % 3]!.createAll([
          { key: `${r}x`, value: bytes(`${i}`) },
          { key: `${r}y`, value: bytes(`${i}`) },
        ])));
      assertEquals(won.filter(Boolean).length, 1);
      const winner = String(won.indexOf(true));
      assertEquals([text(await s.get(`${r}x`)), text(await s.get(`${r}y`))], [winner, winner]);
    } finally {
      await Promise.all(others.map((o) => o.close()));
    }
  });

  await step(
    "putAll() writes every key in one write, with the lease, and moves leases",
    async (s, r) => {
      const [old, lease] = [await s.grantLease(30), await s.grantLease(30)];
      await s.put(`${r}a`, bytes("was"), { lease: old });
      const after = await s.cursor();
      const n = PUT_ALL_MAX;
      const entries = Array.from(
        { length: n },
        (_, i) => ({ key: `${r}${i ? i : "a"}`, value: bytes(`${i}`) }),
      );
      await s.putAll(entries, { lease });
      const got = await s.list(r);
      assertEquals(got.length, n);
      assertEquals(got.every((e) => e.lease === lease), true, "every key has the new lease");
      assertEquals(new Set(got.map((e) => e.revision)).size, 1, "one write");
      const events = await take(s, r, { after, count: n });
      assertEquals(events.filter((e) => e.type === "put").length, n);
      // The key moved off the old lease: revoking it leaves the key.
      await s.revokeLease(old);
      assertEquals(text(await s.get(`${r}a`)), "0");
      await assertRejects(
        s.putAll([...entries, { key: `${r}x`, value: bytes("") }]),
        new RegExp(`at most ${PUT_ALL_MAX}`),
      );
      await assertRejects(
        s.putAll([{ key: `${r}d`, value: bytes("1") }, { key: `${r}d`, value: bytes("2") }]),
        /expected distinct keys/,
      );
      // A lease that is gone: nothing is written.
      await s.revokeLease(lease);
      assertEquals(await s.list(r), []);
      const err = await s.putAll([{ key: `${r}y`, value: bytes("") }], { lease }).catch((e) => e);
      assert(err instanceof LeaseExpiredError, String(err));
      assertEquals(await s.get(`${r}y`), null);
    },
  );

  await step("compareAndSwap() writes only over the expected revision", async (s, r) => {
    const k = `${r}k`;
    assertEquals(await s.compareAndSwap(k, null, bytes("1")), true);
    assertEquals(await s.compareAndSwap(k, null, bytes("x")), false);
    const e1 = (await s.get(k))!;
    assertEquals(await s.compareAndSwap(k, e1.revision, bytes("2")), true);
    assertEquals(await s.compareAndSwap(k, e1.revision, bytes("x")), false);
    assertEquals(await s.compareAndSwap(k, "not-a-revision", bytes("x")), false);
    const e2 = (await s.get(k))!;
    assertEquals(text(e2), "2");
    assertEquals(await s.compareAndSwap(k, e2.revision, null), true);
    assertEquals(await s.get(k), null);
    assertEquals(await s.compareAndSwap(k, e2.revision, bytes("x")), false);
  });

  await step("compareAndSwap() increments lose no update under contention", async (s, r) => {
    const k = `${r}n`;
    await s.put(k, bytes("0"));
    const increment = async () => {
      for (let done = 0; done < 10;) {
        const e = (await s.get(k))!;
        if (await s.compareAndSwap(k, e.revision, bytes(`${Number(text(e)) + 1}`))) done++;
      }
    };
    await Promise.all(Array.from({ length: 5 }, increment));
    assertEquals(text(await s.get(k)), "50");
  });

  await step("list() matches a plain prefix and sorts by key", async (s, r) => {
    for (const k of ["p/b", "p/bc", "p/b/x", "p/a", "q/a", "p"]) await s.put(`${r}${k}`, bytes(k));
    const keys = async (p: string) => (await s.list(`${r}${p}`)).map((e) => e.key.slice(r.length));
    assertEquals(await keys("p/b/"), ["p/b/x"]);
    assertEquals(await keys("p/b"), ["p/b", "p/b/x", "p/bc"]);
    assertEquals(await keys("p/"), ["p/a", "p/b", "p/b/x", "p/bc"]);
    assertEquals(await keys("nothing/"), []);
    const [e] = await s.list(`${r}q/`);
    assertEquals(e, await s.get(`${r}q/a`));
  });

  await step(
    "watch() yields puts and deletes in order, only new ones, only under the prefix",
    async (s, r) => {
      await s.put(`${r}w/old`, bytes("0"));
      const events = take(s, `${r}w/`, { count: 4 });
      await sleep(300); // let the watch start: it reports only what comes after
      await s.put(`${r}w/a`, bytes("1"));
      await s.put(`${r}x/a`, bytes("elsewhere"));
      await s.put(`${r}w/b`, bytes("2"));
      await s.delete(`${r}w/a`);
      await s.put(`${r}w/b`, bytes("3"));
      const got = await events;
      assertEquals(got.map((e) => show(r, e)), [
        "put w/a=1",
        "put w/b=2",
        "del w/a",
        "put w/b=3",
      ]);
      const last = got[3]!;
      assert(last.type === "put");
      assertEquals(last.entry, await s.get(`${r}w/b`)); // its revision works for compareAndSwap
    },
  );

  await step(
    "several watches at one position each get every change under their prefix, in order",
    async (s, r) => {
      // Five watches woken together by each write (Deno KV reads the change log once for them),
      // two of them on one prefix: each sees its own events, with bytes of its own.
      const after = await s.cursor();
      const prefixes = ["a/", "b/", "c/", "a/", ""];
      const n = 30;
      const counts = prefixes.map((p) => p === "" ? 3 * n : n);
      const watches = prefixes.map((p, i) =>
        take(s, `${r}${p}`, { after, count: counts[i]!, timeoutMs: 20_000 })
      );
      for (let i = 0; i < n; i++) {
        await Promise.all(["a", "b", "c"].map((k) => s.put(`${r}${k}/${i % 7}`, bytes(`${i}`))));
      }
      const got = (await Promise.all(watches)).map((es) => es.map((e) => show(r, e)));
      for (const [w, p] of prefixes.entries()) {
        const mine = got[w]!;
        assertEquals(mine.length, counts[w]);
        for (const k of p === "" ? ["a", "b", "c"] : [p[0]!]) {
          assertEquals(
            mine.filter((e) => e.startsWith(`put ${k}/`)),
            Array.from({ length: n }, (_, i) => `put ${k}/${i % 7}=${i}`),
            `watch of "${p}", key ${k}`,
          );
        }
      }
      const [one, two] = await Promise.all([0, 3].map((i) => watches[i]!));
      const v1 = (one![0] as { entry: { value: Uint8Array } }).entry.value;
      const v2 = (two![0] as { entry: { value: Uint8Array } }).entry.value;
      v1[0] = 0x7a;
      assertEquals(new TextDecoder().decode(v2), "0");
    },
  );

  await step("watch() resumes from a cursor with exactly the missed events", async (s, r) => {
    const start = await s.cursor();
    await s.put(`${r}a`, bytes("1"));
    await s.put(`${r}b`, bytes("1"));
    const first = await take(s, r, { after: start, count: 2 });
    assertEquals(first.map((e) => show(r, e)), ["put a=1", "put b=1"]);
    await s.delete(`${r}a`); // missed while nobody watched
    await s.put(`${r}c`, bytes("2"));
    await s.put(`${r}b`, bytes("2"));
    const resumed = take(s, r, {
      after: first[1]!.cursor,
      until: (e) => show(r, e) === "put end=",
    });
    await sleep(100);
    await s.put(`${r}end`, bytes(""));
    assertEquals((await resumed).map((e) => show(r, e)), [
      "del a",
      "put c=2",
      "put b=2",
      "put end=",
    ]);
  });

  await step(
    "leases: expiry deletes keys with delete events, keepAlive() keeps them, revoke",
    async (s, r) => {
      const start = await s.cursor();
      const [short, kept] = [await s.grantLease(1), await s.grantLease(1)];
      await s.put(`${r}short/1`, bytes("x"), { lease: short });
      await s.put(`${r}short/2`, bytes("x"), { lease: short });
      await s.put(`${r}kept`, bytes("y"), { lease: kept });
      assertEquals((await s.get(`${r}kept`))!.lease, kept);
      const keeper = setInterval(() => s.keepAlive(kept).catch(() => {}), 200);
      try {
        const expired = await take(s, r, { after: start, count: 5, timeoutMs: 6000 });
        const deletes = expired.slice(3);
        assertEquals(deletes.map((e) => show(r, e)).sort(), ["del short/1", "del short/2"]);
        // A backend may delete both in one revision: a cursor between them must still resume.
        const rest = take(s, r, { after: deletes[0]!.cursor, until: (e) => e.type === "put" });
        await sleep(100);
        await s.put(`${r}mark`, bytes(""));
        assertEquals((await rest).map((e) => show(r, e)), [show(r, deletes[1]!), "put mark="]);
        assertEquals(await s.get(`${r}short/1`), null);
        await assertRejects(s.keepAlive(short), LeaseExpiredError);
        await sleep(1200); // longer than the TTL: only keepAlive() holds it
        assertEquals(text(await s.get(`${r}kept`)), "y");
      } finally {
        clearInterval(keeper);
      }
      const cursor = await s.cursor();
      await s.revokeLease(kept);
      assertEquals(await s.get(`${r}kept`), null);
      const revoked = await take(s, r, { after: cursor, count: 1 });
      assertEquals(revoked.map((e) => show(r, e)), ["del kept"]);
      await s.revokeLease(kept); // already gone: not an error
      const err = await s.put(`${r}late`, bytes("z"), { lease: kept }).catch((e) => e);
      assert(err instanceof LeaseExpiredError, String(err));
      assertMatch(
        err.message,
        new RegExp(`^Cannot put "${r}late" in (etcd|Deno KV) at \\S+: lease "${kept}"`),
      );
    },
  );

  await t.step("close() ends watches and refuses further calls, naming the store", async () => {
    const s = await open();
    const key = `t${crypto.randomUUID().slice(0, 8)}/k`;
    const after = await s.cursor();
    const watching = (async () => {
      const seen: WatchEvent[] = [];
      for await (const e of s.watch("", { after })) seen.push(e);
      return seen;
    })();
    await s.put(key, bytes("1"));
    await sleep(100);
    await s.close();
    const seen = await watching;
    assert(seen.some((e) => e.type === "put" && e.entry.key === key));
    const err = await s.get(key).catch((e) => e);
    assertMatch(
      String(err),
      new RegExp(`Cannot get "${key}" in ${s.name.replace(/[.]/g, "\\.")}: `),
    );
    await s.close(); // twice is fine
  });
}
