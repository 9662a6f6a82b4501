// A pod's IPv6 egress without its permanent neighbour entry for the router (fe80::1), against a
// real agent in a lab node: the kernel flushes that entry when the pod's link goes down, and a
// runtime that applies the CNI result again (addresses and routes) does not put it back. The
// datapath answers the pod's solicitation (bpf/lib/nd.h), so the pod still reaches the node and
// another pod, and its neighbour table learns the host side's MAC. Needs root.
import assert from "node:assert/strict";
import { CiliaNode } from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { IPV6_GATEWAY } from "../../agent/endpoint/netdev.ts";

Deno.test({
  name: "a pod without its router's neighbour entry: the datapath answers for fe80::1",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  await using n = await CiliaNode.create();
  const a = await n.addPod("a", { app: "a" });
  const b = await n.addPod("b", { app: "b" });
  const hostMac: string = a.result.interfaces[0].mac;
  const inA = (argv: string[]) => n.lab.run(a.netns, argv);
  const router = async () =>
    (JSON.parse(await inA(["ip", "-j", "-6", "neigh", "show", "dev", "eth0"])) as {
      dst: string;
      lladdr?: string;
      state: string[];
    }[]).filter((e) => e.dst === IPV6_GATEWAY).map((e) => [e.lladdr, e.state.join()]);
  const reachesAll = async (what: string) => {
    assert.ok(await n.ping(a.netns, "fd00:200::1", 2), `${what}: the pod reaches the node`);
    assert.ok(await n.ping(a.netns, b.ipv6, 2), `${what}: the pod reaches another pod`);
  };
  const learned = async (what: string) => {
    const [entry, ...rest] = await router();
    assert.deepEqual(rest, [], what);
    assert.equal(entry?.[0], hostMac, `${what}: the host side's MAC, from the advertisement`);
    assert.match(entry?.[1] ?? "", /^(REACHABLE|STALE|DELAY|PROBE)$/, `${what}: ${entry}`);
  };

  await t.step("the permanent entry is there after ADD", async () => {
    assert.deepEqual(await router(), [[hostMac, "PERMANENT"]]);
  });

  await t.step("entry deleted: answered by the datapath", async () => {
    await inA(["ip", "-6", "neigh", "del", IPV6_GATEWAY, "dev", "eth0"]);
    assert.deepEqual(await router(), [], "deleted");
    await reachesAll("deleted");
    await learned("deleted");
  });

  await t.step("table flushed: answered again", async () => {
    await inA(["ip", "-6", "neigh", "flush", "dev", "eth0", "nud", "all"]);
    assert.deepEqual(await router(), [], "flushed");
    await reachesAll("flushed");
    await learned("flushed");
  });

  await t.step("eth0 down and up, the CNI result applied again: IPv6 works", async () => {
    await inA(["ip", "link", "set", "eth0", "down"]);
    await inA(["ip", "link", "set", "eth0", "up"]);
    // What a runtime knows from the result: addresses and routes, no neighbour entry (IPv4
    // addresses survive a link down, IPv6 ones do not: replace, not add).
    assert.deepEqual(await router(), [], "the kernel flushed the permanent entry");
    for (const ip of a.result.ips as { address: string }[]) {
      const v6 = ip.address.includes(":");
      await inA(["ip", "addr", "replace", ip.address, "dev", "eth0", ...(v6 ? ["nodad"] : [])]);
    }
    await inA(["ip", "route", "replace", "10.200.0.1/32", "dev", "eth0", "scope", "link"]);
    for (const r of a.result.routes as { dst: string; gw: string }[]) {
      await inA(["ip", "route", "replace", r.dst, "via", r.gw, "dev", "eth0"]);
    }
    await reachesAll("down/up");
    await learned("down/up");
  });
});
