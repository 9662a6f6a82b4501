// L7 HTTP policy through the kernel and the agent's proxy, with real clients in CNI pods: an
// ingress rule allowing `GET /public` (and `GET /hdr` with a numeric `X-Token`) on a server pod,
// then the same as an egress rule on the client. curl runs in the client pod; the server (Deno in
// the server pod) answers with the address it saw, so the test checks that the proxy → server
// leg carries the client pod's own IP. Denials are `403` / `Access denied`; path tricks are judged
// on the normalised path; each request is an L7 flow and counted in /metrics. Needs root.
import assert from "node:assert/strict";
import { CiliaNode } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const SERVER = `
Deno.serve({ hostname: "0.0.0.0", port: Number(Deno.args[0]), onListen() {} }, (req, info) => {
  const u = new URL(req.url);
  return new Response(\`remote=\${info.remoteAddr.hostname} path=\${u.pathname}\\n\`);
});
`;

const cnp = (name: string, spec: string) =>
  `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}, namespace: default}
spec:
${spec.replace(/^/gm, "  ")}
`;

const HTTP_RULES = `rules:
  http:
  - {method: GET, path: /public}
  - {method: GET, path: /hdr, headers: ["X-Token: [0-9]+"]}`;

Deno.test({
  name: "l7 http: ingress and egress rules through the kernel redirect and the proxy",
  ...needsRoot(["curl"]),
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  await using n = await CiliaNode.create();
  const client = await n.addPod("client", { app: "client" });
  const server = await n.addPod("server", { app: "server" });
  await Deno.writeTextFile(`${n.lab.dir}/server.ts`, SERVER);
  const srv = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      server.netns,
      Deno.execPath(),
      "run",
      "-A",
      "--no-config",
      `${n.lab.dir}/server.ts`,
      "8080",
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const url = (path: string) => `http://${server.ipv4}:8080${path}`;
    const curl = async (path: string, extra: string[] = []) => {
      const out = await n.lab.run(client.netns, [
        "curl",
        "-s",
        "--path-as-is",
        "-m",
        "3",
        "-w",
        "\n%{http_code}",
        ...extra,
        url(path),
      ]).catch(() => undefined);
      if (out === undefined) return { body: "", code: 0 }; // no answer (curl failed)
      const i = out.lastIndexOf("\n");
      return { body: out.slice(0, i), code: Number(out.slice(i + 1).slice(0, 3)) };
    };
    // The server is up (no policy yet: plain L3/L4).
    for (let i = 0; i < 50 && (await curl("/public")).code !== 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }

    await t.step(
      "ingress: GET /public passes and the server sees the client pod's IP",
      async () => {
        await n.policy(cnp(
          "l7-in",
          `endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
    ${HTTP_RULES.replace(/\n/g, "\n    ")}`,
        ));
        const r = await curl("/public");
        assert.equal(r.code, 200, r.body);
        assert.equal(r.body.trim(), `remote=${client.ipv4} path=/public`);
      },
    );

    await t.step("ingress: GET /private is 403 Access denied", async () => {
      const r = await curl("/private");
      assert.equal(r.code, 403);
      assert.equal(r.body.trim(), "Access denied");
      assert.equal((await curl("/public", ["-X", "POST"])).code, 403, "POST /public");
    });

    await t.step("ingress: path tricks are judged on the normalised path", async () => {
      for (const p of ["/public/../private", "/public/%2e%2e/private", "/public%2F..%2Fprivate"]) {
        assert.equal((await curl(p)).code, 403, p);
      }
      const r = await curl("//public");
      assert.equal(r.code, 200, "//public");
      assert.match(r.body, /path=\/public$/m, "the server sees the normalised path");
    });

    await t.step("ingress: a header rule passes only a matching value", async () => {
      assert.equal((await curl("/hdr", ["-H", "X-Token: 12345"])).code, 200, "numeric token");
      assert.equal((await curl("/hdr", ["-H", "X-Token: abc"])).code, 403, "text token");
      assert.equal((await curl("/hdr")).code, 403, "no token");
    });

    await t.step("ingress: keep-alive carries several requests, each judged", async () => {
      const out = await n.lab.run(client.netns, [
        "curl",
        "-s",
        "-m",
        "3",
        "-w",
        "%{http_code}\n",
        url("/public"),
        url("/private"),
        url("/public"),
      ]);
      assert.deepEqual(out.split("\n").filter((l) => /^\d{3}$/.test(l)), ["200", "403", "200"]);
    });

    await t.step("flows and metrics for each request", async () => {
      const { flows } = await n.flows({ type: "l7" });
      const f = flows.find((x) => x.l7?.http?.url === "/private");
      assert.ok(f, `an L7 flow for /private: ${JSON.stringify(flows.slice(-3))}`);
      assert.equal(f.verdict, "DROPPED");
      assert.equal(f.l7!.http!.code, 403);
      assert.equal(f.traffic_direction, "INGRESS");
      assert.equal(f.IP?.source, client.ipv4);
      const ok = flows.find((x) => x.l7?.http?.url === "/public" && x.l7.http.code === 200);
      assert.ok(ok && ok.verdict === "FORWARDED", "an allowed /public flow");
      assert.ok(ok.policy?.name === "l7-in", `deciding policy: ${JSON.stringify(ok.policy)}`);
      const m = await n.metrics();
      assert.match(m, /cilia_l7_requests_total\{protocol="http",verdict="denied"\} [1-9]/);
      assert.match(m, /cilia_l7_requests_total\{protocol="http",verdict="forwarded"\} [1-9]/);
      assert.match(m, /cilia_l7_request_duration_seconds_count [1-9]/);
    });

    await t.step("egress: the client's own L7 rule, the server still sees the client", async () => {
      await n.clearPolicies();
      await n.policy(cnp(
        "l7-out",
        `endpointSelector: {matchLabels: {app: client}}
egress:
- toEndpoints: [{matchLabels: {app: server}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
    ${HTTP_RULES.replace(/\n/g, "\n    ")}`,
      ));
      const r = await curl("/public");
      assert.equal(r.code, 200, r.body);
      assert.equal(r.body.trim(), `remote=${client.ipv4} path=/public`);
      const d = await curl("/private");
      assert.equal(d.code, 403);
      assert.equal(d.body.trim(), "Access denied");
    });

    await t.step(
      "a proxy that is down fails closed: the kernel drops with reason 178",
      async () => {
        await n.stopAgent("SIGKILL"); // the proxy runs in the agent: its listeners are gone
        assert.equal((await curl("/public", ["-m", "1"])).code, 0, "no answer at all");
        const out = await n.lab.execInNode(n.node, [
          "bpftool",
          "-j",
          "map",
          "dump",
          "pinned",
          "/sys/fs/bpf/cilia/maps/cilia_metrics",
        ]);
        const rows = JSON.parse(out.stdout) as {
          key: number[] | { reason: number };
          values?: { value: { packets: number } }[];
          formatted?: { key: { reason: number }; values: { value: { packets: number } }[] };
        }[];
        const drops178 = rows.filter((r) =>
          (r.formatted?.key.reason ?? (r.key as number[])[0]) === 178
        );
        assert.ok(drops178.length > 0, `a metrics row for reason 178: ${out.stdout.slice(0, 400)}`);
      },
    );
  } finally {
    try {
      srv.kill("SIGKILL");
    } catch { /* gone */ }
    await srv.status;
  }
});
