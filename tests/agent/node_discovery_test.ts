// NodeDiscovery over an in-memory kvstore, without a kernel: which ipcache entries it wants for
// other nodes and their pods (tunnel endpoints, remote-node addresses, pod CIDRs as world), that
// it ignores this node and its own addresses, and that a deleted endpoint or a node that is gone
// takes its entries with it; with a grace period, a lost node keeps them until it ends and one
// back in time loses nothing; native routes go via a node address outside its pod CIDRs, and a
// malformed address or CIDR in a record is skipped. The multi-node e2e tests cover the kernel side.
import assert from "node:assert/strict";
import type { IpcacheEntry } from "@cilia/policy-wasm";
import { openKvStore } from "../../agent/kvstore/kvstore.ts";
import { Logger } from "../../agent/log.ts";
import { Serial } from "../../agent/_serial.ts";
import { NodeDiscovery } from "../../agent/node/discovery.ts";
import type { IpcacheUpsert } from "../../agent/datapath/datapath.ts";
import { until } from "../helpers/until.ts";

const enc = new TextEncoder();
const put = (store: { put(k: string, v: Uint8Array): Promise<unknown> }, k: string, v: unknown) =>
  store.put(k, enc.encode(JSON.stringify(v)));

/** An ipcache sink that keeps the remote entries in `table`, by prefix. */
function intoTable(table: Map<string, IpcacheUpsert>) {
  return (up: IpcacheUpsert[], del: IpcacheEntry[]) => {
    for (const x of del) table.delete(x.prefix);
    for (const x of up) table.set(x.prefix, x);
    return Promise.resolve();
  };
}

Deno.test("NodeDiscovery keeps remote pods and nodes in the ipcache and forgets them", async () => {
  const store = await openKvStore("denokv://:memory:");
  const self = {
    name: "n1",
    ip: "192.0.2.1",
    addresses: ["192.0.2.1", "169.254.1.1"],
    podCidr: "10.200.1.0/24",
    startedAt: "",
  };
  await put(store, "cilia/nodes/n1", self);
  await put(store, "cilia/nodes/n2", {
    name: "n2",
    ip: "192.0.2.2",
    addresses: ["192.0.2.2", "10.200.2.1", "169.254.1.1"],
    podCidr: "10.200.2.0/24",
    startedAt: "",
  });
  await put(store, "cilia/endpoints/n1/1", { node: "n1", identity: 300, ipv4: "10.200.1.10" });
  await put(store, "cilia/endpoints/n2/1", {
    node: "n2",
    identity: 301,
    ipv4: "10.200.2.10",
    ipv6: "fd00::10",
  });
  // A stale record claiming one of this node's pod addresses is never taken as remote.
  await put(store, "cilia/endpoints/n2/2", { node: "n2", identity: 302, ipv4: "10.200.1.99" });

  const table = new Map<string, IpcacheUpsert>();
  const ac = new AbortController();
  const d = new NodeDiscovery({
    store,
    self,
    mode: "tunnel",
    ipcache: intoTable(table),
    gateways: { v4: "10.200.1.1" },
    serial: new Serial(),
    log: new Logger({ level: "error" }),
  });
  const w = d.follow({ signal: ac.signal });
  try {
    await w.ready;
    const view = () =>
      Object.fromEntries([...table].map(([k, v]) => [k, [v.identity, v.tunnelEndpoint]]));
    assert.deepEqual(view(), {
      "192.0.2.2": [6, "192.0.2.2"],
      "10.200.2.1": [6, "192.0.2.2"],
      "10.200.2.0/24": [2, "192.0.2.2"],
      "10.200.2.10": [301, "192.0.2.2"],
      "fd00::10": [301, "192.0.2.2"],
    });
    assert.deepEqual(d.list().map((n) => [n.name, n.endpoints]), [["n2", 2]]);

    await store.delete("cilia/endpoints/n2/1");
    await until(
      "n2's endpoint to leave the ipcache",
      () => !table.has("10.200.2.10") && !table.has("fd00::10"),
    );
    await store.delete("cilia/nodes/n2");
    await until("the ipcache to empty", () => table.size === 0);
    assert.deepEqual(d.list(), []);
  } finally {
    ac.abort();
    await w.done;
    await store.close();
  }
});

Deno.test("NodeDiscovery keeps a lost node's entries for the grace period", async () => {
  const store = await openKvStore("denokv://:memory:");
  const self = { name: "n1", ip: "192.0.2.1", addresses: ["192.0.2.1"], startedAt: "" };
  const n2 = { name: "n2", ip: "192.0.2.2", addresses: ["192.0.2.2"], startedAt: "" };
  await put(store, "cilia/nodes/n2", n2);
  await put(store, "cilia/endpoints/n2/1", { node: "n2", identity: 301, ipv4: "10.200.2.10" });
  const table = new Map<string, IpcacheUpsert>();
  let deletes = 0;
  const ac = new AbortController();
  const d = new NodeDiscovery({
    store,
    self,
    mode: "native",
    ipcache: (up: IpcacheUpsert[], del: IpcacheEntry[]) => {
      deletes += del.length;
      for (const x of del) table.delete(x.prefix);
      for (const x of up) table.set(x.prefix, x);
      return Promise.resolve();
    },
    gateways: {},
    serial: new Serial(),
    log: new Logger({ level: "error" }),
    gracePeriodMs: 400,
  });
  const w = d.follow({ signal: ac.signal });
  const health = () => d.describe([]).map((n) => [n.name, n.health]);
  try {
    await w.ready;
    assert.ok(table.has("10.200.2.10"));
    // Gone and back within the period: nothing is removed.
    await store.delete("cilia/nodes/n2");
    await until("one health entry", () => health().length === 1);
    assert.deepEqual(health(), [["n2", "lost"]]);
    assert.equal(d.list()[0]?.lost?.remainingSeconds, 1);
    await new Promise((r) => setTimeout(r, 200));
    await put(store, "cilia/nodes/n2", n2);
    await until("no health entry", () => health().length === 0);
    await new Promise((r) => setTimeout(r, 400)); // past the period had it still run
    assert.equal(deletes, 0, "nothing removed for a node back in time");
    assert.ok(table.has("10.200.2.10"));
    // Gone for longer: the entries go once the period ends, not before.
    await store.delete("cilia/nodes/n2");
    const lostAt = Date.now();
    await until("10.200.2.10 to leave the ipcache", () => !table.has("10.200.2.10"));
    assert.ok(Date.now() - lostAt >= 350, `removed after ${Date.now() - lostAt} ms`);
    assert.deepEqual([d.list(), health()], [[], []]);
  } finally {
    ac.abort();
    await w.done;
    await store.close();
  }
});

