// Three nodes, one etcd, real packets (issue #12: "tests run 2–3 nodes"), on non-default ports:
// the agents run with `--tunnel-port 8473` and `--cluster-health-port 4250`, and the underlay
// bridge counts that VXLAN and the probes use those ports and nothing goes to 8472 or 4240. A pod
// on each node (c: app=c on node 1, a: app=a on node 2, b: app=b on node 3, and b2: app=b on node
// 2); a policy imported through node 1's agent is in force on nodes 2 and 3 within seconds; b on
// node 3 admits a from node 2 by the identity in the VNI and drops c from node 1, the drop naming
// c's identity and labels; `cilia node list -o json` on every node lists all three, the others
// reachable. Then node 2's agent is killed (SIGKILL): nodes 1 and 3 find it unreachable, `lost`
// once its lease ends, and gone with its endpoints after the grace period, while traffic between
// nodes 1 and 3 (an established connection and new ones) goes on throughout. Last, node 3's
// agent restarts on another health port: nodes 1 and 3 stay alive to each other but unreachable
// (the port is one per cluster), and their traffic goes on. Needs root, etcd, nft.
import assert from "node:assert/strict";
import {
  Cluster,
  type ClusterNode,
  eventually,
  POLICY_B_FROM_A as POLICY,
} from "../helpers/cluster.ts";
import { KERNEL_TOOLS, needs } from "../helpers/root.ts";
import { cilia } from "./_services_lab.ts";

const TUNNEL_PORT = 8473;
const HEALTH_PORT = 4250;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A row of `cilia node list -o json`. */
interface NodeRow {
  name: string;
  ip: string;
  podCidr: string;
  health: string;
  endpoints?: number;
  reachability?: { reachable: boolean; rttMs?: number };
}

/** UDP packets the underlay bridge forwarded, by destination port. */
const WIRE_RULES = `add table bridge m3_wire
add chain bridge m3_wire wire { type filter hook forward priority 0; }
add rule bridge m3_wire wire udp dport ${TUNNEL_PORT} counter
add rule bridge m3_wire wire udp dport 8472 counter
add rule bridge m3_wire wire udp dport ${HEALTH_PORT} counter
add rule bridge m3_wire wire udp dport 4240 counter
`;

