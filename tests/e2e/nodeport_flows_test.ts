// NodePort traffic and its drops in flows (issue #13; bpf/lib/np_event.h, nodeport.h 11.): two
// nodes in tunnel mode and an outside host (the underlay namespace, 203.0.113.1, routed from the
// nodes), as in nat_test.ts. A connection from the outside host to <node-1 IP>:<nodePort> gives
// exactly one trace (sub_type 4, TRACE_FROM_NETWORK) on node-1, whatever its number of packets,
// whose flow goes from the client to the backend (a pod on node-1 by name; the one on node-2 by
// address, before node-1's SNAT) via the NodePort frontend (destination_service type NodePort,
// frontend <node-1 IP>:30080/TCP), INGRESS; a LoadBalancer address the same with its frontend
// (type LoadBalancer). A NodePort service without backends gives a drop (158, DROP_NO_SERVICE)
// naming its NodePort frontend. `cilia observe --service` finds both. Then IPv6 (nodeport6.h) and,
// after a restart in native routing with --node-port-mode dsr, the DSR trace at node-1 (the remote
// backend sees the client). Needs root.
import assert from "node:assert/strict";
import { Cluster, type ClusterNode } from "../helpers/cluster.ts";
import { KERNEL_TOOLS, needs } from "../helpers/root.ts";
import type { Flow } from "../../agent/monitor/flow.ts";
import { cilia, denoIn, killAll, putService, waitFor, waitListening } from "./_services_lab.ts";

const OUTSIDE = "203.0.113.1";
const OUTSIDE6 = "2001:db8:200::fe";

// A backend pod: HTTP on 8080 (IPv4) and 8086 (IPv6) answering "<name> <peer address>".
const BACKEND = `
const name = Deno.args[0];
const answer = (_r, info) => new Response(name + " " + info.remoteAddr.hostname);
Deno.serve({ hostname: "0.0.0.0", port: 8080, onListen() {} }, answer);
Deno.serve({ hostname: "::", port: 8086, onListen() {} }, answer);
`;

const portOf = (f: Flow, side: "source_port" | "destination_port") =>
  f.l4 && "TCP" in f.l4 ? f.l4.TCP[side] : undefined;

