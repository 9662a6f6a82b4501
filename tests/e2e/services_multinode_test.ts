// A ClusterIP service across nodes (issues #12 and #13), in tunnel and in native routing: a pod on
// node-1 reaches a service whose backends are one pod on each node; the service is created
// through node-2's API and is in force on node-1 through the kvstore; connections through the VIP
// land on both backends (lib/lb.h at the client's veth, then the overlay or the native route to
// node-2). A policy imported through node-1 lets only role=client into app=web: a pod without the
// label gets none of its connections through, the one to node-2's backend dropped there (133)
// with the client's identity, and the client still reaches both. Needs root and etcd.
import assert from "node:assert/strict";
import { Cluster, type ClusterNode } from "../helpers/cluster.ts";
import { KERNEL_TOOLS, needs } from "../helpers/root.ts";
import {
  CLIENT_LIB,
  denoIn,
  killAll,
  NAME_SERVER,
  putService,
  waitFor,
  waitListening,
} from "./_services_lab.ts";

const VIP = "10.96.0.40";
const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-clients, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {role: client}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`;
/** N connections at once to ip:port: the backend's name each answered, or null. */
const CLIENT = `${CLIENT_LIB}
const [ip, port, n, ms] = Deno.args;
const one = async () => {
  try {
    const c = await within(Deno.connect({ hostname: ip, port: Number(port) }), Number(ms));
    try { return await within(ask(c), Number(ms)); } finally { try { c.close(); } catch {} }
  } catch { return null; }
};
console.log(JSON.stringify(await Promise.all(Array.from({ length: Number(n) }, one))));
Deno.exit(0); // a connect the policy dropped stays pending until TCP gives up (minutes)`;

for (const mode of ["tunnel", "native"] as const) {
  Deno.test({
    name: `services multinode (${mode}): a ClusterIP with a backend on each node, under policy`,
    ...needs({ root: true, binaries: [...KERNEL_TOOLS, "etcd"] }),
    sanitizeResources: false,
  }, async (t) => {
    await using cluster = await Cluster.create({ nodes: 2, routingMode: mode });
    const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
    const lab = cluster.lab;
    const children: Deno.ChildProcess[] = [];
    try {
      await Deno.writeTextFile(`${lab.dir}/server.js`, NAME_SERVER);
      await Deno.writeTextFile(`${lab.dir}/client.js`, CLIENT);
      const b1 = await n1.addPod("b1", { app: "web" });
      const b2 = await n2.addPod("b2", { app: "web" });
      const client = await n1.addPod("client", { role: "client" });
      const other = await n1.addPod("other", { role: "other" });
      for (const b of [b1, b2]) {
        children.push(denoIn(b.netns, `${lab.dir}/server.js`, [b.name, "8080"]).spawn());
        await waitListening(lab, b.netns, "sport = :8080");
      }
      const ask = async (netns: string, n = 12, ms = 1500) => {
        const o = await denoIn(netns, `${lab.dir}/client.js`, [VIP, "80", String(n), String(ms)])
          .output();
        return JSON.parse(new TextDecoder().decode(o.stdout)) as (string | null)[];
      };

      await t.step("created through node-2, both backends answer a pod on node-1", async () => {
        await putService(n2, {
          name: "default/web",
          frontend: { ip: VIP, port: 80, protocol: "TCP" },
          backends: [b1, b2].map((b) => ({ ip: b.ipv4, port: 8080 })),
        });
        let got: (string | null)[] = [];
        await waitFor("both backends through the VIP from node-1", async () => {
          got = got.concat(await ask(client.netns));
          return got.includes("b1") && got.includes("b2");
        }, 20_000).catch(() => assert.fail(`answers from node-1's client: ${JSON.stringify(got)}`));
        assert.deepEqual(got.filter((x) => x !== null && x !== "b1" && x !== "b2"), []);
      });

      await t.step(
        "node-2 decides by the client's identity (133 for a pod without the label)",
        async () => {
          await n1.policy(POLICY);
          const otherId = (
            (await n1.call("GET", "/v1/endpoint/default/other")).body as { identity: number }
          ).identity;
          let last: (string | null)[] = [];
          await waitFor("the policy in force on both nodes", async () => {
            last = await ask(other.netns, 8, 800);
            return last.every((x) => x === null);
          }, 20_000).catch(() => assert.fail(`a pod without role=client: ${JSON.stringify(last)}`));
          let got: (string | null)[] = [];
          await waitFor("the client still reaches both backends", async () => {
            got = got.concat(await ask(client.netns));
            return got.includes("b1") && got.includes("b2");
          }, 20_000).catch(() => assert.fail(`the client under policy: ${JSON.stringify(got)}`));
          // node-2 dropped what reached b2 from `other`, naming its identity and the backend's port.
          let drop: unknown;
          await waitFor("node-2's drop of other's connection to b2", async () => {
            if ((await ask(other.netns, 8, 800)).some((x) => x !== null)) {
              assert.fail("a connection from a pod without role=client passed");
            }
            drop = (await n2.flows()).find((f) =>
              f.drop_reason === 133 && f.source?.identity === otherId &&
              f.IP?.destination === b2.ipv4 && f.l4 !== undefined && "TCP" in f.l4 &&
              f.l4.TCP.destination_port === 8080
            );
            return drop !== undefined;
          }, 20_000);
        },
      );
    } finally {
      await killAll(children);
    }
  });
}
