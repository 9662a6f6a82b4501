// L7 HTTP policy through the kernel and the agent's proxy, with real clients in CNI pods: an
// ingress rule allowing `GET /public` (and `GET /hdr` with a numeric `X-Token`) on a server pod,
// then the same as an egress rule on the client. curl runs in the client pod; the server (Deno in
// the server pod) answers with the address it saw, so the test checks that the proxy → server
// leg carries the client pod's own IP. Denials are `403` / `Access denied`; path tricks are judged
// on the normalised path; each request is an L7 flow and counted in /metrics. It runs once for
// each way the agent serves HTTP/1.1 redirects (--l7-http-io: the event loop, the epoll Worker).
// Needs root.
import assert from "node:assert/strict";
import { CiliaNode } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const SERVER = `
for (const port of Deno.args.map(Number)) {
  Deno.serve({ hostname: "::", port, onListen() {} }, (req, info) => {
    const u = new URL(req.url);
    const remote = info.remoteAddr.hostname.replace(/^::ffff:/, "");
    return new Response(\`remote=\${remote} path=\${u.pathname}\\n\`);
  });
}
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

/** Packets dropped with reason 178 (no proxy listener) so far, from cilia_metrics. */
async function drops178(n: CiliaNode): Promise<number> {
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
    formatted?: { key: number | { reason: number }; values: { value: { packets: number } }[] };
  }[];
  let sum = 0;
  for (const r of rows) {
    // A slot of the per-CPU array: reason | dir << 8 (bpf/lib/metrics.h, 1.).
    const k = r.formatted?.key;
    const reason = typeof k === "number" ? k & 0xff : k?.reason ?? (r.key as number[])[0];
    if (reason !== 178) continue;
    for (const v of r.formatted?.values ?? r.values ?? []) sum += v.value.packets ?? 0;
  }
  return sum;
}

for (const io of ["event-loop", "worker"]) {
  Deno.test({
    name: `l7 http (${io}): ingress and egress rules through the kernel redirect and the proxy`,
    ...needsRoot(["curl"]),
    sanitizeResources: false,
    sanitizeOps: false,
  }, (t) => l7HttpTest(t, io));
}

async function l7HttpTest(t: Deno.TestContext, io: string): Promise<void> {
  await using n = await CiliaNode.create({ agentArgs: ["--l7-http-io", io] });
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
      "8081",
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const url = (path: string, port = 8080) => `http://${server.ipv4}:${port}${path}`;
    const url6 = (path: string, port = 8080) => `http://[${server.ipv6}]:${port}${path}`;
    const curl = async (path: string, extra: string[] = [], target = url(path)) => {
      const out = await n.lab.run(client.netns, [
        "curl",
        "-s",
        "--path-as-is",
        "-m",
        "10", // requests get answers (a 403 too): generous for a loaded machine; extra may lower it
        "-w",
        "\n%{http_code}",
        ...extra,
        target,
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
        const served = n.log.includes("HTTP/1.1 redirects served by a Worker");
        assert.equal(served, io === "worker", `the ${io} serves HTTP`);
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
        "10",
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

    await t.step("a burst: every request counted exactly, its flows shown within 1 s", async () => {
      const count = (m: string, re: RegExp) => Number(m.match(re)?.[1] ?? 0);
      const figures = (m: string) => [
        count(m, /cilia_l7_requests_total\{protocol="http",verdict="forwarded"\} (\d+)/),
        count(m, /cilia_l7_requests_total\{protocol="http",verdict="denied"\} (\d+)/),
        count(m, /cilia_l7_request_duration_seconds_count (\d+)/),
      ];
      // Settled first: the Worker sends a request's counts within 100 ms (a batch), so the earlier
      // steps' last requests may still be on their way.
      let before = figures(await n.metrics());
      for (let i = 0, same = false; i < 20 && !same; i++) {
        await new Promise((r) => setTimeout(r, 150));
        const now = figures(await n.metrics());
        same = now.every((v, j) => v === before[j]);
        before = now;
      }
      const since = new Date().toISOString();
      // One keep-alive connection: 120 allowed, 40 denied, then a marker (denied) last.
      const marker = `/burst-end-${Date.now()}`;
      const urls = [
        ...Array.from({ length: 160 }, (_, i) => url(i % 4 === 3 ? "/private" : "/public")),
        url(marker),
      ];
      const out = await n.lab.run(client.netns, [
        "curl",
        "-s",
        "-m",
        "30",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        ...urls,
      ]);
      const codes = out.trim().split("\n");
      assert.equal(codes.filter((c) => c === "200").length, 120, out);
      assert.equal(codes.filter((c) => c === "403").length, 41, out);
      const sent = Date.now();
      let shown = -1;
      while (shown < 0 && Date.now() - sent < 1000) {
        const { flows } = await n.flows({ type: "l7", since });
        if (flows.some((f) => f.l7?.http?.url === marker)) shown = Date.now() - sent;
        else await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(shown >= 0, `the burst's last flow was not shown within 1 s`);
      const { flows } = await n.flows({ type: "l7", since });
      const burst = flows.filter((f) => f.IP?.source === client.ipv4);
      assert.equal(burst.filter((f) => f.l7?.http?.url === "/public").length, 120);
      assert.equal(burst.filter((f) => f.l7?.http?.url === "/private").length, 40);
      const after = figures(await n.metrics());
      assert.deepEqual(after.map((v, i) => v - before[i]!), [120, 41, 161]);
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

    await t.step("adjacent L7 ports (one merged range entry): each port is proxied", async () => {
      await n.clearPolicies();
      await n.policy(cnp(
        "l7-two-ports",
        `endpointSelector: {matchLabels: {app: server}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}, {port: "8081", protocol: TCP}]
    ${HTTP_RULES.replace(/\n/g, "\n    ")}`,
      ));
      for (const port of [8080, 8081]) {
        const r = await curl("/public", [], url("/public", port));
        assert.equal(r.code, 200, `${port}: ${r.body}`);
        assert.equal(r.body.trim(), `remote=${client.ipv4} path=/public`);
        assert.equal((await curl("/private", [], url("/private", port))).code, 403, `${port}`);
      }
    });

    await t.step(
      "IPv6: the ingress redirect, allowed and denied, the server sees the pod",
      async () => {
        const r = await curl("/public", ["-6"], url6("/public", 8081));
        assert.equal(r.code, 200, r.body);
        assert.equal(r.body.trim(), `remote=${client.ipv6} path=/public`);
        const d = await curl("/private", ["-6"], url6("/private", 8081));
        assert.equal(d.code, 403, d.body);
        assert.equal(d.body.trim(), "Access denied");
      },
    );

    await t.step(
      "two L7 hops: the client's egress and the server's ingress rules both decide",
      async () => {
        await n.clearPolicies();
        await n.policy(cnp(
          "l7-out",
          `endpointSelector: {matchLabels: {app: client}}
egress:
- toEndpoints: [{matchLabels: {app: server}}]
  toPorts:
  - ports: [{port: "8080", protocol: TCP}]
    rules:
      http: [{method: GET, path: /public}, {method: GET, path: /egress-only}]`,
        ));
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
        assert.equal((await curl("/egress-only")).code, 403, "the server's ingress rule denies");
        assert.equal((await curl("/hdr", ["-H", "X-Token: 1"])).code, 403, "egress rule denies");
        const r6 = await curl("/public", ["-6"], url6("/public"));
        assert.equal(r6.code, 200, `IPv6: ${r6.body}`);
        assert.equal(r6.body.trim(), `remote=${client.ipv6} path=/public`);
        assert.equal((await curl("/egress-only", ["-6"], url6("/egress-only"))).code, 403);
      },
    );

    const ports = `${n.dir}/state/proxy-ports.json`;
    const listenerPorts = await Deno.readTextFile(ports);
    await t.step(
      "a proxy that is down fails closed: the kernel drops with reason 178",
      async () => {
        await n.stopAgent("SIGKILL"); // the proxy runs in the agent: its listeners are gone
        assert.equal((await curl("/public", ["-m", "1"])).code, 0, "no answer at all");
        assert.ok(await drops178(n) > 0, "reason 178 counted");
      },
    );

    await t.step("restarted, the agent listens on the same ports: no 178 drops", async () => {
      await n.startAgent();
      const before = await drops178(n);
      const r = await curl("/public");
      assert.equal(r.code, 200, r.body);
      assert.equal((await curl("/egress-only")).code, 403);
      assert.equal(await drops178(n), before, "no drop 178 after the restart");
      assert.equal(await Deno.readTextFile(ports), listenerPorts, "listener ports kept");
    });
  } finally {
    try {
      srv.kill("SIGKILL");
    } catch { /* gone */ }
    await srv.status;
  }
}
