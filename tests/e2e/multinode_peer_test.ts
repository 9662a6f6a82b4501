// Native routing's receive side past the destination's veth pair (bpf/lib/peer.h, 4.): a packet
// from another node's pod is enforced by the destination endpoint's ingress policy at the
// underlay's ingress (host.o's tail call) and put straight into the pod's netns, so the pod's
// host-side veth transmits nothing for it. A denied remote source is still dropped with reason
// 133 and its identity and labels; an L7-redirected port still reaches node 2's proxy (200 for
// what the HTTP rule allows, 403 for the rest); with host.o's tail-call array emptied, the path
// before this one (the veth's egress program) decides, with the same verdicts. The way there
// skips the FIB (bpf/lib/tunnel.h, 5.): node 2's cilia_lxc_ipv4 holds b's address with its
// veth and MACs while b exists (gone with a deleted pod's), and a ping to b still gets through
// with a blackhole route for b's address on node 2 (a policy rule), until that entry is deleted
// by hand; without the route, the FIB delivers again. Needs root and etcd.
import assert from "node:assert/strict";
import { Cluster, type ClusterNode, eventually, POLICY_B_FROM_A } from "../helpers/cluster.ts";
import { KERNEL_TOOLS, needs } from "../helpers/root.ts";
import type { Lab } from "../helpers/netns.ts";
import { BpfTool, bytesFromHex } from "../../agent/datapath/bpftool.ts";
import { decode, LAYOUTS, num } from "../../agent/datapath/codecs.ts";

const PINGS = 10;

const SERVER = `
Deno.serve({ hostname: "0.0.0.0", port: 8080, onListen() {} }, (req) =>
  new Response(\`path=\${new URL(req.url).pathname}\\n\`));
`;

/** b admits a on every port, and its HTTP on 8080 only for GET /public (node 2's proxy). */
const L7 = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-from-a, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: /public}]
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts:
    - ports: [{port: "9090", protocol: TCP}]
