// L7 across nodes (issue #10): a client pod on node 1 and a server pod on node 2, VXLAN with the
// source identity in the VNI. The client's egress HTTP rule is judged by node 1's proxy, whose
// upstream leg must leave the node as the client (its address, its identity in the VNI), not as
// the node: node 2's ingress HTTP rule then sees the client's identity and is judged by node 2's
// proxy, whose answers go back through the tunnel from the server's address. curl must get 200
// for what both rules allow, 403 for what either denies, and the server sees the client pod's
// address. Needs root and etcd.
import assert from "node:assert/strict";
import { Cluster, type ClusterNode } from "../helpers/cluster.ts";
import { KERNEL_TOOLS, needs } from "../helpers/root.ts";

const SERVER = `
Deno.serve({ hostname: "::", port: 8080, onListen() {} }, (req, info) => {
  const remote = info.remoteAddr.hostname.replace(/^::ffff:/, "");
  return new Response(\`remote=\${remote} path=\${new URL(req.url).pathname}\\n\`);
});
`;

const cnp = (name: string, spec: string) =>
  `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}, namespace: default}
spec:
${spec.replace(/^/gm, "  ")}
`;

Deno.test({
  name: "l7 multinode: egress and ingress HTTP rules on two nodes over the overlay",
  ...needs({ root: true, binaries: [...KERNEL_TOOLS, "etcd", "curl"] }),
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  await using cluster = await Cluster.create({ nodes: 2, routingMode: "tunnel" });
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const client = await n1.addPod("client", { app: "client" });
  const server = await n2.addPod("server", { app: "server" });
  await Deno.writeTextFile(`${cluster.lab.dir}/server.ts`, SERVER);
  cluster.lab.spawn([
    "ip",
    "netns",
    "exec",
    server.netns,
    Deno.execPath(),
    "run",
    "-A",
    "--no-config",
    `${cluster.lab.dir}/server.ts`,
  ]);
  const curl = async (path: string, ip = server.ipv4) => {
    const host = ip.includes(":") ? `[${ip}]` : ip;
    const out = await cluster.lab.run(client.netns, [
      "curl",
      "-s",
      "-m",
      "10", // every request gets an answer (a 403 too): generous for a loaded machine
      "-w",
      "\n%{http_code}",
      `http://${host}:8080${path}`,
    ]).catch(() => undefined);
    if (out === undefined) return { body: "", code: 0 };
    const i = out.lastIndexOf("\n");
    return { body: out.slice(0, i), code: Number(out.slice(i + 1).slice(0, 3)) };
  };
  {
    // Node 1 knows the server and the server answers (no policy yet).
    for (let i = 0; i < 100 && (await curl("/public")).code !== 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal((await curl("/public")).code, 200, "the server answers without policy");

    await t.step(
      "the client's egress rule: node 1's proxy, the server sees the client",
      async () => {
        await n1.policy(cnp(
          "l7-out",
          `endpointSelector: {matchLabels: {app: client}}
egress:
- toEndpoints: [{matchLabels: {app: server}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
    rules:
      http: [{method: GET, path: /public}, {method: GET, path: /egress-only}]`,
        ));
        // The server's ingress admits only the client (not the node): the upstream leg must
        // carry the client's identity.
        await n2.policy(cnp(
          "from-client",
          `endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]`,
        ));
        const r = await curl("/public");
        assert.equal(r.code, 200, r.body);
        assert.equal(r.body.trim(), `remote=${client.ipv4} path=/public`);
        assert.equal((await curl("/private")).code, 403);
      },
    );

    await t.step("and the server's ingress rule on node 2: both proxies decide", async () => {
      await n2.policy(cnp(
        "from-client",
        `endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
    rules:
      http: [{method: GET, path: /public}]`,
      ));
      const r = await curl("/public");
      assert.equal(r.code, 200, r.body);
      assert.equal(r.body.trim(), `remote=${client.ipv4} path=/public`);
      assert.equal((await curl("/egress-only")).code, 403, "node 2's rule denies");
      assert.equal((await curl("/private")).code, 403, "node 1's rule denies");
      const r6 = await curl("/public", server.ipv6);
      assert.equal(r6.code, 200, `IPv6: ${r6.body}`);
      assert.equal(r6.body.trim(), `remote=${client.ipv6} path=/public`);
      assert.equal((await curl("/egress-only", server.ipv6)).code, 403, "IPv6, node 2 denies");
    });
  }
});
