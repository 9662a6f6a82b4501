// NodeDiscovery's work per change, over an in-memory kvstore without a kernel: a change to one
// remote endpoint makes only that endpoint's entries again, and a node's removal or return only
// that node's, however many endpoints the other nodes have. The work is counted where every
// candidate entry passes: the check against this node's own addresses (`self.addresses`), as
// node_discovery_test counts recomputations by `routes.apply()`. An address claimed twice goes
// to the live node over a lost one and to an endpoint over a node address, and a lost node's
// period takes only what nobody else claims; a seeded random walk of endpoint and node changes
// checks that the entries always equal those computed from scratch from the store's records.
import assert from "node:assert/strict";
import type { IpcacheEntry } from "@cilia/policy-wasm";
import { openKvStore } from "../../agent/kvstore/kvstore.ts";
import { Logger } from "../../agent/log.ts";
import { Serial } from "../../agent/_serial.ts";
import { NodeDiscovery } from "../../agent/node/discovery.ts";
import type { IpcacheUpsert } from "../../agent/datapath/datapath.ts";
import { prng } from "../helpers/prng.ts";
import { until } from "../helpers/until.ts";

const enc = new TextEncoder();
type Store = Awaited<ReturnType<typeof openKvStore>>;
const put = (store: Store, k: string, v: unknown) => store.put(k, enc.encode(JSON.stringify(v)));

const node = (i: number, ip = `192.0.2.${i}`) => ({
  name: `n${i}`,
  ip,
  addresses: [ip, `10.200.${i}.1`],
  podCidr: `10.200.${i}.0/24`,
  startedAt: "",
});
const endpoint = (i: number, j: number, identity: number) => ({
  node: `n${i}`,
  identity,
  ipv4: `10.200.${i}.${10 + j}`,
});

/** A NodeDiscovery on `store` for node n1, counting its work and its recomputations. */
function discovery(store: Store, opts: { gracePeriodMs?: number } = {}) {
  const table = new Map<string, IpcacheUpsert>();
  const addresses = ["192.0.2.1"];
  const counts = { checks: 0, syncs: 0, writes: 0 };
  addresses.includes = (
    ip: string,
  ) => (counts.checks++, Array.prototype.includes.call(addresses, ip));
  const d = new NodeDiscovery({
    store,
    self: { name: "n1", ip: "192.0.2.1", addresses, podCidr: "10.200.1.0/24", startedAt: "" },
    mode: "tunnel",
    ipcache: (up: IpcacheUpsert[], del: IpcacheEntry[]) => {
      counts.writes += up.length + del.length;
      for (const x of del) table.delete(x.prefix);
      for (const x of up) table.set(x.prefix, x);
      return Promise.resolve();
    },
    routes: { apply: () => Promise.resolve(void counts.syncs++) },
    gateways: { v4: "10.200.1.1" },
    serial: new Serial(),
    log: new Logger({ level: "error" }),
    ...opts,
  });
  /** Runs a store change and waits for the recomputation it causes; its work and writes. */
  const change = async (op: () => Promise<unknown>) => {
    const before = { ...counts };
    await op();
    await until("a sync after the change", () => counts.syncs > before.syncs);
    return { checks: counts.checks - before.checks, writes: counts.writes - before.writes };
  };
  return { d, table, change };
}

Deno.test("NodeDiscovery: one remote endpoint's change costs its own entries, not the cluster's", async () => {
  const store = await openKvStore("denokv://:memory:");
  const PER_NODE = 200;
  for (const i of [2, 3, 4]) {
    await put(store, `cilia/nodes/n${i}`, node(i));
    for (let j = 0; j < PER_NODE; j++) {
      await put(store, `cilia/endpoints/n${i}/${j}`, endpoint(i, j, 1000 + j));
    }
  }
  const { d, table, change } = discovery(store);
  const ac = new AbortController();
  const w = d.follow({ signal: ac.signal });
  try {
    await w.ready;
    assert.equal(table.size, 3 * (PER_NODE + 3)); // 2 addresses and a pod CIDR per node
    // One endpoint's identity: its one address is checked and written, nothing else.
    let r = await change(() => put(store, "cilia/endpoints/n2/5", endpoint(2, 5, 777)));
    assert.deepEqual(r, { checks: 1, writes: 1 });
    assert.equal(table.get("10.200.2.15")?.identity, 777);
    // A new endpoint, then one deleted: the same.
    r = await change(() => put(store, "cilia/endpoints/n3/999", endpoint(3, 220, 778)));
    assert.deepEqual(r, { checks: 1, writes: 1 });
    r = await change(() => store.delete("cilia/endpoints/n3/0"));
    assert.deepEqual(r, { checks: 0, writes: 1 });
    assert.equal(table.has("10.200.3.10"), false);
    // A node's removal removes exactly its entries, computing nothing.
    const ofN4 = (p: string) => p.startsWith("10.200.4.") || p === "192.0.2.4";
    const others = JSON.stringify([...table].filter(([p]) => !ofN4(p)).sort());
    r = await change(() => store.delete("cilia/nodes/n4"));
    assert.deepEqual(r, { checks: 0, writes: PER_NODE + 3 });
    assert.ok(JSON.stringify([...table].sort()) === others, "only n4's entries went");
    // Its return makes its own entries again (the other nodes' endpoints are not looked at).
    r = await change(() => put(store, "cilia/nodes/n4", node(4)));
    assert.deepEqual(r, { checks: PER_NODE + 3, writes: PER_NODE + 3 });
    // A node's new IP changes its endpoints' tunnel endpoint: its own endpoints only.
    r = await change(() => put(store, "cilia/nodes/n4", node(4, "192.0.2.44")));
    assert.equal(r.checks, PER_NODE + 3);
    assert.equal(table.get("10.200.4.10")?.tunnelEndpoint, "192.0.2.44");
    assert.equal(table.get("10.200.3.10"), undefined);
    assert.equal(table.get("10.200.2.10")?.tunnelEndpoint, "192.0.2.2");
    // The same record written again (a node re-registering) changes nothing.
    r = await change(() => put(store, "cilia/nodes/n4", node(4, "192.0.2.44")));
    assert.ok(r.checks <= 3 && r.writes === 0, JSON.stringify(r));
  } finally {
    ac.abort();
    await w.done;
    await store.close();
  }
});

