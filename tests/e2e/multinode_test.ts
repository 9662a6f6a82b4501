// Two nodes, one etcd, real packets (issue #12): node netns on a bridged underlay, one agent per
// node, pods through the CNI plugin. Each agent learns the other node and its pods through the
// kvstore (ipcache entries with the node IP as tunnel endpoint); pod-to-pod traffic crosses the
// VXLAN overlay with the source identity in the VNI, and node 2's ingress policy decides by it:
// app=a connects, app=c is dropped with reason 133 naming c's identity, even once node 2's
// ipcache no longer knows c's address. Pods get the tunnel's MTU (underlay − 50): a packet that
// fits passes, a bigger one with DF fails in the pod ("message too long", no black hole), and
// UDP datagrams of the pod MTU and a large TCP exchange pass; natively they get the underlay's.
// Deleting a pod, and stopping a node (its lease expires), removes the entries on the other node. Then both agents restart in native routing mode: routes
// via the node IP (IPv6 pod CIDRs via the node's IPv6 underlay address), IPv4 sent and received
// without the nodes' IP forwarding, the same verdicts, for IPv4 and IPv6, from the ipcache by
// source address. Flows come from the
// agents' API. Needs root and etcd.
import assert from "node:assert/strict";
import {
  Cluster,
  type ClusterNode,
  eventually,
  POLICY_B_FROM_A as POLICY,
} from "../helpers/cluster.ts";
import { KERNEL_TOOLS, needs } from "../helpers/root.ts";
import { parse as parseYaml } from "yaml";
import { cilia } from "./_services_lab.ts";
import type { Lab } from "../helpers/netns.ts";

/** Waits until `ss -Hln FILTER` in netns lists a socket (a Deno started there is listening). */
const listening = (lab: Lab, netns: string, filter: string) =>
  eventually(
    `a listener on "${filter}" in ${netns}`,
    async () => (await lab.exec(netns, ["ss", "-Hln", filter])).stdout.trim() !== "",
  );

/** A pod that only other nodes may reach, and that may reach only other nodes. */
const ENTITIES = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: node-facing, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: node-facing}}
  ingress:
  - fromEntities: [remote-node]
  egress:
  - toEntities: [remote-node]
