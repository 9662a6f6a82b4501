// NodeDiscovery over an in-memory kvstore, without a kernel: which ipcache entries it wants for
// other nodes and their pods (tunnel endpoints, remote-node addresses, pod CIDRs as world), that
// it ignores this node and its own addresses, and that a deleted endpoint or a node that is gone
// takes its entries with it. The multi-node e2e test covers the kernel side.
import assert from "node:assert/strict";
import type { IpcacheEntry } from "@cilia/policy-wasm";
import { openKvStore } from "../../agent/kvstore/kvstore.ts";
import { Logger } from "../../agent/log.ts";
import { Serial } from "../../agent/_serial.ts";
import { NodeDiscovery } from "../../agent/node/discovery.ts";
import type { IpcacheUpsert } from "../../agent/datapath/datapath.ts";

const enc = new TextEncoder();
const put = (store: { put(k: string, v: Uint8Array): Promise<unknown> }, k: string, v: unknown) =>
  store.put(k, enc.encode(JSON.stringify(v)));

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
    ipcache: (up: IpcacheUpsert[], del: IpcacheEntry[]) => {
      for (const x of del) table.delete(x.prefix);
      for (const x of up) table.set(x.prefix, x);
      return Promise.resolve();
    },
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
    await until(() => !table.has("10.200.2.10") && !table.has("fd00::10"));
    await store.delete("cilia/nodes/n2");
    await until(() => table.size === 0);
    assert.deepEqual(d.list(), []);
  } finally {
    ac.abort();
    await w.done;
    await store.close();
  }
});

async function until(fn: () => boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) assert.fail("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}
