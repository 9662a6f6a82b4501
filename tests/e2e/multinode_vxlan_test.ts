// VXLAN written and read by BPF (bpf/lib/vxlan.h, issue #12), two nodes in tunnel mode, real
// packets. IPv4 pod traffic, small and bulk (GSO), leaves as VXLAN to UDP 8472 on the underlay
// bridge (counted there) without passing either node's cilia_vxlan device or node 2's UDP stack;
// node 2's ingress policy still decides by the identity in the VNI (an allowed and a dropped
// client, the drop naming the sender's identity). Interop: with one node on the kernel device
// path (NAT_CFG_F_TUNNEL_NETDEV) and the other on BPF, in both arrangements, the same verdicts.
// Fallback: IPv6 is received by the device. Needs root, etcd and nft.
import assert from "node:assert/strict";
import { Cluster, type ClusterNode, eventually, POLICY_B_FROM_A } from "../helpers/cluster.ts";
import { KERNEL_TOOLS, needs } from "../helpers/root.ts";
import { setTunnelNetdevOnly } from "../../agent/datapath/netdev_loader.ts";
import type { Lab } from "../helpers/netns.ts";

/** Waits until `ss -Hln FILTER` in netns lists a socket (a Deno started there is listening). */
const listening = (lab: Lab, netns: string, filter: string) =>
  eventually(
    `a listener on "${filter}" in ${netns}`,
    async () => (await lab.exec(netns, ["ss", "-Hln", filter])).stdout.trim() !== "",
  );

interface Counters {
  /** Packets the tunnel device sent and received, per node. */
  devTx: number[];
  devRx: number[];
  /** VXLAN datagrams (UDP 8472) node 2's stack received. */
  udpIn: number;
  /** VXLAN packets (UDP 8472) the underlay bridge forwarded. */
  wire: number;
}