`;

const has = async (n: ClusterNode, prefix: string, identity?: number, tunnel?: string) =>
  (await n.ipcache()).some((e) =>
    e.prefix === prefix && (identity === undefined || e.identity === identity) &&
    (tunnel === undefined || e.tunnelEndpoint === tunnel)
  );

/** What `n`'s probes say of node `name` (GET /v1/node/<name>), if probed yet. */
const reachability = async (n: ClusterNode, name: string) =>
  ((await n.call("GET", `/v1/node/${name}`)).body as {
    reachability?: { reachable: boolean; rttMs?: number };
  }).reachability;

Deno.test({
  name: "multinode: pods on two nodes talk over VXLAN, identity in the VNI, policy on the receiver",
  ...needs({ root: true, binaries: [...KERNEL_TOOLS, "etcd", "curl"] }),
  sanitizeResources: false,
}, async (t) => {
  await using cluster = await Cluster.create({ nodes: 2, routingMode: "tunnel" });
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const a = await n1.addPod("a", { app: "a" });
  const c = await n1.addPod("c", { app: "c" });
  const b = await n2.addPod("b", { app: "b" });
  const identity = async (n: ClusterNode, name: string) =>
    ((await n.call("GET", `/v1/endpoint/default/${name}`)).body as { identity: number }).identity;
  const [idA, idC] = [await identity(n1, "a"), await identity(n1, "c")];

  await t.step("each node has the other's pods and addresses in its ipcache", async () => {
    await eventually(
      "node-2 knows a and c",
      async () =>
        await has(n2, `${a.ipv4}/32`, idA, n1.ip) && await has(n2, `${c.ipv4}/32`, idC, n1.ip),
    );
    await eventually("node-1 knows b", () => has(n1, `${b.ipv4}/32`, undefined, n2.ip));
    assert.ok(await has(n2, `${n1.ip}/32`, 6, n1.ip), "node-1's IP is remote-node on node-2");
    assert.ok(await has(n2, `${a.ipv6}/128`, idA, n1.ip), "IPv6 of a on node-2");
    const nodes = (await n2.call("GET", "/v1/node")).body as {
      name: string;
      ip?: string;
      podCidr?: string;
      health: string;
      endpoints: number;
    }[];
    const one = nodes.find((x) => x.name === "node-1");
    assert.equal(one?.ip, n1.ip);
    assert.equal(one?.podCidr, n1.podCidr);
    assert.equal(one?.health, "alive");
    assert.equal(one?.endpoints, 2);
    const st = (await n2.call("GET", "/v1/status")).body as {
      cluster: { nodes: number; remoteEndpoints: number };
    };
    assert.deepEqual([st.cluster.nodes, st.cluster.remoteEndpoints], [1, 2]);
  });

  await t.step(
    "cilia node list -o json|yaml|table: addresses, CIDRs, health, reachability",
    async () => {
      type Row = {
        name: string;
        ip: string;
        addresses: string[];
        podCidr: string;
        podCidrV6: string;
        health: string;
        reachability?: { reachable: boolean; rttMs?: number };
      };
      await eventually(
        "node-2 probed node-1",
        async () => (await reachability(n2, "node-1"))?.reachable,
      );
      const json = JSON.parse(await cilia(n2.socket, "node", "list", "-o", "json")) as Row[];
      const yaml = parseYaml(await cilia(n2.socket, "node", "list", "-o", "yaml")) as Row[];
      // The same model (a probe in between may change a round trip or a time).
      const stable = (rows: Row[]) =>
        rows.map(({ reachability: r, ...row }) => [row, r?.reachable]);
      assert.deepEqual(stable(yaml), stable(json), "-o yaml renders the same model");
      for (const [n, health] of [[n1, "alive"], [n2, "self"]] as const) {
        const row = json.find((r) => r.name === n.name);
        assert.ok(row, `${n.name} listed: ${JSON.stringify(json)}`);
        assert.equal(row.ip, n.ip);
        assert.ok(row.addresses.includes(n.ip), `${n.name}'s addresses: ${row.addresses}`);
        assert.deepEqual([row.podCidr, row.podCidrV6], [
          n.podCidr,
          `fd00:200:${n.node.index}::/64`,
        ]);
        assert.equal(row.health, health);
        assert.equal(row.reachability?.reachable, n === n1 ? true : undefined, "probed");
      }
      const table = await cilia(n2.socket, "node", "list");
      assert.match(
        table,
        /^node-1\s+192\.0\.2\.1\s+\S*192\.0\.2\.1\S*\s+alive\s+yes \([\d.]+ ms\)\s+2\s+10\.200\.1\.0\/24,fd00:200:1::\/64$/m,
        table,
      );
    },
  );

  await t.step("an underlay cut shows: node-1 alive (its lease) but not reachable", async () => {
    // etcd (192.0.2.254) stays reachable: only node-1's packets to node-2's host are dropped.
    const rules = `add table inet mn_cut
add chain inet mn_cut input { type filter hook input priority 0; }
add rule inet mn_cut input ip saddr ${n1.ip} drop
`;
    const r = await cluster.lab.exec(n2.node.netns, ["nft", "-f", "-"], rules);
    assert.equal(r.code, 0, r.stderr);
    try {
      await eventually(
        "node-1 unreachable from node-2",
        async () => (await reachability(n2, "node-1"))?.reachable === false,
      );
      const one = (await n2.call("GET", "/v1/node/node-1")).body as { health: string };
      assert.equal(one.health, "alive", "its lease is kept all the same");
      assert.match(await cilia(n2.socket, "node", "list"), /^node-1\s+\S+\s+\S+\s+alive\s+no\s/m);
    } finally {
      await cluster.lab.exec(n2.node.netns, ["nft", "delete", "table", "inet", "mn_cut"]);
    }
    await eventually(
      "node-1 reachable again",
      async () => (await reachability(n2, "node-1"))?.reachable === true,
    );
  });

  const mtu = async (netns: string, dev: string) =>
    (JSON.parse(await cluster.lab.run(netns, ["ip", "-j", "link", "show", dev])) as {
      mtu: number;
    }[])[0]!.mtu;
  const server = n2.cluster.lab.peer(b.netns);
  await server.listen("tcp", 8080);

  await t.step("without policy, both pods reach b across nodes (TCP, ping, IPv6)", async () => {
    assert.ok(await cluster.lab.peer(a.netns).probe("tcp", b.ipv4, 8080, 3000), "a → b");
    assert.ok(await cluster.lab.peer(c.netns).probe("tcp", b.ipv4, 8080, 3000), "c → b");
    assert.ok(await cluster.lab.ping(a.netns, b.ipv4, { timeoutSec: 2 }), "ping a → b");
    assert.ok(await cluster.lab.peer(a.netns).probe("tcp", b.ipv6, 8080, 3000), "a → b IPv6");
    const big = await cluster.lab.exec(a.netns, ["ping", "-c1", "-W2", "-s1400", "-Mdo", b.ipv4]);
    assert.equal(big.code, 0, `ping -s 1400 -M do fits the tunnel MTU: ${big.stdout}`);
  });

  /**
   * Runs `traffic` with a counter in each node's netfilter forward hook for packets to b, and
   * returns each node's [IPv4, IPv6] packet counts: a packet the datapath sent straight from
   * veth to device (tunnel.h, 5. and 6.) was not forwarded by that node's stack.
   */
  const forwarded = async (traffic: () => Promise<void>) => {
    const rules = `add table inet mn_fwd
add chain inet mn_fwd probe { type filter hook forward priority 0; }
add rule inet mn_fwd probe ip daddr ${b.ipv4} counter
add rule inet mn_fwd probe ip6 daddr ${b.ipv6} counter
`;
    for (const n of [n1, n2]) {
      const r = await cluster.lab.exec(n.node.netns, ["nft", "-f", "-"], rules);
      assert.equal(r.code, 0, r.stderr);
    }
    try {
      await traffic();
      const counts: number[][] = [];
      for (const n of [n1, n2]) {
        const out = await cluster.lab.run(n.node.netns, ["nft", "list", "table", "inet", "mn_fwd"]);
        counts.push([...out.matchAll(/counter packets (\d+)/g)].map((m) => Number(m[1])));
      }
      return counts as [[number, number], [number, number]];
    } finally {
      for (const n of [n1, n2]) {
        await cluster.lab.exec(n.node.netns, ["nft", "delete", "table", "inet", "mn_fwd"]);
      }
    }
  };

  await t.step("tunnel traffic skips the nodes' IP forwarding (IPv4; IPv6 takes it)", async () => {
    const [c1, c2] = await forwarded(async () => {
      assert.ok(await cluster.lab.peer(a.netns).probe("tcp", b.ipv4, 8080, 3000), "a → b");
      assert.ok(await cluster.lab.peer(a.netns).probe("tcp", b.ipv6, 8080, 3000), "a → b IPv6");
    });
    assert.deepEqual([c1[0], c2[0]], [0, 0], "neither node forwarded an IPv4 packet to b");
    assert.ok(c1[1] > 0 && c2[1] > 0, "both forwarded the IPv6 ones (the counters work)");
  });

  await t.step("pods get the tunnel's MTU: full-size packets fit or fail loudly", async () => {
    // Underlay eth0 1500 − VXLAN 50, on both ends of each pod's veth (Cilium's rule).
    for (const [n, p] of [[n1, a], [n2, b]] as const) {
      assert.equal(await mtu(p.netns, "eth0"), 1450, `${p.name}'s eth0`);
      assert.equal(await mtu(n.node.netns, p.result.interfaces[0].name), 1450, `${p.name}'s lxc`);
    }
    const ping = (size: number, to = b.ipv4) =>
      cluster.lab.exec(a.netns, ["ping", "-c1", "-W2", `-s${size}`, "-Mdo", to]);
    const fits = await ping(1422); // 1422 + 8 (ICMP) + 20 (IPv4) = 1450
    assert.equal(fits.code, 0, `ping -s 1422 -M do: ${fits.stdout}${fits.stderr}`);
    const fits6 = await ping(1402, b.ipv6); // + 8 + 40 (IPv6)
    assert.equal(fits6.code, 0, `IPv6 ping -s 1402 -M do: ${fits6.stdout}${fits6.stderr}`);
    const big = await ping(1472);
    assert.notEqual(big.code, 0, "a 1500-byte packet with DF does not leave a");
    assert.match(`${big.stdout}${big.stderr}`, /message too long/i, "refused in a, not lost");
    // UDP datagrams up to the pod MTU (1422 + 8 + 20), both ways: b echoes them. (Larger ones
    // are fragmented in the pod, and the datapath drops fragments: parse.h, 3.)
    const flags = ["--no-config", "--unstable-net"];
    const denoEval = (code: string) => [Deno.execPath(), "eval", ...flags, code];
    const echo = cluster.lab.spawn([
      ...["ip", "netns", "exec", b.netns],
      ...denoEval(
        `const s = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 5302 });
        const buf = new Uint8Array(65536);
        for (;;) { const [d, from] = await s.receive(buf); await s.send(d, from); }`,
      ),
    ]);
    try {
      await listening(cluster.lab, b.netns, "sport = :5302");
      const udp = await cluster.lab.exec(
        a.netns,
        denoEval(`const s = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
          const to = { transport: "udp", hostname: "${b.ipv4}", port: 5302 };
          const buf = new Uint8Array(65536);
          for (const n of [1400, 1422]) {
            const t = setTimeout(() => { console.log("lost " + n); Deno.exit(1); }, 2000);
            await s.send(new Uint8Array(n).fill(n & 255), to);
            const [d] = await s.receive(buf);
            clearTimeout(t);
            console.log(d.length);
          }`),
      );
      assert.equal(udp.stdout.trim(), "1400\n1422", `UDP echoes: ${udp.stdout}${udp.stderr}`);
    } finally {
      try {
        echo.kill("SIGKILL");
      } catch { /* gone */ }
      await echo.status;
    }
    // And a large TCP transfer, a to b, in segments of the MSS the MTU gives (b counts).
    const sink = cluster.lab.spawn([
      ...["ip", "netns", "exec", b.netns],
      ...denoEval(`const l = Deno.listen({ port: 5303 }); const c = await l.accept(); let n = 0;
        for await (const x of c.readable) n += x.length; console.log(n);`),
    ], { stdout: "piped" });
    const got = sink.output();
    await listening(cluster.lab, b.netns, "sport = :5303");
    const sent = await cluster.lab.exec(
      a.netns,
      denoEval(`const t = setTimeout(() => { console.error("stalled"); Deno.exit(1); }, 10000);
        const c = await Deno.connect({ hostname: "${b.ipv4}", port: 5303 });
        const w = c.writable.getWriter(); const chunk = new Uint8Array(1 << 20).fill(7);
        for (let i = 0; i < 4; i++) await w.write(chunk);
        await w.close(); clearTimeout(t);`),
    );
    if (sent.code !== 0) sink.kill("SIGKILL");
    assert.equal(sent.code, 0, `a's sender: ${sent.stderr}`);
    const n = Number(new TextDecoder().decode((await got).stdout).trim());
    assert.equal(n, 4 << 20, "b received all 4 MiB");
  });

  await t.step(
    "a policy imported through node 1 is in force on node 2 within seconds",
    async () => {
      // b's policy goes through the other node's agent: policies are cluster-wide (cilia/policies/).
      const imported = Date.now();
      await n1.policy(POLICY);
      await eventually(
        "c → b denied on node-2",
        async () => !(await cluster.lab.peer(c.netns).probe("tcp", b.ipv4, 8080, 300)),
        5000,
      );
      const took = Date.now() - imported;
      assert.ok(took < 5000, `in force on node-2 after ${took} ms`);
      assert.ok(await cluster.lab.peer(a.netns).probe("tcp", b.ipv4, 8080, 3000), "a → b allowed");
    },
  );

  await t.step("node 2 allows app=a and drops app=c with c's real identity", async () => {
    assert.ok(await cluster.lab.peer(a.netns).probe("tcp", b.ipv4, 8080, 3000), "a → b allowed");
    assert.equal(await cluster.lab.peer(c.netns).probe("tcp", b.ipv4, 8080, 400), false);
    await eventually(
      "a drop flow for c → b on node-2",
      async () =>
        (await n2.flows({ verdict: "DROPPED" })).some((f) =>
          f.drop_reason === 133 && f.source.identity === idC && f.traffic_direction === "INGRESS"
        ),
      3000,
    );
  });

  await t.step("the identity comes from the VNI, not from node 2's ipcache", async () => {
    // Take c's address out of node 2's ipcache behind the agent's back: a lookup by source IP
    // would now say reserved:world (2); the drop must still name c's identity.
    const map = `${n2.node.bpffs}/cilia/maps/cilia_ipcache`;
    const ip = c.ipv4.split(".").join(" ");
    const del = await new Deno.Command("bpftool", {
      args: [
        "map",
        "delete",
        "pinned",
        map,
        "key",
        ..."64 0 0 0 4 0 0 0".split(" "),
        ...ip.split(" "),
        ...Array(12).fill("0"),
      ],
      stderr: "piped",
    }).output();
    assert.equal(del.code, 0, new TextDecoder().decode(del.stderr));
    assert.equal(await has(n2, `${c.ipv4}/32`), false);
    const before = Date.now();
    assert.equal(await cluster.lab.peer(c.netns).probe("tcp", b.ipv4, 8080, 400), false);
    await eventually(
      "a new drop naming c's identity",
      async () =>
        (await n2.flows({ verdict: "DROPPED" })).some((f) =>
          Date.parse(f.time) >= before - 50 && f.drop_reason === 133 && f.source.identity === idC
        ),
      3000,
    );
  });

  await t.step(
    "entities across nodes: remote-node is the other node, host only this one",
    async () => {
      const nf = await n1.addPod("nf", { app: "node-facing" });
      const [pnf, pb] = [cluster.lab.peer(nf.netns), cluster.lab.peer(b.netns)];
      const [host1, host2] = [cluster.lab.peer(n1.node.netns), cluster.lab.peer(n2.node.netns)];
      await pnf.listen("tcp", 9100);
      await host1.listen("tcp", 9101);
      await host2.listen("tcp", 9101);
      await n1.policy(ENTITIES);
      await eventually(
        "nf's policy in force",
        async () => !(await pb.probe("tcp", nf.ipv4, 9100, 300)),
      );
      // Node 2's host leaves through the tunnel as reserved:remote-node (tunnel.h, 2.).
      assert.ok(await host2.probe("tcp", nf.ipv4, 9100, 3000), "node-2's host → nf: remote-node");
      assert.ok(
        await host1.probe("tcp", nf.ipv4, 9100, 3000),
        "node-1's host → nf: allow-localhost",
      );
      assert.ok(await pnf.probe("tcp", n2.ip, 9101, 3000), "nf → node-2's IP: remote-node");
      assert.equal(await pnf.probe("tcp", n1.ip, 9101, 400), false, "nf → node-1's IP: host");
      assert.equal(await pnf.probe("tcp", b.ipv4, 8080, 400), false, "nf → b: a pod");
      const idB = await identity(n2, "b");
      await eventually("node-1's drops: b → nf by b's identity, nf → its own host", async () => {
        const drops = (await n1.flows({ verdict: "DROPPED" })).filter((f) => f.drop_reason === 133);
        return drops.some((f) =>
          f.traffic_direction === "INGRESS" && f.source.identity === idB &&
          f.destination.identity !== idB
        ) && drops.some((f) => f.traffic_direction === "EGRESS" && f.destination.identity === 1);
      }, 3000);
      assert.equal((await n1.call("DELETE", "/v1/policy?name=node-facing")).status, 200);
      await n1.delPod(nf);
    },
  );

  await t.step("deleting a pod on node 1 removes its ipcache entry on node 2", async () => {
    await n1.delPod(c);
    await eventually("a still on node-2", () => has(n2, `${a.ipv4}/32`, idA, n1.ip));
    await eventually("c gone on node-2", async () => !(await has(n2, `${c.ipv6}/128`)));
  });

  await t.step("stopping node 1's agent: its lease expires, node 2 forgets it", async () => {
    await n1.stopAgent();
    await eventually("node-1's entries gone on node-2", async () => {
      const all = await n2.ipcache();
      return !all.some((e) => e.tunnelEndpoint === n1.ip);
    }, 10_000);
    const nodes = (await n2.call("GET", "/v1/node")).body as { name: string }[];
    assert.deepEqual(nodes.map((x) => x.name), ["node-2"]);
  });

  await t.step(
    "native routing after a restart: routes via the node IP, identity by address",
    async () => {
      cluster.routingMode = "native";
      await n2.stopAgent();
      await n2.startAgent();
      await n1.startAgent();
      const d = await n1.addPod("d", { app: "c" });
      const idD = await identity(n1, "d");
      assert.equal(await mtu(d.netns, "eth0"), 1500, "natively, pods get the underlay's MTU");
      await eventually(
        "node-2 knows a and d, without a tunnel",
        async () =>
          await has(n2, `${a.ipv4}/32`, idA) && await has(n2, `${d.ipv4}/32`, idD) &&
          !(await n2.ipcache()).some((e) => e.tunnelEndpoint !== undefined),
      );
      const route = JSON.parse(
        await cluster.lab.run(n2.node.netns, ["ip", "-j", "route", "show", n1.podCidr]),
      ) as { gateway?: string; dev?: string }[];
      assert.deepEqual([route[0]?.gateway, route[0]?.dev], [n1.ip, "eth0"]);
      const route6 = JSON.parse(
        await cluster.lab.run(n2.node.netns, [
          "ip",
          "-6",
          "-j",
          "route",
          "show",
          "fd00:200:1::/64",
        ]),
      ) as { gateway?: string; dev?: string }[];
      assert.deepEqual([route6[0]?.gateway, route6[0]?.dev], [n1.ip6, "eth0"]);
      const [c1, c2] = await forwarded(async () => {
        assert.ok(await cluster.lab.peer(a.netns).probe("tcp", b.ipv4, 8080, 3000), "a → b");
        assert.ok(await cluster.lab.peer(a.netns).probe("tcp", b.ipv6, 8080, 3000), "a → b IPv6");
      });
      // Native: node 1 sends a's IPv4 packets straight out of eth0, node 2 from eth0 straight
      // to b's veth (nodeport.h, 7.); b's ingress policy still decides (d's drops below).
      assert.deepEqual([c1[0], c2[0]], [0, 0], "neither node forwarded an IPv4 packet to b");
      assert.ok(c1[1] > 0 && c2[1] > 0, "the stack forwarded the IPv6 ones (the counters work)");
      const before6 = Date.now();
      assert.equal(await cluster.lab.peer(d.netns).probe("tcp", b.ipv6, 8080, 400), false);
      await eventually(
        "an IPv6 drop naming d's identity",
        async () =>
          (await n2.flows({ verdict: "DROPPED" })).some((f) =>
            Date.parse(f.time) >= before6 - 50 && f.drop_reason === 133 &&
            f.source.identity === idD && f.IP?.ipVersion === "IPv6"
          ),
        3000,
      );
      const before = Date.now();
      assert.equal(await cluster.lab.peer(d.netns).probe("tcp", b.ipv4, 8080, 400), false);
      await eventually(
        "a drop naming d's identity",
        async () =>
          (await n2.flows({ verdict: "DROPPED" })).some((f) =>
            Date.parse(f.time) >= before - 50 && f.drop_reason === 133 && f.source.identity === idD
          ),
        3000,
      );
    },
  );
});
