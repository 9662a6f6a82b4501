// Node-IP SNAT with real packets (issues #12 and #13; bpf/lib/nat.h, nodeport.h): two nodes in
// tunnel mode and an outside host (the underlay namespace, 203.0.113.1, routed from the nodes).
// Masquerade: a pod's TCP, UDP and ping reach the outside host from the node IP and get their
// replies, ICMP errors too; an egress toCIDR policy still decides by the pod's identity (another port drops,
// 133); with --enable-ipv4-masquerade=false, or the outside host inside
// --ipv4-native-routing-cidr, the outside host sees the pod IP. NodePort: the
// outside host reaches <node IP>:<nodePort> and lands on a backend on that node (it sees the
// client's address) and on the other node (it sees the node IP: SNAT, the reply comes back
// through the node that got the request); a LoadBalancer address works the same; a nodePort
// outside the range is refused; a service without endpoints refuses connections at once (ICMP
// port unreachable, as kube-proxy's REJECT), from a pod and from outside. Last, both agents
// restart in native routing mode with --node-port-mode dsr: the remote backend sees the client
// and answers it directly, over IPv4 (an IP option) and IPv6 (a Destination Options header,
// bpf/lib/dsr6.h): node-1 keeps no reply translation, node-2 learnt the frontend for the reply,
// an IPv6 NodePort can be created in that mode, a UDP datagram the header would push over the MTU
// gets ICMPv6 Packet Too Big (the client's route learns MTU - 24) and one that fits passes, and
// a local or DSR backend's port unreachable reaches the client about the frontend
// (bpf/lib/nat_icmp6.h; a remote SNAT backend's too, in the last step, where a pod on node-1
// also reaches both backends through node-2 natively: nodeport.h, 10.). NodePort over IPv6 (bpf/lib/nodeport6.h, SNAT), in tunnel and then in
// native routing: the outside host (2001:db8:200::fe on the underlay) reaches
// [node IPv6]:nodePort, the local backend sees the client, the remote one the node's IPv6
// address, a connection stays on its backend, a LoadBalancer IPv6 address works, and a service
// without endpoints answers ICMPv6 port unreachable. Needs root.
import assert from "node:assert/strict";
import { Cluster, type ClusterNode } from "../helpers/cluster.ts";
import { KERNEL_TOOLS, needs } from "../helpers/root.ts";
import { cilia, killAll, putService, waitFor, waitListening } from "./_services_lab.ts";

const OUTSIDE = "203.0.113.1";
const OUTSIDE6 = "2001:db8:200::fe";
const dec = new TextDecoder();

// The outside host: HTTP on 8080 and 8081 answering with the peer's address, UDP echo of the
// peer's address on 8053.
const OUTSIDE_SERVER = `
const host = Deno.args[0];
for (const port of [8080, 8081]) {
  Deno.serve({ hostname: host, port, onListen() {} }, (_r, info) => new Response(info.remoteAddr.hostname));
}
const udp = Deno.listenDatagram({ hostname: host, port: 8053, transport: "udp" });
for await (const [, peer] of udp) await udp.send(new TextEncoder().encode(peer.hostname), peer);
`;

// A backend pod: HTTP on 8080 (IPv4) and 8086 (IPv6) answering "<name> <peer address>", UDP on
// 8087 (IPv6) answering "<name> <peer address> <bytes received>".
const BACKEND = `
const name = Deno.args[0];
const answer = (_r, info) => new Response(name + " " + info.remoteAddr.hostname);
Deno.serve({ hostname: "0.0.0.0", port: 8080, onListen() {} }, answer);
Deno.serve({ hostname: "::", port: 8086, onListen() {} }, answer);
const udp = Deno.listenDatagram({ hostname: "::", port: 8087, transport: "udp" });
for await (const [data, peer] of udp) {
  await udp.send(new TextEncoder().encode(name + " " + peer.hostname + " " + data.length), peer);
}
`;