Deno.test({
  name: "multinode: VXLAN by BPF on both ends, interop with the kernel device, IPv6 by the device",
  ...needs({ root: true, binaries: [...KERNEL_TOOLS, "etcd", "nft"] }),
  sanitizeResources: false,
}, async (t) => {
  await using cluster = await Cluster.create({ nodes: 2, routingMode: "tunnel" });
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const lab = cluster.lab;
  const a = await n1.addPod("a", { app: "a" });
  const c = await n1.addPod("c", { app: "c" });
  const b = await n2.addPod("b", { app: "b" });
  const idC = ((await n1.call("GET", "/v1/endpoint/default/c")).body as { identity: number })
    .identity;
  await eventually(
    "node-1 knows b",
    async () =>
      (await n1.ipcache()).some((e) => e.prefix === `${b.ipv4}/32` && e.tunnelEndpoint === n2.ip),
  );
  await eventually(
    "node-2 knows c",
    async () => (await n2.ipcache()).some((e) => e.prefix === `${c.ipv4}/32` && e.identity === idC),
  );
  const rules = `add table bridge qb_vxlan
add chain bridge qb_vxlan wire { type filter hook forward priority 0; }
add rule bridge qb_vxlan wire udp dport 8472 counter
`;
  const nft = await lab.exec(cluster.underlay, ["nft", "-f", "-"], rules);
  assert.equal(nft.code, 0, nft.stderr);
  // Tunnel datagrams node 2's stack takes in (the kernel device's way; its other UDP, such as
  // the agents' health probes, is not VXLAN and not counted).
  const stackRules = `add table inet qb_udp
add chain inet qb_udp input { type filter hook input priority 0; }
add rule inet qb_udp input udp dport 8472 counter
`;
  const nft2 = await lab.exec(n2.node.netns, ["nft", "-f", "-"], stackRules);
  assert.equal(nft2.code, 0, nft2.stderr);
  // The pods get the tunnel's MTU (underlay − 50), so every packet fits one outer packet.
  for (const p of [a, b, c]) await lab.run(p.netns, ["ip", "link", "set", "eth0", "mtu", "1450"]);
  const server = lab.peer(b.netns);
  await server.listen("tcp", 8080);

  const counters = async (): Promise<Counters> => {
    const dev = async (n: ClusterNode) => {
      const j = JSON.parse(
        await lab.run(n.node.netns, ["ip", "-j", "-s", "link", "show", "cilia_vxlan"]),
      ) as { stats64: { rx: { packets: number }; tx: { packets: number } } }[];
      return j[0]!.stats64;
    };
    const [d1, d2] = [await dev(n1), await dev(n2)];
    const udp = await lab.run(n2.node.netns, ["nft", "list", "table", "inet", "qb_udp"]);
    const wire = await lab.run(cluster.underlay, ["nft", "list", "table", "bridge", "qb_vxlan"]);
    return {
      devTx: [d1.tx.packets, d2.tx.packets],
      devRx: [d1.rx.packets, d2.rx.packets],
      udpIn: Number(/counter packets (\d+)/.exec(udp)?.[1] ?? NaN),
      wire: Number(/counter packets (\d+)/.exec(wire)?.[1] ?? NaN),
    };
  };
  const delta = async (traffic: () => Promise<void>) => {
    const before = await counters();
    await traffic();
    const after = await counters();
    return {
      devTx: after.devTx.map((x, i) => x - before.devTx[i]!),
      devRx: after.devRx.map((x, i) => x - before.devRx[i]!),
      udpIn: after.udpIn - before.udpIn,
      wire: after.wire - before.wire,
    };
  };
  /** 8 MiB of TCP from a to b (GSO: segments larger than one outer packet), counted by b. */
  const bulk = async () => {
    const deno = (code: string) => [Deno.execPath(), "eval", code];
    const sink = lab.spawn([
      ...["ip", "netns", "exec", b.netns],
      ...deno(`const l = Deno.listen({ port: 5301 }); const c = await l.accept(); let n = 0;
        for await (const x of c.readable) n += x.length; console.log(n);`),
    ], { stdout: "piped" });
    const got = sink.output();
    await listening(lab, b.netns, "sport = :5301");
    await lab.run(
      a.netns,
      deno(`const c = await Deno.connect({ hostname: "${b.ipv4}", port: 5301 });
        const w = c.writable.getWriter(); const chunk = new Uint8Array(1 << 20).fill(7);
        for (let i = 0; i < 8; i++) await w.write(chunk);
        await w.close();`),
    );
    const n = Number(new TextDecoder().decode((await got).stdout).trim());
    assert.equal(n, 8 * 1024 * 1024, "b received all 8 MiB");
  };
  const verdicts = async (what: string) => {
    assert.ok(await lab.peer(a.netns).probe("tcp", b.ipv4, 8080, 3000), `${what}: a → b`);
    assert.ok(await lab.ping(a.netns, b.ipv4, { timeoutSec: 2 }), `${what}: ping a → b`);
    const before = Date.now();
    assert.equal(await lab.peer(c.netns).probe("tcp", b.ipv4, 8080, 400), false, what);
    await eventually(
      `${what}: a drop on node-2 naming c's identity`,
      async () =>
        (await n2.flows({ verdict: "DROPPED" })).some((f) =>
          Date.parse(f.time) >= before - 50 && f.drop_reason === 133 &&
          f.source.identity === idC && f.traffic_direction === "INGRESS"
        ),
      3000,
    );
  };

  await t.step("IPv4 pod traffic is VXLAN on the wire, without either device", async () => {
    // The first packets resolve the neighbours (the node's, the pod's) through the device and
    // the stack (vxlan.h, 2.); from then on BPF needs neither.
    assert.ok(await lab.ping(a.netns, b.ipv4, { timeoutSec: 2 }), "ping a → b");
    const d = await delta(async () => {
      assert.ok(await lab.peer(a.netns).probe("tcp", b.ipv4, 8080, 3000), "a → b");
      assert.ok(await lab.ping(a.netns, b.ipv4, { timeoutSec: 2 }), "ping a → b");
      await bulk();
    });
    assert.deepEqual([d.devTx, d.devRx, d.udpIn], [[0, 0], [0, 0], 0], JSON.stringify(d));
    assert.ok(d.wire > 10, `VXLAN on the underlay: ${JSON.stringify(d)}`);
    // Node 2's own address is routed over the underlay, not into the tunnel: still reachable.
    assert.ok(await lab.ping(a.netns, n2.ip, { timeoutSec: 2 }), "ping a → node-2");
  });

  await n2.policy(POLICY_B_FROM_A);

  await t.step("node 2 decides by the VNI: a allowed, c dropped with its identity", async () => {
    const d = await delta(() => verdicts("BPF on both"));
    assert.deepEqual([d.devTx, d.devRx, d.udpIn], [[0, 0], [0, 0], 0], JSON.stringify(d));
  });

  for (const legacy of [n1, n2]) {
    await t.step(`interop: ${legacy.name} on the kernel device, the other on BPF`, async () => {
      await setTunnelNetdevOnly(`${legacy.node.bpffs}/cilia`, true);
      try {
        const d = await delta(() => verdicts(`${legacy.name} on the device`));
        const i = legacy === n1 ? 0 : 1;
        // The device node sends and receives through cilia_vxlan; the BPF node does neither.
        assert.ok(d.devTx[i]! > 0 && d.devRx[i]! > 0, JSON.stringify(d));
        assert.deepEqual([d.devTx[1 - i], d.devRx[1 - i]], [0, 0], JSON.stringify(d));
        assert.equal(d.udpIn > 0, legacy === n2, `node-2's UDP stack: ${JSON.stringify(d)}`);
      } finally {
        await setTunnelNetdevOnly(`${legacy.node.bpffs}/cilia`, false);
      }
    });
  }

  await t.step("IPv6 crosses too, received by the device", async () => {
    const d = await delta(async () => {
      assert.ok(await lab.peer(a.netns).probe("tcp", b.ipv6, 8080, 3000), "a → b IPv6");
    });
    assert.deepEqual([d.devTx[0], d.devRx[1]! > 0], [0, true], JSON.stringify(d));
  });
});
