// An endpoint made by an older cilia, restored by a new agent against a real lab node: its record
// has no `hostMac` (made before endpoint_info.host_mac) and its host side still has the ff00::/8
// route the kernel gives a link (made before ADD deleted it). The restart reads the MAC from the
// link, stores it and writes it to the endpoint entry (the datapath then answers the pod's
// solicitations for its router, bpf/lib/nd.h) and deletes the route; a current endpoint beside
// it keeps its own. Needs root.
import assert from "node:assert/strict";
import { CiliaNode } from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { openKvStore } from "../../agent/kvstore/kvstore.ts";
import { IPV6_GATEWAY } from "../../agent/endpoint/netdev.ts";

const enc = new TextEncoder(), dec = new TextDecoder();

Deno.test({
  name: "restart: an older endpoint gets its host side's MAC and loses its multicast route",
  ...needsRoot(),
  sanitizeResources: false,
}, async () => {
  await using n = await CiliaNode.create();
  const old = await n.addPod("old", { app: "old" });
  const cur = await n.addPod("cur", { app: "cur" });
  type Host = { name: string; mac: string };
  const oldHost: Host = old.result.interfaces[0], curHost: Host = cur.result.interfaces[0];
  const inNode = (argv: string[]) => n.lab.run(n.node.netns, argv);
  const multicast = async (dev: string) =>
    (await inNode(["ip", "-6", "route", "show", "table", "local", "dev", dev]))
      .split("\n").filter((l) => l.startsWith("multicast ff00::/8"));
  const record = async (name: string) => (await n.call("GET", `/v1/endpoint/default/${name}`)).body;

  // Make "old" what an older cilia left: no hostMac in its record, the multicast route in place.
  assert.equal(await n.stopAgent(), 0);
  const store = await openKvStore(`denokv://${n.dir}/state/kv.sqlite`);
  try {
    const e = (await store.list("cilia/endpoints/")).find((e) =>
      JSON.parse(dec.decode(e.value)).name === "old"
    );
    assert.ok(e, "the old endpoint's record is stored");
    const { hostMac, ...was } = JSON.parse(dec.decode(e.value));
    assert.equal(hostMac, oldHost.mac, "a current ADD records the host side's MAC");
    await store.put(e.key, enc.encode(JSON.stringify(was)));
  } finally {
    await store.close();
  }
  // The kernel's own may still be there (the agent deletes a late one ~100 ms after ADD, and it
  // was stopped at once): one route, as an older cilia left it.
  const route = (op: string) =>
    inNode([
      "ip",
      "-6",
      "route",
      op,
      "multicast",
      "ff00::/8",
      "dev",
      oldHost.name,
      "table",
      "local",
    ]);
  for (let i = 0; i < 4 && (await multicast(oldHost.name)).length > 0; i++) await route("del");
  await route("add");
  assert.equal((await multicast(oldHost.name)).length, 1, "the old endpoint's route is back");

  await n.startAgent();
  assert.equal((await record("old")).hostMac, oldHost.mac, "read from the link at restore");
  assert.equal((await record("cur")).hostMac, curHost.mac, "the current endpoint's is kept");
  assert.deepEqual(await multicast(oldHost.name), [], "the old endpoint's route is deleted");
  assert.deepEqual(await multicast(curHost.name), [], "the current endpoint has none either");
  const reread = await openKvStore(`denokv://${n.dir}/state/kv.sqlite`);
  try {
    const stored = (await reread.list("cilia/endpoints/")).map((e) =>
      JSON.parse(dec.decode(e.value))
    )
      .find((r) => r.name === "old");
    assert.equal(stored?.hostMac, oldHost.mac, "stored, so the next restart reads no link");
  } finally {
    await reread.close();
  }

  // The datapath answers the old pod's solicitation for its router with the host side's MAC.
  const inOld = (argv: string[]) => n.lab.run(old.netns, argv);
  await inOld(["ip", "-6", "neigh", "del", IPV6_GATEWAY, "dev", "eth0"]);
  assert.ok(await n.ping(old.netns, "fd00:200::1", 2), "the old pod reaches the node over IPv6");
  assert.ok(await n.ping(old.netns, cur.ipv6, 2), "and another pod");
  const learned = (JSON.parse(await inOld(["ip", "-j", "-6", "neigh", "show", "dev", "eth0"])) as {
    dst: string;
    lladdr?: string;
  }[]).filter((e) => e.dst === IPV6_GATEWAY).map((e) => e.lladdr);
  assert.deepEqual(learned, [oldHost.mac], "learnt from the datapath's advertisement");
});