// One UDP datagram of SIZE bytes from BIND to HOST:PORT; prints the answer and its sender as
// JSON, or "timeout" after MS milliseconds.
const UDP6_CLIENT = `
const [bind, host, port, size, ms] = Deno.args;
const s = Deno.listenDatagram({ hostname: bind, port: 0, transport: "udp" });
await s.send(new Uint8Array(Number(size)), { transport: "udp", hostname: host, port: Number(port) });
const t = setTimeout(() => { console.log("timeout"); Deno.exit(0); }, Number(ms));
const [data, peer] = await s.receive();
clearTimeout(t);
console.log(JSON.stringify({ answer: new TextDecoder().decode(data), from: peer.hostname, port: peer.port }));
Deno.exit(0);
`;

const UDP_CLIENT = `
const [host, port] = Deno.args;
const s = Deno.listenDatagram({ hostname: "0.0.0.0", port: 0, transport: "udp" });
await s.send(new TextEncoder().encode("x"), { transport: "udp", hostname: host, port: Number(port) });
const t = setTimeout(() => { console.log("timeout"); Deno.exit(1); }, 3000);
const [data] = await s.receive();
clearTimeout(t);
console.log(new TextDecoder().decode(data));
Deno.exit(0);
`;

Deno.test({
  name: "nat: masquerade to the node IP and NodePort from outside the cluster",
  ...needs({ root: true, binaries: [...KERNEL_TOOLS, "etcd", "curl", "ping", "dig"] }),
  sanitizeResources: false,
}, async (t) => {
  await using cluster = await Cluster.create({ nodes: 2 });
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const lab = cluster.lab;
  const ul = cluster.underlay;
  const children: Deno.ChildProcess[] = [];
  const deno = (netns: string, script: string, args: string[]) =>
    new Deno.Command("ip", {
      args: ["netns", "exec", netns, Deno.execPath(), "run", "-A", "--unstable-net", "--no-config"]
        .concat([script, ...args]),
      env: { DENO_NO_UPDATE_CHECK: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    });
  try {
    await lab.run(ul, ["ip", "addr", "add", `${OUTSIDE}/32`, "dev", "lo"]);
    for (const n of [n1, n2]) {
      await lab.run(n.node.netns, ["ip", "route", "add", "203.0.113.0/24", "via", "192.0.2.254"]);
    }
    for (
      const [name, text] of [
        ["outside", OUTSIDE_SERVER],
        ["backend", BACKEND],
        ["udp", UDP_CLIENT],
        ["udp6", UDP6_CLIENT],
      ]
    ) {
      await Deno.writeTextFile(`${lab.dir}/${name}.js`, text!);
    }
    children.push(deno(ul, `${lab.dir}/outside.js`, [OUTSIDE]).spawn());
    const client = await n1.addPod("client", { app: "client" });
    const curl = async (netns: string, url: string) => {
      const r = await lab.exec(netns, ["curl", "-s", "-m", "3", url]);
      return r.code === 0 ? r.stdout.trim() : `curl exit ${r.code}`;
    };
    await waitListening(lab, ul, "sport = :8053");

    const b1 = await n1.addPod("b1", { app: "web" });
    const b2 = await n2.addPod("b2", { app: "web" });
    for (const b of [b1, b2]) {
      children.push(deno(b.netns, `${lab.dir}/backend.js`, [b.name]).spawn());
      await waitListening(lab, b.netns, "sport = :8080");
    }
    const upsert = (body: Record<string, unknown>) =>
      n1.call("PUT", "/v1/service", {
        frontend: { ip: "10.96.0.20", port: 80, protocol: "TCP" },
        backends: [b1, b2].map((b) => ({ ip: b.ipv4, port: 8080 })),
        ...body,
      });
    // Answers from the outside host to url, one new connection (curl) each.
    const curls = async (url: string, count: number, flags: string[]) => {
      const out: string[] = [];
      for (let i = 0; i < count; i++) {
        const r = await lab.exec(ul, ["curl", "-s", "-m", "2", ...flags, url]);
        out.push(r.code === 0 ? r.stdout.trim() : `curl exit ${r.code}`);
      }
      return out;
    };
    const fromOutside = (url: string, count: number) => curls(url, count, ["--interface", OUTSIDE]);
    // `cilia bpf nat list` on node-1.
    const natList = async () =>
      JSON.parse(await cilia(n1.socket, "bpf", "nat", "list", "-o", "json")) as Record<
        string,
        string | number
      >[];
    const restart = async (...nodes: ClusterNode[]) => {
      for (const n of nodes) await n.stopAgent();
      for (const n of nodes) await n.startAgent();
    };

    await t.step("masquerade: TCP, UDP and ping leave with the node IP", async () => {
      assert.equal(await curl(client.netns, `http://${OUTSIDE}:8080/`), n1.ip);
      const udp = await deno(client.netns, `${lab.dir}/udp.js`, [OUTSIDE, "8053"]).output();
      assert.equal(dec.decode(udp.stdout).trim(), n1.ip, dec.decode(udp.stderr));
      const ping = await lab.exec(client.netns, ["ping", "-c", "2", "-W", "2", OUTSIDE]);
      assert.equal(ping.code, 0, `ping through masquerade: ${ping.stdout}${ping.stderr}`);
      // An ICMP error about a masqueraded flow reaches the pod (UDP to a closed port).
      const dig = await lab.exec(client.netns, [
        ...["dig", "+tries=1", "+time=2", `@${OUTSIDE}`, "-p", "9", "example.com"],
      ]);
      assert.match(dig.stdout, /connection refused/, dig.stdout);
      // `cilia bpf nat list` shows the client's TCP flow to the outside host and its reverse.
      const rows = await natList();
      const out = rows.find((r) =>
        r.kind === "masquerade" && r.hook === "egress" && r.source === client.ipv4 &&
        r.destinationPort === 8080
      );
      assert.ok(out, JSON.stringify(rows));
      const port = Number(String(out.newSource).split(":")[1]);
      assert.ok(port >= 32768 && port <= 60999, `a NAT port: ${out.newSource}`);
      assert.ok(
        rows.some((r) =>
          r.kind === "masquerade" && r.hook === "ingress" && r.destinationPort === port &&
          r.newDestination === `${client.ipv4}:${out.sourcePort}`
        ),
      );
      // The underlay namespace has no route to the pod CIDRs: replies came back through NAT.
      const routes = await lab.run(ul, ["ip", "route"]);
      assert.ok(!routes.includes("10.200."), routes);
    });

    await t.step("policy still decides by the pod's identity (toCIDR, 133)", async () => {
      await n1.policy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-out, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDR: [${OUTSIDE}/32]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`);
      assert.equal(await curl(client.netns, `http://${OUTSIDE}:8080/`), n1.ip);
      assert.match(await curl(client.netns, `http://${OUTSIDE}:8081/`), /curl exit/);
      const drops = await n1.flows({ verdict: "DROPPED" });
      assert.ok(
        drops.some((f) =>
          f.drop_reason === 133 && JSON.stringify(f.l4).includes(`"destination_port":8081`)
        ),
        `a policy drop to 8081: ${JSON.stringify(drops.slice(-3))}`,
      );
      assert.equal((await n1.call("DELETE", "/v1/policy?name=client-out")).status, 200);
    });

    await t.step("masquerade off, or inside the native-routing CIDR: the pod IP", async () => {
      await lab.run(ul, ["ip", "route", "add", n1.podCidr, "via", n1.ip]);
      cluster.agentArgs = ["--enable-ipv4-masquerade=false"];
      await restart(n1);
      assert.equal(await curl(client.netns, `http://${OUTSIDE}:8080/`), client.ipv4);
      // Masquerade on, but the outside host inside --ipv4-native-routing-cidr: no SNAT.
      cluster.agentArgs = ["--ipv4-native-routing-cidr", "203.0.113.0/24"];
      await restart(n1);
      assert.equal(await curl(client.netns, `http://${OUTSIDE}:8080/`), client.ipv4);
      cluster.agentArgs = [];
      await restart(n1);
      assert.equal(await curl(client.netns, `http://${OUTSIDE}:8080/`), n1.ip);
      // Masquerade on: a connection the outside host opens to a pod keeps the pod's address.
      assert.deepEqual(await fromOutside(`http://${b1.ipv4}:8080/`, 1), [`b1 ${OUTSIDE}`]);
      await lab.run(ul, ["ip", "route", "del", n1.podCidr]);
    });

    await t.step("NodePort: local backend sees the client, remote one the node IP", async () => {
      // deno-fmt-ignore
      const out = await cilia(n1.socket, "service", "create", "--type", "NodePort",
        "--node-port", "30080", "--frontend", "10.96.0.20:80/TCP",
        "--backends", `${b1.ipv4}:8080,${b2.ipv4}:8080`, "-o", "json");
      const created = JSON.parse(out) as { type: string; nodePort: number };
      assert.deepEqual([created.type, created.nodePort], ["NodePort", 30080]);
      for (const [n, local, remote] of [[n1, "b1", "b2"], [n2, "b2", "b1"]] as const) {
        let got: string[] = [];
        await waitFor(`both backends through ${n.name}`, async () => {
          got = [...got, ...await fromOutside(`http://${n.ip}:30080/`, 6)];
          return got.includes(`${local} ${OUTSIDE}`) && got.includes(`${remote} ${n.ip}`);
        }, 20_000).catch(() => assert.fail(`through ${n.name}: ${JSON.stringify(got)}`));
        assert.deepEqual(
          got.filter((x) => x !== `${local} ${OUTSIDE}` && x !== `${remote} ${n.ip}`),
          [],
          `every answer from a backend, with the expected peer: ${JSON.stringify(got)}`,
        );
      }
    });

    // The client pod (node-1) through node-2: b2's replies to it keep the frontend as source
    // (NP_LOCAL), natively too, where they leave node-2's pod as pod-to-pod (nodeport.h, 10.).
    const fromClientPod = async () => {
      let got: string[] = [];
      await waitFor("both backends through node-2 from the client pod", async () => {
        for (let i = 0; i < 6; i++) got.push(await curl(client.netns, `http://${n2.ip}:30080/`));
        return got.includes(`b2 ${client.ipv4}`) && got.includes(`b1 ${n2.ip}`);
      }, 20_000).catch(() => assert.fail(`from the client pod: ${JSON.stringify(got)}`));
      got = got.filter((x) => x !== `b2 ${client.ipv4}` && x !== `b1 ${n2.ip}`);
      assert.deepEqual(got, [], "every answer from a backend");
    };
    await t.step("NodePort from a pod on another node (tunnel): both backends answer", async () => {
      await fromClientPod();
    });

    await t.step("LoadBalancer address; nodePort range and ClusterIP checks", async () => {
      await lab.run(ul, ["ip", "route", "add", "198.51.100.7/32", "via", n1.ip]);
      const r = await upsert({
        type: "LoadBalancer",
        nodePort: 30080,
        loadBalancerIPs: ["198.51.100.7"],
      });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      const got = await fromOutside("http://198.51.100.7:80/", 8);
      assert.ok(got.every((x) => /^b[12] /.test(x)), JSON.stringify(got));
      const bad = await upsert({ type: "NodePort", nodePort: 80 });
      assert.equal(bad.status, 400);
      assert.match(JSON.stringify(bad.body), /Invalid nodePort 80: expected 30000-32767/);
      const cip = await upsert({ nodePort: 30090 });
      assert.equal(cip.status, 400);
      // The ClusterIP itself is not served on the underlay.
      await lab.run(ul, ["ip", "route", "add", "10.96.0.20/32", "via", n1.ip]);
      assert.match((await fromOutside("http://10.96.0.20:80/", 1))[0]!, /curl exit/);
    });

    await t.step(
      "no endpoints: refused like kube-proxy (ICMP port unreachable), not dropped",
      async () => {
        for (const [ip, type] of [["10.96.0.30", "ClusterIP"], ["10.96.0.31", "NodePort"]]) {
          await putService(n1, {
            type,
            ...(type === "NodePort" ? { nodePort: 30081 } : {}),
            frontend: { ip, port: 80, protocol: "TCP" },
            backends: [],
          });
        }
        const started = Date.now();
        const fromPod = await lab.exec(client.netns, [
          "curl",
          "-s",
          "-m",
          "3",
          "http://10.96.0.30/",
        ]);
        assert.equal(fromPod.code, 7, "curl: connection refused (not a timeout, 28)");
        const outside = await fromOutside(`http://${n1.ip}:30081/`, 1);
        assert.deepEqual(outside, ["curl exit 7"]);
        assert.ok(Date.now() - started < 2500, `answered at once: ${Date.now() - started} ms`);
      },
    );

    // NodePort over IPv6 (bpf/lib/nodeport6.h) from the outside host's OUTSIDE6.
    const put6 = (body: Record<string, unknown>) =>
      putService(n1, {
        frontend: { ip: "fd00:96::20", port: 80, protocol: "TCP" },
        backends: [b1, b2].map((b) => ({ ip: b.ipv6, port: 8086 })),
        ...body,
      });
    // A DNS query from the outside host to [node-1]:port (UDP, a connected socket).
    const dig6 = (port: number) =>
      lab.exec(ul, [
        ...["dig", "+tries=1", "+time=2", "-b", OUTSIDE6, `@${n1.ip6}`, "-p", String(port)],
        "example.com",
      ]);
    // -g: the brackets are the URL's.
    const from6 = (url: string, count: number, extra: string[] = []) =>
      curls(url, count, ["-g", ...extra]);
    const nodePort6 = async () => {
      await put6({ type: "NodePort", nodePort: 30086 });
      for (const [n, local, remote] of [[n1, "b1", "b2"], [n2, "b2", "b1"]] as const) {
        const want = [`${local} ${OUTSIDE6}`, `${remote} ${n.ip6}`];
        let got: string[] = [];
        await waitFor(`both IPv6 backends through ${n.name}`, async () => {
          got = [...got, ...await from6(`http://[${n.ip6}]:30086/`, 6)];
          return want.every((w) => got.includes(w));
        }, 20_000).catch(() => assert.fail(`IPv6 through ${n.name}: ${JSON.stringify(got)}`));
        assert.deepEqual(got.filter((x) => !want.includes(x)), [], JSON.stringify(got));
      }
      // One connection, five requests: every answer from the backend it started on.
      const [keep] = await from6(`http://[${n1.ip6}]:30086/`, 1, [
        "-w",
        "\\n",
        ...Array(4).fill(`http://[${n1.ip6}]:30086/`),
      ]);
      const answers = keep!.split("\n").map((x) => x.trim()).filter((x) => x !== "");
      assert.equal(answers.length, 5, keep);
      assert.equal(new Set(answers).size, 1, `one backend per connection: ${keep}`);
      // `cilia bpf nat list` shows the IPv6 translations (cilia_snat6) too.
      const rows = await natList();
      assert.ok(
        rows.some((r) =>
          r.kind === "nodeport" && r.hook === "ingress" && r.source === OUTSIDE6 &&
          r.destination === n1.ip6 && r.destinationPort === 30086 &&
          /^\[fd00:200:[12]::[0-9a-f]+\]:8086$/.test(String(r.newDestination))
        ),
        JSON.stringify(rows.filter((r) => String(r.source).includes(":"))),
      );
      // A LoadBalancer IPv6 address, routed to node-1.
      await lab.run(ul, ["ip", "-6", "route", "replace", "2001:db8:96::7/128", "via", n1.ip6]);
      await put6({ type: "LoadBalancer", nodePort: 30086, loadBalancerIPs: ["2001:db8:96::7"] });
      const lb = await from6("http://[2001:db8:96::7]:80/", 6);
      assert.ok(lb.every((x) => /^b[12] /.test(x)), JSON.stringify(lb));
      // No endpoints: ICMPv6 port unreachable at once (curl: connection refused), not a timeout.
      await putService(n1, {
        type: "NodePort",
        nodePort: 30087,
        frontend: { ip: "fd00:96::21", port: 80, protocol: "TCP" },
        backends: [],
      });
      const started = Date.now();
      assert.deepEqual(await from6(`http://[${n1.ip6}]:30087/`, 1), ["curl exit 7"]);
      assert.ok(Date.now() - started < 2500, `answered at once: ${Date.now() - started} ms`);
    };

    await t.step("NodePort over IPv6 (tunnel, SNAT): local and remote backends", async () => {
      await lab.run(ul, ["ip", "addr", "add", `${OUTSIDE6}/64`, "dev", "br0", "nodad"]);
      await nodePort6();
    });

    await t.step(
      "--node-port-mode dsr (native routing): the remote backend answers directly",
      async () => {
        cluster.routingMode = "native";
        cluster.agentArgs = ["--node-port-mode", "dsr"];
        await restart(n1, n2);
        let got: string[] = [];
        await waitFor("both backends through node-1", async () => {
          got = [...got, ...await fromOutside(`http://${n1.ip}:30080/`, 6)];
          return got.includes(`b1 ${OUTSIDE}`) && got.includes(`b2 ${OUTSIDE}`);
        }, 20_000).catch(() => assert.fail(`DSR through node-1: ${JSON.stringify(got)}`));
        assert.ok(
          got.every((x) => x === `b1 ${OUTSIDE}` || x === `b2 ${OUTSIDE}`),
          JSON.stringify(got),
        );
      },
    );

    await t.step(
      "--node-port-mode dsr over IPv6: a Destination Options header, the reply direct",
      async () => {
        // The stored IPv6 NodePort (b1 on node-1, b2 on node-2), now in DSR mode.
        await put6({ type: "NodePort", nodePort: 30086 });
        const want = [`b1 ${OUTSIDE6}`, `b2 ${OUTSIDE6}`];
        let got: string[] = [];
        await waitFor("both IPv6 backends through node-1", async () => {
          got = [...got, ...await from6(`http://[${n1.ip6}]:30086/`, 6)];
          return want.every((w) => got.includes(w));
        }, 20_000).catch(() => assert.fail(`IPv6 DSR through node-1: ${JSON.stringify(got)}`));
        assert.deepEqual(got.filter((x) => !want.includes(x)), [], JSON.stringify(got));
        // The reply's path: node-1 sent the client's packets to b2 with no SNAT (b2 saw the
        // client; an SNAT entry of the earlier steps has a new source), so b2's replies cannot
        // come back through it, and node-2 learnt the frontend from the header: an egress entry
        // for each of those connections gives b2's replies the source [node-1]:30086, straight
        // to the client.
        const b2Addr = `[${b2.ipv6}]:8086`;
        const rows1 = (await natList()).filter((r) => r.source === OUTSIDE6);
        const fwd = rows1.filter((r) =>
          r.kind === "nodeport" && r.newDestination === b2Addr && r.newSource === undefined
        );
        assert.ok(fwd.length > 0, `DNAT-only entries to b2: ${JSON.stringify(rows1)}`);
        const rows2 = JSON.parse(
          await cilia(n2.socket, "bpf", "nat", "list", "-o", "json"),
        ) as Record<
          string,
          string | number
        >[];
        // (node-2's own NodePort entries of the earlier steps give [node-2]:30086.)
        const learnt = rows2.filter((r) =>
          r.kind === "nodeport-local-reply" && r.hook === "egress" && r.source === b2.ipv6 &&
          r.destination === OUTSIDE6 && r.newSource === `[${n1.ip6}]:30086`
        );
        for (const r of fwd) {
          assert.ok(
            learnt.some((l) => l.destinationPort === r.sourcePort),
            `node-2 learnt the connection from port ${r.sourcePort}: ${JSON.stringify(learnt)}`,
          );
        }
        // MTU (dsr6.h, 2.): UDP to a remote backend, from the outside host.
        await putService(n1, {
          type: "NodePort",
          nodePort: 30088,
          frontend: { ip: "fd00:96::22", port: 53, protocol: "UDP" },
          backends: [{ ip: b2.ipv6, port: 8087 }],
        });
        const udp6 = async (size: number, ms: number) => {
          const args = [OUTSIDE6, n1.ip6, "30088", String(size), String(ms)];
          const r = await deno(ul, `${lab.dir}/udp6.js`, args).output();
          return dec.decode(r.stdout).trim() || dec.decode(r.stderr);
        };
        let small = "";
        await waitFor("a small datagram through DSR", async () => {
          small = await udp6(100, 1000);
          return small !== "timeout";
        }, 10_000).catch(() => assert.fail(`UDP over IPv6 DSR: ${small}`));
        assert.deepEqual(JSON.parse(small), {
          answer: `b2 ${OUTSIDE6} 100`,
          from: n1.ip6,
          port: 30088,
        });
        // 1,452 bytes: a 1,500-byte packet, 1,524 with the header. Packet Too Big comes back
        // (the outside host's route to node-1 learns 1,476), and the largest datagram that fits
        // passes: the smaller of that and b2's MTU less the header (b2 keeps the tunnel-mode MTU
        // it was created with), less the IPv6 and UDP headers.
        await lab.run(ul, ["ip", "-6", "route", "flush", "cache"]);
        assert.equal(await udp6(1452, 1500), "timeout");
        const route = await lab.run(ul, ["ip", "-6", "route", "get", n1.ip6, "from", OUTSIDE6]);
        assert.match(route, /mtu 1476/, route);
        const [link] = JSON.parse(await lab.run(b2.netns, ["ip", "-j", "link", "show", "eth0"]));
        const fits = Math.min(1476, (link as { mtu: number }).mtu - 24) - 48;
        assert.deepEqual(JSON.parse(await udp6(fits, 3000)), {
          answer: `b2 ${OUTSIDE6} ${fits}`,
          from: n1.ip6,
          port: 30088,
        });
        await lab.run(ul, ["ip", "-6", "route", "flush", "cache"]);
        // ICMPv6 errors about NodePort flows (nat_icmp6.h): UDP to a closed port of a local
        // backend (b1) and of a DSR one (b2, whose error carries the header it got): the
        // client's connected socket hears "connection refused" about its own packet to the
        // frontend, not a timeout.
        for (const [port, b] of [[30090, b1], [30091, b2]] as const) {
          await putService(n1, {
            type: "NodePort",
            nodePort: port,
            frontend: { ip: `fd00:96::${port - 30000}`, port: 53, protocol: "UDP" },
            backends: [{ ip: b.ipv6, port: 9 }],
          });
          const r = await dig6(port);
          assert.match(r.stdout, /connection refused/, `through ${b.name}: ${r.stdout}`);
        }
      },
    );

    await t.step("NodePort over IPv6 (native, SNAT): local and remote backends", async () => {
      cluster.agentArgs = [];
      await restart(n1, n2);
      await fromClientPod(); // IPv4, native and SNAT
      await nodePort6();
      // The remote backend's port unreachable reaches node-1 and goes on to the client.
      const r = await dig6(30091);
      assert.match(r.stdout, /connection refused/, `through node-1's SNAT: ${r.stdout}`);
    });
  } finally {
    await killAll(children);
  }
});
