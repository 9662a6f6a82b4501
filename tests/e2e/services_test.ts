// ClusterIP services with real packets (flow 8, bpf/lib/lb.h): three backend pods that answer
// every read with their own name, a client pod that opens many TCP connections to the service
// address. Connections spread over the backends and each stays on one; the replies come from the
// VIP (a TCP connect succeeds only then); a policy that lets the client reach only app=b1 drops
// the connections that landed elsewhere (policy sees the real backend, reason 133 with its
// identity and port); a removed backend gets no new connections; a service without backends drops
// with 158. Services go in through the API and `bin/cilia service`. Needs root.
import assert from "node:assert/strict";
import { CiliaNode, dropText, root, type TestPod } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { denoIn, NAME_SERVER } from "./_services_lab.ts";

const VIP = "10.96.0.10", EMPTY_VIP = "10.96.0.11";

// Prints a JSON array: per connection the names of 3 answers, or null when it failed.
const CLIENT = `
const [host, port, count, ms] = Deno.args;
const enc = new TextEncoder(), dec = new TextDecoder();
const within = (p, t) => { p.catch(() => {}); let id; return Promise.race([p, new Promise((_, r) => { id = setTimeout(() => r(new Error("timeout")), t); })]).finally(() => clearTimeout(id)); };
async function line(c) {
  let s = ""; const buf = new Uint8Array(64);
  while (!s.endsWith("\\n")) { const n = await c.read(buf); if (n === null) throw new Error("closed"); s += dec.decode(buf.subarray(0, n)); }
  return s.trim();
}
const out = [];
for (let i = 0; i < Number(count); i++) {
  let c;
  try {
    c = await within(Deno.connect({ hostname: host, port: Number(port) }), Number(ms));
    const names = [];
    for (let k = 0; k < 3; k++) { await c.write(enc.encode("x")); names.push(await within(line(c), Number(ms))); }
    out.push(names);
  } catch { out.push(null); }
  try { c?.close(); } catch {}
}
console.log(JSON.stringify(out));
Deno.exit(0);`;

Deno.test({
  name: "services: ClusterIP load balancing with real packets",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  await using n = await CiliaNode.create();
  const servers: Deno.ChildProcess[] = [];
  try {
    await Deno.writeTextFile(`${n.dir}/server.js`, NAME_SERVER);
    await Deno.writeTextFile(`${n.dir}/client.js`, CLIENT);
    const inNetns = (netns: string, script: string, args: string[]) => denoIn(netns, script, args);
    const backends: Record<string, TestPod> = {};
    for (const name of ["b1", "b2", "b3"]) {
      backends[name] = await n.addPod(name, { app: name });
      servers.push(inNetns(backends[name].netns, `${n.dir}/server.js`, [name, "8080"]).spawn());
    }
    const client = await n.addPod("client", { app: "client" });
    const identity = async (p: TestPod) =>
      ((await n.call("GET", `/v1/endpoint/default/${p.name}`)).body as { identity: number })
        .identity;
    const connect = async (host: string, count: number, ms = 1000) => {
      const out = await inNetns(client.netns, `${n.dir}/client.js`, [
        host,
        "80",
        String(count),
        String(ms),
      ]).output();
      return JSON.parse(new TextDecoder().decode(out.stdout)) as (string[] | null)[];
    };
    const upsert = async (backendNames: string[], vip = VIP) => {
      const r = await n.call("PUT", "/v1/service", {
        frontend: { ip: vip, port: 80, protocol: "TCP" },
        backends: backendNames.map((b) => ({ ip: backends[b]!.ipv4, port: 8080 })),
      });
      assert.ok(r.status === 200 || r.status === 201, JSON.stringify(r.body));
    };
    // The servers are up once they listen (the peer helper's probe speaks its own protocol).
    for (const b of Object.values(backends)) {
      for (let i = 0; i < 100; i++) {
        const ss = await n.lab.run(b.netns, ["ss", "-Htln", "sport = :8080"]);
        if (ss.trim() !== "") break;
        await new Promise((r) => setTimeout(r, 50));
      }
    }

    await t.step("connections spread over the backends; each stays on one", async () => {
      await upsert(["b1", "b2", "b3"]);
      const got = await connect(VIP, 30);
      assert.ok(got.every((c) => c !== null), `every connection answered: ${JSON.stringify(got)}`);
      for (const c of got) assert.equal(new Set(c).size, 1, `one backend per connection: ${c}`);
      const seen = new Set(got.map((c) => c![0]));
      assert.deepEqual([...seen].sort(), ["b1", "b2", "b3"], "all three backends used");
    });

    await t.step("policy sees the real backend: only app=b1 allowed (133 for others)", async () => {
      await n.policy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-b1, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {app: b1}}]
`);
      const others = [await identity(backends.b2!), await identity(backends.b3!)];
      const { result, events } = await n.withEvents(() => connect(VIP, 12, 400), {
        until: (e) => e.type === "drop" && e.subtype === 133,
      });
      const ok = result.filter((c) => c !== null);
      assert.ok(ok.length > 0 && ok.length < result.length, `some pass, some drop: ${result}`);
      assert.ok(ok.every((c) => c!.every((x) => x === "b1")), `only b1 answers: ${result}`);
      const drop = events.find((e) => e.type === "drop" && e.subtype === 133);
      assert.ok(drop, `a policy drop: ${events.map(dropText)}`);
      assert.ok(others.includes(drop.dstIdentity), `dropped toward b2/b3: ${dropText(drop)}`);
      assert.equal(drop.dport, 8080, "the backend's port, not the service's");
      await n.clearPolicies();
    });

    await t.step("a removed backend gets no new connections", async () => {
      await upsert(["b1", "b2"]);
      const got = await connect(VIP, 20);
      assert.ok(got.every((c) => c !== null), `every connection answered: ${JSON.stringify(got)}`);
      assert.ok(got.every((c) => c![0] !== "b3"), `b3 is gone: ${JSON.stringify(got)}`);
    });

    await t.step("a service without backends drops with 158 (NO_SERVICE)", async () => {
      const cli = await new Deno.Command(`${root}bin/cilia`, {
        args: [
          "service",
          "create",
          "--frontend",
          `${EMPTY_VIP}:80/TCP`,
          "-H",
          `unix://${n.socket}`,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(cli.code, 0, new TextDecoder().decode(cli.stderr));
      const { result, events } = await n.withEvents(() => connect(EMPTY_VIP, 1, 400), {
        until: (e) => e.type === "drop" && e.subtype === 158,
      });
      assert.deepEqual(result, [null]);
      assert.ok(events.some((e) => e.subtype === 158), `drop 158: ${events.map(dropText)}`);
    });

    await t.step("bin/cilia service list shows both services", async () => {
      const out = await new Deno.Command(`${root}bin/cilia`, {
        args: ["service", "list", "-o", "json", "-H", `unix://${n.socket}`],
        stdout: "piped",
      }).output();
      const list = JSON.parse(new TextDecoder().decode(out.stdout)) as {
        frontend: { ip: string };
        backends: unknown[];
      }[];
      assert.deepEqual(list.map((s) => [s.frontend.ip, s.backends.length]), [[VIP, 2], [
        EMPTY_VIP,
        0,
      ]]);
    });
  } finally {
    for (const s of servers) {
      try {
        s.kill("SIGKILL");
      } catch { /* gone */ }
      await s.status;
    }
  }
});
