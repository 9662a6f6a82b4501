import { assert, assertEquals, assertMatch, assertRejects } from "./_assert.ts";
import { openKvStore, WatchCompactedError } from "../../agent/kvstore/kvstore.ts";
import { startEtcd } from "../helpers/etcd.ts";
import { needs } from "../helpers/root.ts";

const needsEtcd = needs({ binaries: ["etcd"] });
import { bytes, kvStoreSuite, sleep, take, text } from "./kvstore_suite.ts";

Deno.test("etcd store passes the kvstore suite", needsEtcd, async (t) => {
  const etcd = await startEtcd();
  try {
    await kvStoreSuite(t, () => openKvStore(etcd.url));
  } finally {
    await etcd.stop();
  }
});

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

Deno.test(
  "etcd store: fails over to the next endpoint and names them all when none answers",
  needsEtcd,
  async () => {
    const etcd = await startEtcd();
    const dead = `127.0.0.1:${freePort()}`;
    try {
      const store = await openKvStore(`etcd://${dead},${etcd.endpoints}`);
      await store.put("k", bytes("v"));
      assertEquals(text(await store.get("k")), "v");
      await store.close();
    } finally {
      await etcd.stop();
    }
    const err = await openKvStore(`etcd://${dead}`).catch((e) => e);
    assertMatch(
      String(err),
      new RegExp(`Cannot read cursor "" in etcd at ${dead}: no endpoint accepted`),
    );
  },
);

Deno.test(
  "etcd store: a watch whose stream breaks reconnects from its cursor and loses no event",
  needsEtcd,
  async () => {
    // A TCP proxy between store and etcd drops every connection, as a flaky network would.
    const etcd = await startEtcd();
    const proxy = tcpProxy(etcd.endpoints);
    const store = await openKvStore(`etcd://${proxy.endpoint}`);
    try {
      const start = await store.cursor();
      const events = take(store, "w/", { after: start, count: 4, timeoutMs: 8000 });
      await store.put("w/1", bytes("1"));
      await sleep(100);
      proxy.cutAll(); // the watch stream breaks; the watch reconnects from its last cursor
      await store.put("w/2", bytes("2"));
      await store.put("w/3", bytes("3"));
      await sleep(200); // reconnected by now
      proxy.cutAll();
      await store.put("w/4", bytes("4"));
      const got = await events;
      assertEquals(got.map((e) => e.type === "put" ? text(e.entry) : "?").join(","), "1,2,3,4");
    } finally {
      await store.close();
      await proxy.close();
      await etcd.stop();
    }
  },
);

Deno.test(
  "etcd store: close() ends a watch that keeps reconnecting to a stopped etcd",
  needsEtcd,
  async () => {
    const etcd = await startEtcd();
    const store = await openKvStore(etcd.url);
    try {
      const seen: string[] = [];
      const after = await store.cursor();
      const watching = (async () => {
        for await (const e of store.watch("k", { after })) seen.push(e.cursor);
      })();
      await store.put("k", bytes("1"));
      for (let i = 0; i < 500 && seen.length === 0; i++) await sleep(10);
      await etcd.stop(); // the stream breaks and every reconnect fails from now on
      await sleep(300);
      const t0 = Date.now();
      await store.close();
      await watching;
      assertEquals(seen.length, 1);
      assert(Date.now() - t0 < 200, `close() took ${Date.now() - t0} ms`);
    } finally {
      await store.close();
      await etcd.stop();
    }
  },
);

Deno.test(
  "etcd store: watch() from a compacted cursor throws WatchCompactedError",
  needsEtcd,
  async () => {
    const etcd = await startEtcd();
    const store = await openKvStore(etcd.url);
    try {
      const start = await store.cursor();
      await store.put("a", bytes("1"));
      const rev = await store.put("a", bytes("2"));
      const res = await fetch(`http://${etcd.endpoints}/v3/kv/compaction`, {
        method: "POST",
        body: JSON.stringify({ revision: rev, physical: true }),
      });
      await res.body?.cancel();
      await assertRejects(take(store, "", { after: start, count: 1 }), WatchCompactedError);
    } finally {
      await store.close();
      await etcd.stop();
    }
  },
);

/** Forwards TCP connections to `target`; `cutAll()` drops the open ones, like a flaky network. */
function tcpProxy(target: string) {
  const [hostname, port] = target.split(":") as [string, string];
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  const pipes = new Set<Promise<unknown>>();
  const serve = (async () => {
    for await (const conn of listener) {
      const upstream = await Deno.connect({ hostname, port: Number(port) });
      open.add(conn).add(upstream);
      const pipe = Promise.allSettled([
        conn.readable.pipeTo(upstream.writable),
        upstream.readable.pipeTo(conn.writable),
      ]).finally(() => {
        open.delete(conn);
        open.delete(upstream);
        pipes.delete(pipe);
      });
      pipes.add(pipe);
    }
  })();
  const cutAll = () => {
    for (const c of open) {
      try {
        c.close();
      } catch {
        // already closed by its pipe
      }
    }
  };
  return {
    endpoint: `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    cutAll,
    async close() {
      listener.close();
      cutAll();
      await serve.catch(() => {});
      await Promise.allSettled([...pipes]);
    },
  };
}