Deno.test("NodeDiscovery routes native IPv6 pod CIDRs via an IPv6 node address, never a pod gateway", async () => {
  const store = await openKvStore("denokv://:memory:");
  const self = { name: "n1", ip: "192.0.2.1", addresses: ["192.0.2.1"], startedAt: "" };
  const node = (name: string, i: number, addresses: unknown[]) =>
    put(store, `cilia/nodes/${name}`, {
      name,
      ip: `192.0.2.${i}`,
      // Sorted as hostAddresses() sorts them: the pod gateway fd00:200:<i>::1 is among them.
      addresses,
      podCidr: `10.200.${i}.0/24`,
      podCidrV6: `fd00:200:${i}::/64`,
      startedAt: "",
    });
  await node("n2", 2, ["10.200.2.1", "192.0.2.2", "2001:db8:200::2", "fd00:200:2::1"]);
  await node("n3", 3, ["fd00:200:3::1", "fe80::3", "not an address", 7, "192.0.2.3"]);
  // A malformed pod CIDR gets no route; the other nodes' routes are unaffected.
  await put(store, "cilia/nodes/n4", {
    name: "n4",
    ip: "192.0.2.4",
    addresses: ["192.0.2.4"],
    podCidr: "10.200.4.0/33",
    startedAt: "",
  });
  const routes: { family: number; cidr: string; via?: string }[][] = [];
  const warned: string[] = [];
  const log = new Logger({ level: "error" });
  log.warn = (msg: string, fields?: Record<string, unknown>) => {
    warned.push(`${msg} ${fields?.cidr}`);
  };
  const ac = new AbortController();
  const d = new NodeDiscovery({
    store,
    self,
    mode: "native",
    ipcache: () => Promise.resolve(),
    routes: { apply: (r) => Promise.resolve(void routes.push(r)) },
    gateways: {},
    serial: new Serial(),
    log,
  });
  const w = d.follow({ signal: ac.signal });
  try {
    await w.ready;
    const last = (routes.at(-1) ?? []).map((r) => `${r.cidr} via ${r.via}`).sort();
    assert.deepEqual(last, [
      "10.200.2.0/24 via 192.0.2.2",
      "10.200.3.0/24 via 192.0.2.3",
      "fd00:200:2::/64 via 2001:db8:200::2",
    ]);
    assert.deepEqual(warned, [
      "no route to a node's pod CIDR: the node has no underlay address fd00:200:3::/64",
    ]);
  } finally {
    ac.abort();
    await w.done;
    await store.close();
  }
});

Deno.test("NodeDiscovery does no work per endpoint of this node (a local ADD recomputes nothing)", async () => {
  const store = await openKvStore("denokv://:memory:");
  const self = { name: "n1", ip: "192.0.2.1", addresses: ["192.0.2.1"], startedAt: "" };
  await put(store, "cilia/nodes/n1", self);
  await put(store, "cilia/nodes/n2", {
    name: "n2",
    ip: "192.0.2.2",
    addresses: ["192.0.2.2"],
    podCidr: "10.200.2.0/24",
    startedAt: "",
  });
  const table = new Map<string, IpcacheUpsert>();
  let syncs = 0; // one routes.apply() per recomputation of the remote entries
  const ac = new AbortController();
  const d = new NodeDiscovery({
    store,
    self,
    mode: "native",
    ipcache: intoTable(table),
    routes: { apply: () => Promise.resolve(void syncs++) },
    gateways: { v4: "10.200.1.1" },
    serial: new Serial(),
    log: new Logger({ level: "error" }),
  });
  const w = d.follow({ signal: ac.signal });
  try {
    await w.ready;
    const before = syncs;
    // Local endpoints come and go (CNI ADDs and DELs), each seen by the watch on its own.
    for (let i = 1; i <= 5; i++) {
      await put(store, `cilia/endpoints/n1/${i}`, {
        node: "n1",
        identity: 300 + i,
        ipv4: `10.200.1.${i}`,
      });
      await new Promise((r) => setTimeout(r, 30));
    }
    await store.delete("cilia/endpoints/n1/1");
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(syncs, before, "a local endpoint's change recomputed the remote entries");
    // A remote endpoint still gets its entry, with one recomputation.
    await put(store, "cilia/endpoints/n2/1", { node: "n2", identity: 401, ipv4: "10.200.2.10" });
    await until("10.200.2.10 with identity 401", () => table.get("10.200.2.10")?.identity === 401);
    assert.equal(syncs, before + 1);
    assert.equal(table.has("10.200.1.2"), false);
  } finally {
    ac.abort();
    await w.done;
    await store.close();
  }
});