Deno.test("NodeDiscovery: a live node's claims win over a lost one's, which go with its period", async () => {
  const store = await openKvStore("denokv://:memory:");
  await put(store, "cilia/nodes/n2", node(2));
  await put(store, "cilia/endpoints/n2/1", endpoint(2, 0, 301));
  const { d, table, change } = discovery(store, { gracePeriodMs: 600 });
  const ac = new AbortController();
  const w = d.follow({ signal: ac.signal });
  const view = () =>
    Object.fromEntries([...table].map(([k, v]) => [k, `${v.identity} ${v.tunnelEndpoint}`]));
  try {
    await w.ready;
    // n2's lease goes: it is lost, and nothing is written.
    const r = await change(() => store.delete("cilia/nodes/n2"));
    assert.equal(r.writes, 0);
    // n5 takes over its gateway, pod CIDR and a pod address: the live node's entries win.
    await change(() =>
      put(store, "cilia/nodes/n5", {
        ...node(5),
        addresses: ["192.0.2.5", "10.200.2.1"],
        podCidr: "10.200.2.0/24",
      })
    );
    const pod = { node: "n5", identity: 501, ipv4: "10.200.2.10" };
    await change(() => put(store, "cilia/endpoints/n5/1", pod));
    const both = {
      "192.0.2.2": "6 192.0.2.2",
      "192.0.2.5": "6 192.0.2.5",
      "10.200.2.1": "6 192.0.2.5",
      "10.200.2.0/24": "2 192.0.2.5",
      "10.200.2.10": "501 192.0.2.5",
    };
    assert.deepEqual(view(), both);
    // n2's period ends: only what no one else claims goes (its node address).
    await until("192.0.2.2 to leave the ipcache", () => !table.has("192.0.2.2"), 2000);
    const { ["192.0.2.2"]: _gone, ...rest } = both;
    assert.deepEqual(view(), rest);
    // n5's pod leaves: the address is gone too, nothing of n2's comes back.
    await change(() => store.delete("cilia/endpoints/n5/1"));
    assert.equal(table.has("10.200.2.10"), false);
  } finally {
    ac.abort();
    await w.done;
    await store.close();
  }
});

/** The remote entries from scratch: nodes first, their endpoints over them (tunnel mode). */
function fromScratch(nodes: Map<string, ReturnType<typeof node>>, eps: Map<string, Ep>) {
  const want = new Map<string, [number, string]>();
  const local = (p: string) => p === "192.0.2.1" || p.startsWith("10.200.1.");
  const set = (p: string, id: number, tunnel: string) => !local(p) && want.set(p, [id, tunnel]);
  for (const n of nodes.values()) {
    for (const a of n.addresses) set(a, 6, n.ip);
    set(n.podCidr, 2, n.ip);
  }
  for (const e of eps.values()) {
    const n = nodes.get(e.node);
    if (n) set(e.ipv4, e.identity, n.ip);
  }
  return [...want].sort();
}
type Ep = ReturnType<typeof endpoint>;

Deno.test("NodeDiscovery: a seeded walk of changes always ends in the from-scratch entries", async () => {
  const seed = 12;
  const rand = prng(seed);
  const pick = (n: number) => Math.floor(rand() * n);
  const store = await openKvStore("denokv://:memory:");
  const { d, table, change } = discovery(store);
  const nodes = new Map<string, ReturnType<typeof node>>();
  const eps = new Map<string, Ep>();
  const ac = new AbortController();
  const w = d.follow({ signal: ac.signal });
  const view = () =>
    [...table].map(([p, v]) => [p, [v.identity, v.tunnelEndpoint]] as const).sort();
  try {
    await w.ready;
    for (let step = 0; step < 300; step++) {
      const i = 2 + pick(4), [a, b] = [2 + pick(4), pick(12)];
      const k = `cilia/endpoints/n${a}/${b}`;
      const what = rand();
      if (what < 0.55) {
        // An endpoint: one address per key (no two endpoints tie for one), which for id 0 is
        // node a's gateway (an endpoint's entry wins over a node address); its record may name
        // another node than its key does.
        const e = { node: `n${i}`, identity: 300 + pick(5), ipv4: `10.200.${a}.${b ? 10 + b : 1}` };
        await change(() => put(store, k, e));
        eps.set(k, e);
      } else if (what < 0.75) {
        if (!eps.has(k)) continue;
        await change(() => store.delete(k));
        eps.delete(k);
      } else if (what < 0.92) {
        const n = node(i, `192.0.2.${i + 10 * pick(2)}`);
        await change(() => put(store, `cilia/nodes/n${i}`, n));
        nodes.set(n.name, n);
      } else {
        if (!nodes.has(`n${i}`)) continue;
        await change(() => store.delete(`cilia/nodes/n${i}`));
        nodes.delete(`n${i}`);
      }
      assert.deepEqual(view(), fromScratch(nodes, eps), `seed ${seed}, step ${step}`);
    }
    assert.ok(nodes.size > 0 && eps.size > 5, "the walk left something to compare");
  } finally {
    ac.abort();
    await w.done;
    await store.close();
  }
});