Deno.test({
  name: "nodeport flows: traces and drops of the underlay name the NodePort frontend",
  ...needs({ root: true, binaries: [...KERNEL_TOOLS, "etcd", "curl"] }),
  sanitizeResources: false,
}, async (t) => {
  await using cluster = await Cluster.create({ nodes: 2 });
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const lab = cluster.lab, ul = cluster.underlay;
  const children: Deno.ChildProcess[] = [];
  try {
    await lab.run(ul, ["ip", "addr", "add", `${OUTSIDE}/32`, "dev", "lo"]);
    for (const n of [n1, n2]) {
      await lab.run(n.node.netns, ["ip", "route", "add", "203.0.113.0/24", "via", "192.0.2.254"]);
    }
    await Deno.writeTextFile(`${lab.dir}/backend.js`, BACKEND);
    const b1 = await n1.addPod("b1", { app: "web" });
    const b2 = await n2.addPod("b2", { app: "web" });
    for (const b of [b1, b2]) {
      children.push(denoIn(b.netns, `${lab.dir}/backend.js`, [b.name], { stdout: "null" }).spawn());
      await waitListening(lab, b.netns, "sport = :8080");
      await waitListening(lab, b.netns, "sport = :8086");
    }
    // One new connection from the outside host per call: [answer, the client's port].
    const fromOutside = async (url: string, from = OUTSIDE): Promise<[string, number]> => {
      const r = await lab.exec(ul, [
        ...["curl", "-s", "-g", "-m", "2", "--interface", from, "-w", "\\n%{local_port}", url],
      ]);
      const [body = "", port = "0"] = r.stdout.trim().split("\n");
      return [r.code === 0 ? body.trim() : `curl exit ${r.code}`, Number(port)];
    };
    await putService(n1, {
      name: "default/web",
      type: "NodePort",
      nodePort: 30080,
      frontend: { ip: "10.96.0.20", port: 80, protocol: "TCP" },
      backends: [b1, b2].map((b) => ({ ip: b.ipv4, port: 8080 })),
    });
    const frontend = `${n1.ip}:30080/TCP`;

    // Connections from `client` to `url` on node-1 until both backends answered as `want` says;
    // then each connection's one trace (SYN, ACKs, request, FIN: only the first packet sends),
    // from the client to the backend it reached, via `frontend`.
    const traced = async (o: {
      url: string;
      client: string;
      want: [string, string];
      frontend: string;
      backends: [string, string];
      port: number;
      service?: { name: string; type: "NodePort" | "LoadBalancer" };
    }) => {
      const got = new Map<string, number[]>(); // answer → the clients' ports
      await waitFor(`both backends through node-1 (${o.url})`, async () => {
        const [answer, port] = await fromOutside(o.url, o.client);
        got.set(answer, [...got.get(answer) ?? [], port]);
        return o.want.every((w) => got.has(w));
      }, 20_000).catch(() => assert.fail(JSON.stringify([...got])));
      assert.deepEqual([...got.keys()].sort(), [...o.want].sort(), "only the expected answers");
      // The monitor reads the ring on a timer: wait until every connection's trace is in.
      let traces: Flow[] = [];
      const ports = [...got.values()].flat();
      await waitFor("a trace of every connection", async () => {
        traces = (await n1.flows()).filter((f) =>
          f.event_type.sub_type === 4 && f.IP?.source === o.client
        );
        return ports.every((p) => traces.some((f) => portOf(f, "source_port") === p));
      }, 5_000).catch(() => {});
      for (const [answer, ports] of got) {
        const local = answer.startsWith("b1 ");
        for (const port of ports) {
          const mine = traces.filter((f) => portOf(f, "source_port") === port);
          // One trace per connection (SYN, ACKs, request, FIN: only the first packet sends).
          assert.equal(
            mine.length,
            1,
            `connection from ${port} (${answer}): ${JSON.stringify(mine)}`,
          );
          const f = mine[0]!;
          assert.equal(f.verdict, "FORWARDED");
          assert.equal(f.traffic_direction, "INGRESS");
          assert.equal(f.IP?.destination, local ? o.backends[0] : o.backends[1]);
          assert.equal(portOf(f, "destination_port"), o.port);
          assert.deepEqual(f.destination_service, {
            name: o.service?.name ?? "web",
            namespace: "default",
            frontend: o.frontend,
            id: f.destination_service?.id,
            type: o.service?.type ?? "NodePort",
          });
          assert.equal(f.source.identity, 2, "the outside host is reserved:world");
          if (local) assert.equal(f.destination.pod_name, "b1");
          else assert.ok(f.destination.identity > 255, JSON.stringify(f.destination));
        }
      }
    };

    await t.step("a connection to <node IP>:<nodePort>: one trace, client → backend", async () => {
      await traced({
        url: `http://${n1.ip}:30080/`,
        client: OUTSIDE,
        want: [`b1 ${OUTSIDE}`, `b2 ${n1.ip}`],
        frontend,
        backends: [b1.ipv4, b2.ipv4],
        port: 8080,
      });
    });

    await t.step("a LoadBalancer address: its frontend", async () => {
      await lab.run(ul, ["ip", "route", "add", "198.51.100.7/32", "via", n1.ip]);
      await putService(n1, {
        name: "default/lb",
        type: "LoadBalancer",
        nodePort: 30082,
        loadBalancerIPs: ["198.51.100.7"],
        frontend: { ip: "10.96.0.22", port: 80, protocol: "TCP" },
        backends: [b1, b2].map((b) => ({ ip: b.ipv4, port: 8080 })),
      });
      await traced({
        url: "http://198.51.100.7:80/",
        client: OUTSIDE,
        want: [`b1 ${OUTSIDE}`, `b2 ${n1.ip}`],
        frontend: "198.51.100.7:80/TCP",
        backends: [b1.ipv4, b2.ipv4],
        port: 8080,
        service: { name: "lb", type: "LoadBalancer" },
      });
    });

    await t.step("a NodePort without backends: drop 158 with its frontend", async () => {
      await putService(n1, {
        name: "default/empty",
        type: "NodePort",
        nodePort: 30081,
        frontend: { ip: "10.96.0.21", port: 80, protocol: "TCP" },
        backends: [],
      });
      const [answer] = await fromOutside(`http://${n1.ip}:30081/`);
      assert.equal(answer, "curl exit 7", "refused at once (ICMP port unreachable)");
      let drop: Flow | undefined;
      await waitFor("the drop's flow", async () => {
        drop = (await n1.flows({ verdict: "DROPPED" })).find((f) =>
          f.drop_reason === 158 && f.IP?.source === OUTSIDE &&
          portOf(f, "destination_port") === 30081
        );
        return drop !== undefined;
      }, 5_000).catch(() => assert.fail("no drop 158 for the connection"));
      assert.equal(drop!.drop_reason_desc, "SERVICE_BACKEND_NOT_FOUND");
      assert.equal(drop!.traffic_direction, "INGRESS");
      assert.equal(drop!.IP?.destination, n1.ip);
      assert.equal(drop!.destination_service?.name, "empty");
      assert.equal(drop!.destination_service?.type, "NodePort");
      assert.equal(drop!.destination_service?.frontend, `${n1.ip}:30081/TCP`);
    });

    await t.step("cilia observe --service finds them", async () => {
      const lines = (svc: string, ...more: string[]) =>
        cilia(n1.socket, "observe", "--service", svc, ...more).then((o) =>
          o.split("\n").filter((l) => l !== "")
        );
      const web = await lines("default/web", "-o", "json");
      assert.ok(web.length > 0);
      for (const l of web) {
        const f = (JSON.parse(l) as { flow: Flow }).flow;
        assert.equal(f.destination_service?.name, "web", l);
      }
      const empty = await lines(`${n1.ip}:30081/TCP`);
      assert.ok(
        empty.some((l) =>
          l.includes(`via service default/empty NodePort ${n1.ip}:30081/TCP`) &&
          l.includes("DROPPED")
        ),
        empty.join("\n"),
      );
      const compact = await lines("default/web");
      assert.ok(
        compact.some((l) => l.includes(`default/b1:8080`) && l.includes(`NodePort ${frontend}`)),
        compact.join("\n"),
      );
    });

    await t.step("IPv6 (nodeport6.h): one trace per connection, client → backend", async () => {
      await lab.run(ul, ["ip", "addr", "add", `${OUTSIDE6}/64`, "dev", "br0", "nodad"]);
      await putService(n1, {
        name: "default/web",
        type: "NodePort",
        nodePort: 30086,
        frontend: { ip: "fd00:96::20", port: 80, protocol: "TCP" },
        backends: [b1, b2].map((b) => ({ ip: b.ipv6, port: 8086 })),
      });
      await traced({
        url: `http://[${n1.ip6}]:30086/`,
        client: OUTSIDE6,
        want: [`b1 ${OUTSIDE6}`, `b2 ${n1.ip6}`],
        frontend: `[${n1.ip6}]:30086/TCP`,
        backends: [b1.ipv6, b2.ipv6],
        port: 8086,
      });
    });

    await t.step("--node-port-mode dsr: the trace at node-1, client → remote backend", async () => {
      cluster.routingMode = "native";
      cluster.agentArgs = ["--node-port-mode", "dsr"];
      for (const n of [n1, n2]) await n.stopAgent();
      for (const n of [n1, n2]) await n.startAgent();
      await putService(n1, {
        name: "default/web",
        type: "NodePort",
        nodePort: 30080,
        frontend: { ip: "10.96.0.20", port: 80, protocol: "TCP" },
        backends: [b1, b2].map((b) => ({ ip: b.ipv4, port: 8080 })),
      });
      await traced({
        url: `http://${n1.ip}:30080/`,
        client: OUTSIDE,
        want: [`b1 ${OUTSIDE}`, `b2 ${OUTSIDE}`],
        frontend,
        backends: [b1.ipv4, b2.ipv4],
        port: 8080,
      });
    });
  } finally {
    await killAll(children);
  }
});
