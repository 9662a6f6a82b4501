// ClusterIP services with real packets (flow 8, bpf/lib/lb.h): three backend pods that answer
// every read with their own name, a client pod that opens many TCP connections to the service
// address. Connections spread over the backends and each stays on one; the replies come from the
// VIP (a TCP connect succeeds only then); a policy that lets the client reach only app=b1 drops
// the connections that landed elsewhere (policy sees the real backend, reason 133 with its
// identity and port); a removed backend gets no new connections; a service without backends drops
// with 158. Services go in through the API and `bin/cilia service`. Needs root.
import assert from "node:assert/strict";
import { CiliaNode, dropText, type TestPod } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import {
  cilia,
  CLIENT_LIB,
  denoIn,
  killAll,
  NAME_SERVER,
  putService,
  waitListening,
} from "./_services_lab.ts";

const VIP = "10.96.0.10", EMPTY_VIP = "10.96.0.11";

// Prints a JSON array: per connection the names of 3 answers, or null when it failed. With
// "parallel" the connections run at once, so dropped ones cost one timeout in all, not one each.
const CLIENT = `${CLIENT_LIB}
const [host, port, count, ms, mode] = Deno.args;
async function one() {
  let c;
  try {
    c = await within(Deno.connect({ hostname: host, port: Number(port) }), Number(ms));
    const names = [];
    for (let k = 0; k < 3; k++) names.push(await within(ask(c), Number(ms)));
    return names;
  } catch { return null; } finally { try { c?.close(); } catch {} }
}
const out = [];
if (mode === "parallel") out.push(...await Promise.all(Array.from({ length: Number(count) }, one)));
else for (let i = 0; i < Number(count); i++) out.push(await one());
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
    const backends: Record<string, TestPod> = {};
    for (const name of ["b1", "b2", "b3"]) {
      backends[name] = await n.addPod(name, { app: name });
      servers.push(denoIn(backends[name].netns, `${n.dir}/server.js`, [name, "8080"]).spawn());
    }
    const client = await n.addPod("client", { app: "client" });
    const identity = async (p: TestPod) =>
      ((await n.call("GET", `/v1/endpoint/default/${p.name}`)).body as { identity: number })
        .identity;
    // 3 s per connection that must answer: a loaded machine is slow.
    const connect = async (host: string, count: number, ms = 3000, mode = "serial") => {
      const out = await denoIn(client.netns, `${n.dir}/client.js`, [
        host,
        "80",
        String(count),
        String(ms),
        mode,
      ]).output();
      return JSON.parse(new TextDecoder().decode(out.stdout)) as (string[] | null)[];
    };
    const upsert = (backendNames: string[]) =>
      putService(n, {
        frontend: { ip: VIP, port: 80, protocol: "TCP" },
        backends: backendNames.map((b) => ({ ip: backends[b]!.ipv4, port: 8080 })),
      });
    // The servers are up once they listen (the peer helper's probe speaks its own protocol).
    for (const b of Object.values(backends)) await waitListening(n.lab, b.netns, "sport = :8080");

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
      try {
        const others = [await identity(backends.b2!), await identity(backends.b3!)];
        // Generous timeout (a loaded CI machine answers slowly); the connections run at once.
        const { result, events } = await n.withEvents(() => connect(VIP, 12, 3000, "parallel"), {
          until: (e) => e.type === "drop" && e.subtype === 133,
        });
        const ok = result.filter((c) => c !== null);
        const shown = JSON.stringify(result);
        assert.ok(ok.length > 0 && ok.length < result.length, `some pass, some drop: ${shown}`);
        assert.ok(ok.every((c) => c!.every((x) => x === "b1")), `only b1 answers: ${shown}`);
        const drop = events.find((e) => e.type === "drop" && e.subtype === 133);
        assert.ok(drop, `a policy drop: ${events.map(dropText)}`);
        assert.ok(others.includes(drop.dstIdentity), `dropped toward b2/b3: ${dropText(drop)}`);
        assert.equal(drop.dport, 8080, "the backend's port, not the service's");
      } finally {
        await n.clearPolicies(); // the next steps expect no policy, even when this one failed
      }
    });

    await t.step("a removed backend gets no new connections", async () => {
      await upsert(["b1", "b2"]);
      const got = await connect(VIP, 20);
      assert.ok(got.every((c) => c !== null), `every connection answered: ${JSON.stringify(got)}`);
      assert.ok(got.every((c) => c![0] !== "b3"), `b3 is gone: ${JSON.stringify(got)}`);
    });

    await t.step("a service without backends drops with 158 (NO_SERVICE)", async () => {
      await cilia(n.socket, "service", "create", "--frontend", `${EMPTY_VIP}:80/TCP`);
      const { result, events } = await n.withEvents(() => connect(EMPTY_VIP, 1, 400), {
        until: (e) => e.type === "drop" && e.subtype === 158,
      });
      assert.deepEqual(result, [null]);
      assert.ok(events.some((e) => e.subtype === 158), `drop 158: ${events.map(dropText)}`);
    });

    await t.step("bin/cilia service list shows both services", async () => {
      const list = JSON.parse(await cilia(n.socket, "service", "list", "-o", "json")) as {
        frontend: { ip: string };
        backends: unknown[];
      }[];
      assert.deepEqual(list.map((s) => [s.frontend.ip, s.backends.length]), [[VIP, 2], [
        EMPTY_VIP,
        0,
      ]]);
    });
  } finally {
    await killAll(servers);
  }
});