`;

/** A link's packet counters in a netns. */
async function counters(lab: Lab, netns: string, dev: string) {
  const [l] = JSON.parse(await lab.run(netns, ["ip", "-s", "-j", "link", "show", "dev", dev]));
  const s = l.stats64 ?? l.stats;
  return { rx: s.rx.packets as number, tx: s.tx.packets as number };
}

/** A link's ifindex and MAC in a netns. */
async function link(lab: Lab, netns: string, dev: string) {
  const [l] = JSON.parse(await lab.run(netns, ["ip", "-j", "link", "show", "dev", dev]));
  return { ifindex: l.ifindex as number, mac: l.address as string };
}

const macText = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join(":");

/** A node's cilia_lxc_ipv4 (bpf/lib/endpoint.h) as address → { ifindex, mac, hostMac }. */
async function lxcIpv4(node: ClusterNode) {
  const out = new Map<string, { ifindex: number; mac: string; hostMac: string }>();
  const dump = await new BpfTool().mapDump(`${node.node.bpffs}/cilia/maps/cilia_lxc_ipv4`);
  for (const e of dump) {
    if (!e.value) continue;
    const v = decode(LAYOUTS.lxcIpv4Info, bytesFromHex(e.value));
    out.set([...bytesFromHex(e.key)].join("."), {
      ifindex: num(v.ifindex),
      mac: macText(v.mac as Uint8Array),
      hostMac: macText(v.host_mac as Uint8Array),
    });
  }
  return out;
}

/** The host-side veth of a pod (the CNI result's first interface). */
const hostVeth = (result: Record<string, unknown>) =>
  (result.interfaces as { name: string }[])[0]!.name;

Deno.test({
  name: "multinode peer: natively routed packets enter the pod past its veth pair, policy intact",
  ...needs({ root: true, binaries: [...KERNEL_TOOLS, "etcd", "curl", "bpftool"] }),
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  await using cluster = await Cluster.create({ nodes: 2, routingMode: "native" });
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const lab = cluster.lab;
  const a = await n1.addPod("a", { app: "a" });
  const c = await n1.addPod("c", { app: "c" });
  const b = await n2.addPod("b", { app: "b" });
  const bVeth = hostVeth(b.result);
  const identity = async (name: string) =>
    ((await n1.call("GET", `/v1/endpoint/default/${name}`)).body as { identity: number })
      .identity;
  const idC = await identity("c");
  await n2.policy(POLICY_B_FROM_A);
  await eventually("a reaches b", () => lab.ping(a.netns, b.ipv4, { timeoutSec: 0.3 }), 15_000);

  /** PINGS pings a → b: the replies, and what b's host veth sent and its eth0 received. */
  const pingsThrough = async () => {
    const v0 = await counters(lab, n2.node.netns, bVeth);
    const p0 = await counters(lab, b.netns, "eth0");
    const r = await lab.exec(a.netns, [
      "ping",
      "-c",
      String(PINGS),
      "-i",
      "0.02",
      "-W",
      "1",
      b.ipv4,
    ]);
    const v1 = await counters(lab, n2.node.netns, bVeth);
    const p1 = await counters(lab, b.netns, "eth0");
    const replies = Number(/(\d+) received/.exec(r.stdout)?.[1] ?? 0);
    return { replies, vethTx: v1.tx - v0.tx, podRx: p1.rx - p0.rx };
  };

  const deniedWithLabels = async (since: number) => {
    assert.equal(await lab.peer(c.netns).probe("tcp", b.ipv4, 9090, 400), false, "c → b denied");
    await eventually(
      "a drop flow (133) for c → b on node-2 with c's identity and labels",
      async () =>
        (await n2.flows({ verdict: "DROPPED" })).some((f) =>
          Date.parse(f.time) >= since - 50 && f.drop_reason === 133 &&
          f.source.identity === idC && f.source.labels.includes("k8s:app=c") &&
          f.traffic_direction === "INGRESS"
        ),
      3000,
    );
  };

  await t.step(
    "b's host veth transmits nothing: its ingress policy ran at the underlay",
    async () => {
      const s = await pingsThrough();
      assert.equal(s.replies, PINGS, "allowed: a → b");
      // The veth pair's path transmits every request on b's host veth; a stray ARP may still.
      assert.ok(s.vethTx <= 2, `b's host veth sent ${s.vethTx} packets`);
      assert.ok(s.podRx >= PINGS, `b received ${s.podRx}`);
    },
  );

  await t.step("a denied remote source: reason 133 with its identity and labels", async () => {
    await lab.peer(b.netns).listen("tcp", 9090);
    assert.ok(await lab.peer(a.netns).probe("tcp", b.ipv4, 9090, 3000), "a → b:9090 allowed");
    await deniedWithLabels(Date.now());
  });

  await t.step("an L7-redirected port still reaches node 2's proxy", async () => {
    await Deno.writeTextFile(`${lab.dir}/server.ts`, SERVER);
    lab.spawn(["ip", "netns", "exec", b.netns, Deno.execPath(), "run", "-A", "--no-config"]
      .concat(`${lab.dir}/server.ts`));
    await n2.policy(L7);
    const curl = async (path: string) =>
      (await lab.exec(
        a.netns,
        ["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}"]
          .concat(`http://${b.ipv4}:8080${path}`),
      )).stdout;
    await eventually("GET /public through the proxy", async () => await curl("/public") === "200");
    assert.equal(await curl("/private"), "403", "the proxy's HTTP rule denies");
    await n2.policy(POLICY_B_FROM_A); // every port and ICMP again, no L7
    await eventually("no redirect", async () => await curl("/private") === "200");
  });

  await t.step("node 2's cilia_lxc_ipv4 holds each local pod while it exists", async () => {
    const veth = await link(lab, n2.node.netns, bVeth);
    const pod = await link(lab, b.netns, "eth0");
    assert.deepEqual((await lxcIpv4(n2)).get(b.ipv4), {
      ifindex: veth.ifindex,
      mac: pod.mac,
      hostMac: veth.mac,
    });
    assert.equal((await lxcIpv4(n1)).has(b.ipv4), false, "node 1 does not hold b");
    const d = await n2.addPod("d", { app: "d" });
    const dVeth = await link(lab, n2.node.netns, hostVeth(d.result));
    assert.equal((await lxcIpv4(n2)).get(d.ipv4)?.ifindex, dVeth.ifindex, "d's entry");
    await n2.delPod(d);
    assert.equal((await lxcIpv4(n2)).has(d.ipv4), false, "d's entry deleted with d");
    assert.ok((await lxcIpv4(n2)).has(b.ipv4), "b's entry stays");
  });

  await t.step("delivery to b takes its cilia_lxc_ipv4 entry, the FIB on a miss", async () => {
    // A rule ahead of the main table sends b's address to a table that only blackholes.
    const ip = (...argv: string[]) => lab.run(n2.node.netns, ["ip", ...argv]);
    await ip("route", "add", "blackhole", "default", "table", "4242");
    await ip("rule", "add", "to", `${b.ipv4}/32`, "table", "4242", "pref", "10");
    try {
      const s = await pingsThrough();
      assert.equal(s.replies, PINGS, "the entry delivers past a blackhole route");
      assert.ok(s.vethTx <= 2, `b's host veth sent ${s.vethTx} packets`);
      const key = b.ipv4.split(".");
      await new BpfTool().run(
        ["map", "delete", "pinned", `${n2.node.bpffs}/cilia/maps/cilia_lxc_ipv4`, "key", ...key],
      );
      const gone = await pingsThrough();
      assert.equal(gone.replies, 0, "without the entry the FIB's blackhole route decides");
    } finally {
      await ip("rule", "del", "to", `${b.ipv4}/32`, "table", "4242", "pref", "10");
      await ip("route", "del", "blackhole", "default", "table", "4242");
    }
    const fib = await pingsThrough();
    assert.equal(fib.replies, PINGS, "the FIB delivers");
    assert.ok(fib.vethTx <= 2, `b's host veth sent ${fib.vethTx} packets`);
  });

  await t.step("without host.o's tail-call array the veth's egress program decides", async () => {
    const netdev = `${n2.node.bpffs}/cilia/netdev`;
    const dirs = [...Deno.readDirSync(netdev)].filter((e) => e.isDirectory).map((e) => e.name);
    assert.equal(dirs.length, 1, `one host.o program directory: ${dirs}`);
    const calls = `${netdev}/${dirs[0]}/cilia_peer_calls`;
    const del = await new Deno.Command("bpftool", {
      args: ["map", "delete", "pinned", calls, "key", "0", "0", "0", "0"],
      stderr: "piped",
    }).output();
    assert.equal(del.code, 0, new TextDecoder().decode(del.stderr));
    const s = await pingsThrough();
    assert.equal(s.replies, PINGS, "allowed: a → b");
    assert.ok(s.vethTx >= PINGS, `b's host veth sent ${s.vethTx} packets`);
    await deniedWithLabels(Date.now());
  });
});