Deno.test({
  name: "multinode: three nodes on a non-default tunnel and health port, one dies",
  ...needs({ root: true, binaries: [...KERNEL_TOOLS, "etcd", "nft"] }),
  sanitizeResources: false,
}, async (t) => {
  await using cluster = await Cluster.create({
    nodes: 3,
    routingMode: "tunnel",
    leaseTtl: "2s",
    // Long enough to see node 2 `lost` (and probed unanswered) before its entries go.
    nodeGracePeriod: "4s",
    agentArgs: [
      ...["--tunnel-port", String(TUNNEL_PORT)],
      ...["--cluster-health-port", String(HEALTH_PORT)],
    ],
  });
  const lab = cluster.lab;
  const [n1, n2, n3] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
  const nft = await lab.exec(cluster.underlay, ["nft", "-f", "-"], WIRE_RULES);
  assert.equal(nft.code, 0, nft.stderr);
  /** [tunnel port, 8472, health port, 4240] packet counts on the underlay bridge. */
  const wire = async () => {
    const out = await lab.run(cluster.underlay, ["nft", "list", "table", "bridge", "m3_wire"]);
    return [...out.matchAll(/counter packets (\d+)/g)].map((m) => Number(m[1]));
  };

  const c = await n1.addPod("c", { app: "c" });
  const a = await n2.addPod("a", { app: "a" });
  const b2 = await n2.addPod("b2", { app: "b" });
  const b = await n3.addPod("b", { app: "b" });
  const identity = async (n: ClusterNode, name: string) =>
    ((await n.call("GET", `/v1/endpoint/default/${name}`)).body as { identity: number }).identity;
  const [idA, idC] = [await identity(n2, "a"), await identity(n1, "c")];
  const [pa, pb, pc] = [lab.peer(a.netns), lab.peer(b.netns), lab.peer(c.netns)];
  await pb.listen("tcp", 8080);
  await lab.peer(b2.netns).listen("tcp", 8080);
  await pc.listen("tcp", 8080);
  const knows = async (n: ClusterNode, ip: string, tunnel: string) =>
    (await n.ipcache()).some((e) => e.prefix === `${ip}/32` && e.tunnelEndpoint === tunnel);

  await t.step("every node knows the other nodes' pods, tunnel endpoint = node IP", async () => {
    const pods = [[c, n1], [a, n2], [b2, n2], [b, n3]] as const;
    for (const n of cluster.nodes) {
      for (const [p, home] of pods) {
        if (home === n) continue;
        await eventually(`${n.name} knows ${p.name}`, () => knows(n, p.ipv4, home.ip));
      }
    }
    for (const n of cluster.nodes) {
      const j = JSON.parse(
        await lab.run(n.node.netns, ["ip", "-d", "-j", "link", "show", "cilia_vxlan"]),
      ) as { linkinfo: { info_data: { port: number } } }[];
      assert.equal(j[0]?.linkinfo.info_data.port, TUNNEL_PORT, `${n.name}'s cilia_vxlan port`);
    }
  });

  await t.step("cilia node list -o json on each node: all 3, the others reachable", async () => {
    for (const n of cluster.nodes) {
      let rows: NodeRow[] = [];
      await eventually(`${n.name} lists 3 nodes, the others reachable`, async () => {
        rows = JSON.parse(await cilia(n.socket, "node", "list", "-o", "json")) as NodeRow[];
        const others = rows.filter((r) => r.name !== n.name);
        return rows.length === 3 && others.every((r) => r.reachability?.reachable === true);
      });
      for (const m of cluster.nodes) {
        const row = rows.find((r) => r.name === m.name);
        assert.ok(row, `${m.name} on ${n.name}: ${JSON.stringify(rows)}`);
        assert.deepEqual([row.ip, row.podCidr], [m.ip, m.podCidr]);
        assert.equal(row.health, m === n ? "self" : "alive");
      }
    }
  });

  await t.step("a policy imported through node 1 is in force on nodes 2 and 3", async () => {
    assert.ok(await pc.probe("tcp", b.ipv4, 8080, 2000), "before: c (node 1) → b (node 3)");
    assert.ok(await pc.probe("tcp", b2.ipv4, 8080, 2000), "before: c (node 1) → b2 (node 2)");
    const imported = Date.now();
    await n1.policy(POLICY);
    await eventually("c → b2 denied on node 2", async () => {
      return !(await pc.probe("tcp", b2.ipv4, 8080, 300));
    }, 5000);
    await eventually("c → b denied on node 3", async () => {
      return !(await pc.probe("tcp", b.ipv4, 8080, 300));
    }, 5000);
    const took = Date.now() - imported;
    assert.ok(took < 5000, `in force on nodes 2 and 3 after ${took} ms`);
  });

  await t.step(
    "b on node 3 admits a (node 2) by identity, drops c (node 1) naming it",
    async () => {
      const since = Date.now();
      assert.ok(await pa.probe("tcp", b.ipv4, 8080, 3000), "a (node 2) → b (node 3) allowed");
      assert.equal(await pc.probe("tcp", b.ipv4, 8080, 400), false, "c (node 1) → b denied");
      await eventually("node 3's flows: a admitted, c dropped, by their identities", async () => {
        const flows = (await n3.flows()).filter((f) => Date.parse(f.time) >= since - 50);
        const admitted = flows.some((f) =>
          f.verdict === "FORWARDED" && f.traffic_direction === "INGRESS" &&
          f.source.identity === idA && f.destination.identity !== idA
        );
        const dropped = flows.find((f) =>
          f.verdict === "DROPPED" && f.drop_reason === 133 && f.source.identity === idC &&
          f.traffic_direction === "INGRESS"
        );
        if (!admitted || !dropped) return false;
        assert.ok(dropped.source.labels.includes("k8s:app=c"), `${dropped.source.labels}`);
        return true;
      }, 3000);
    },
  );

  await t.step(
    `VXLAN used UDP ${TUNNEL_PORT}, probes UDP ${HEALTH_PORT}; none the defaults`,
    async () => {
      const [vxlan, vxlanDefault, health, healthDefault] = await wire();
      assert.ok(vxlan! > 0, `VXLAN packets to ${TUNNEL_PORT}: ${vxlan}`);
      assert.equal(vxlanDefault, 0, "no packet to 8472");
      assert.ok(health! > 0, `health probes to ${HEALTH_PORT}: ${health}`);
      assert.equal(healthDefault, 0, "no packet to 4240");
    },
  );

  await t.step("node 2 dies: nodes 1 and 3 drop it and its pods, 1 ↔ 3 goes on", async () => {
    assert.ok(await pb.open("b-c", c.ipv4, 8080, 2000), "b (node 3) → c (node 1) connects");
    let stop = false, rounds = 0;
    const failures: string[] = [];
    const traffic = (async () => {
      while (!stop) {
        const at = new Date().toISOString();
        if (!await pb.send("b-c", `round ${rounds}`, 1000)) failures.push(`${at}: established`);
        if (!await pb.probe("tcp", c.ipv4, 8080, 1000)) failures.push(`${at}: new b → c`);
        rounds++;
        await sleep(100);
      }
    })();
    try {
      const killed = Date.now();
      await n2.stopAgent("SIGKILL");
      const row = async (n: ClusterNode) =>
        (JSON.parse(await cilia(n.socket, "node", "list", "-o", "json")) as NodeRow[])
          .find((r) => r.name === n2.name);
      for (const n of [n1, n3]) {
        await eventually(`node 2 unreachable on ${n.name}`, async () => {
          const r = await row(n);
          return r !== undefined && r.reachability?.reachable === false;
        }, 6000);
      }
      await eventually("node 2 lost on nodes 1 and 3", async () => {
        return (await row(n1))?.health === "lost" && (await row(n3))?.health === "lost";
      }, 8000);
      for (const n of [n1, n3]) {
        await eventually(`node 2 and its pods gone on ${n.name}`, async () => {
          const entries = await n.ipcache();
          return await row(n) === undefined && !entries.some((e) => e.tunnelEndpoint === n2.ip) &&
            !entries.some((e) => e.prefix === `${a.ipv4}/32` || e.prefix === `${b2.ipv4}/32`);
        }, 10_000);
        const names = (JSON.parse(await cilia(n.socket, "node", "list", "-o", "json")) as NodeRow[])
          .map((r) => r.name);
        assert.deepEqual(names.sort(), [n1.name, n3.name]);
      }
      const took = Date.now() - killed;
      // Lease 2 s (etcd expires it within about a second more) + grace 4 s.
      assert.ok(took >= 4000 && took < 12_000, `node 2 removed ${took} ms after the kill`);
      await sleep(300);
    } finally {
      stop = true;
      await traffic;
    }
    assert.deepEqual(failures, [], "1 ↔ 3 traffic while node 2 died");
    assert.ok(rounds >= 10, `${rounds} rounds of traffic`);
    assert.ok(await pb.send("b-c", "after", 1000), "the connection still works");
    assert.equal(await pc.probe("tcp", b.ipv4, 8080, 400), false, "c → b still denied");
  });

  await t.step("node 3 restarted on another health port: 1 and 3 unreachable, alive", async () => {
    // The port is one per cluster (node records do not carry it): each probes the other where
    // nothing answers. Only reachability says so; leases and traffic do not care.
    cluster.agentArgs = cluster.agentArgs.map((a) => a === String(HEALTH_PORT) ? "4260" : a);
    await n3.stopAgent();
    await n3.startAgent();
    const row = async (n: ClusterNode, name: string) =>
      (JSON.parse(await cilia(n.socket, "node", "list", "-o", "json")) as NodeRow[])
        .find((r) => r.name === name);
    for (const [n, other] of [[n1, n3], [n3, n1]] as const) {
      await eventually(`${other.name} alive and unreachable on ${n.name}`, async () => {
        const r = await row(n, other.name);
        return r?.health === "alive" && r.reachability?.reachable === false;
      }, 8000);
    }
    assert.ok(await pb.send("b-c", "across the restart", 1000), "the connection still works");
    assert.ok(await pb.probe("tcp", c.ipv4, 8080, 1000), "new b → c connections too");
  });
});
