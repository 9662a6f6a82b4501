// Agent restarts with the kernel datapath: an open TCP connection between two CNI pods keeps
// working while the agent is down and after it comes back (SIGTERM, then SIGKILL); the programs
// stay attached (same program ids), the maps are reused, not flushed, and policy is still
// enforced on new connections throughout. On start the agent reconciles: an endpoint whose pod
// vanished while it was down is removed, and policy keys nobody owns are deleted. Needs root.
import assert from "node:assert/strict";
import { CiliaNode } from "../cni/_fixture.ts";
import { hexArgs } from "../../agent/datapath/bpftool.ts";
import { encode, LAYOUTS } from "../../agent/datapath/codecs.ts";
import { needsRoot } from "../helpers/root.ts";

/** A timeout for an exchange that must succeed: generous, as a loaded machine is slow. */
const OK_MS = 3000;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`;

Deno.test({
  name: "restart: an open TCP connection survives agent restarts; state is reconciled",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  await using n = await CiliaNode.create();
  await n.policy(POLICY);
  const client = await n.addPod("client", { app: "client" });
  const server = await n.addPod("server", { app: "server" });
  const intruder = await n.addPod("intruder", { app: "intruder" });
  const gone = await n.addPod("gone", { app: "gone" });
  await n.peer(server.netns).listen("tcp", 8080);
  const c = n.peer(client.netns), x = n.peer(intruder.netns);
  assert.ok(await c.open("conn", server.ipv4, 8080), "connection opened");
  assert.ok(await c.send("conn", "hello", OK_MS));

  const serverIf = (await n.call("GET", "/v1/endpoint/default/server")).body.ifname as string;
  const progIds = async () =>
    JSON.parse(
      await n.lab.run(n.node.netns, ["tc", "-j", "filter", "show", "dev", serverIf, "ingress"]),
    ).flatMap((f: { options?: { prog?: { id: number } } }) => f.options?.prog?.id ?? []);
  const before = await progIds();
  assert.equal(before.length, 1);
  const resolved = async () => {
    const { revision: _r, ...rest } = (await n.call("GET", "/v1/policy/resolved/default/server"))
      .body;
    return rest;
  };
  const policyBefore = await resolved();
  const status = async () => (await n.call("GET", "/v1/status")).body;
  assert.deepEqual((await status()).datapath.reused, false);

  const stillEnforced = async (when: string) => {
    assert.ok(await c.send("conn", `during ${when}`, OK_MS), `the open connection works ${when}`);
    assert.ok(await c.probe("tcp", server.ipv4, 8080, OK_MS), `a new allowed connection ${when}`);
    assert.equal(
      await x.probe("tcp", server.ipv4, 8080, 400),
      false,
      `a new denied connection ${when}`,
    );
  };

  await t.step("SIGTERM: enforcement goes on while the agent is down", async () => {
    assert.equal(await n.stopAgent("SIGTERM"), 0, n.log);
    await stillEnforced("while the agent is down");
    // While it is down: a pod goes away, and a policy key nobody owns appears.
    await new Deno.Command("ip", { args: ["netns", "del", gone.netns] }).output();
    const key = encode(LAYOUTS.policyKey, { prefixlen: 64, ep_id: 999, egress: 0, identity: 7 });
    const value = encode(LAYOUTS.policyValue, { verdict: 1 });
    const r = await new Deno.Command("bpftool", {
      args: ["map", "update", "pinned", `${n.bpffs}/maps/cilia_policy`, "key", "hex"]
        .concat(hexArgs(key).split(" "), ["value", "hex"], hexArgs(value).split(" ")),
    }).output();
    assert.equal(r.code, 0);
  });

  await t.step("restart: the maps and programs are reused and reconciled", async () => {
    await n.startAgent();
    const s = await status();
    assert.equal(s.datapath.reused, true);
    assert.deepEqual(await progIds(), before, "the same program stays attached");
    await stillEnforced("after the restart");
    assert.deepEqual(await resolved(), policyBefore);
    const names = ((await n.call("GET", "/v1/endpoint")).body as { name: string }[])
      .map((e) => e.name).sort();
    assert.deepEqual(names, ["client", "intruder", "server"], "the vanished pod is swept");
    const dump = await new Deno.Command("bpftool", {
      args: ["-j", "map", "dump", "pinned", `${n.bpffs}/maps/cilia_policy`],
    }).output();
    const keys = JSON.parse(new TextDecoder().decode(dump.stdout)) as { key: string[] }[];
    const epIds = new Set(
      keys.map((k) => parseInt(k.key[4]!, 16) | (parseInt(k.key[5]!, 16) << 8)),
    );
    assert.ok(!epIds.has(999), "the stray policy key was deleted");
    assert.match(n.log, /"msg":"datapath reconciled".*"policyKeys":[1-9]/);
  });

  await t.step("SIGKILL (a crash) changes nothing either; a new deny still cuts", async () => {
    await n.stopAgent("SIGKILL");
    await stillEnforced("after a crash");
    await n.startAgent();
    await stillEnforced("after the crash and restart");
    await n.policy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cut, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: client}}]
`);
    assert.equal(await c.send("conn", "after the deny", 400), false, "the deny cuts it");
  });
});
