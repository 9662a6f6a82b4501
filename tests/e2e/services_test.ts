// ClusterIP services with real packets (flow 8, bpf/lib/lb.h): three backend pods that answer
// every read with their own name, a client pod that opens many TCP connections to the service
// address. Connections spread over the backends and each stays on one; the replies come from the
// VIP (a TCP connect succeeds only then); a policy that lets the client reach only app=b1 drops
// the connections that landed elsewhere (policy sees the real backend, reason 133 with its
// identity and port; the drop, the verdicts and the traces carry the service's id, and the flows
// name it: destination_service toward the backend, source_service on the reply); a removed
// backend gets no new connections; a service without backends drops with 158 (with its id).
// Services go in through the API and `bin/cilia service`. Needs root.
import assert from "node:assert/strict";
import { CiliaNode, dropText, type TestPod } from "../cni/_fixture.ts";
import type { PacketEvent } from "../../agent/datapath/events.ts";
import type { Flow } from "../../agent/monitor/flow.ts";
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
    const endpoint = async (p: TestPod) =>
      (await n.call("GET", `/v1/endpoint/default/${p.name}`)).body as {
        id: number;
        identity: number;
      };
    const identity = async (p: TestPod) => (await endpoint(p)).identity;
    /** The id `cilia service list` shows for a frontend address. */
    const serviceId = async (ip: string) => {
      const list = JSON.parse(await cilia(n.socket, "service", "list", "-o", "json")) as {
        id: number;
        frontend: { ip: string };
      }[];
      const id = list.find((s) => s.frontend.ip === ip)?.id;
      assert.ok(id, `a service for ${ip}: ${JSON.stringify(list)}`);
      return id;
    };
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
        const svc = await serviceId(VIP), clientEp = (await endpoint(client)).id;
        // Each kind of event a connection through the VIP makes at the client's veth (enforce.h,
        // 11.): the drop, both verdicts, the first packet out and the first reply back.
        const kindOf = (e: PacketEvent) =>
          e.epId !== clientEp
            ? undefined
            : e.type === "drop"
            ? (e.subtype === 133 ? "drop" : undefined)
            : e.type === "policy-verdict"
            ? (e.subtype === 133 ? "denied" : "allowed")
            : e.direction === "egress"
            ? "out"
            : e.ctState === 2
            ? "reply"
            : undefined;
        const kinds = new Map<string, PacketEvent>();
        // Generous timeout (a loaded CI machine answers slowly); the connections run at once.
        // 24 of them: CI twice saw every SYN of 12 denied toward port 8080 — all 12 on b2/b3
        // ((2/3)^12 ≈ 0.8 %) or a policy without b1; the message names the identities to tell.
        const { result, events } = await n.withEvents(() => connect(VIP, 24, 3000, "parallel"), {
          until: (e) => {
            const k = kindOf(e);
            if (k && !kinds.has(k)) kinds.set(k, e);
            return kinds.size === 5;
          },
        });
        const ok = result.filter((c) => c !== null);
        // What the client's veth saw, for the message: CI once had every connection time out.
        const seen = new Map<string, number>();
        for (const e of events.filter((e) => e.epId === clientEp)) {
          const k = `${e.type}/${e.subtype}/${e.direction}/dport ${e.dport}/to ${e.dstIdentity}`;
          seen.set(k, (seen.get(k) ?? 0) + 1);
        }
        const ids = { b1: await identity(backends.b1!), others };
        const shown = `${JSON.stringify(result)}; client events ${JSON.stringify([...seen])}; ` +
          `identities ${JSON.stringify(ids)}`;
        assert.ok(ok.length > 0 && ok.length < result.length, `some pass, some drop: ${shown}`);
        assert.ok(ok.every((c) => c!.every((x) => x === "b1")), `only b1 answers: ${shown}`);
        const drop = events.find((e) => e.type === "drop" && e.subtype === 133);
        assert.ok(drop, `a policy drop: ${events.map(dropText)}`);
        assert.ok(others.includes(drop.dstIdentity), `dropped toward b2/b3: ${dropText(drop)}`);
        assert.equal(drop.dport, 8080, "the backend's port, not the service's");
        const shownKinds = JSON.stringify([...kinds].map(([k, e]) => [k, e.svcId]));
        assert.deepEqual([...kinds.keys()].sort(), ["allowed", "denied", "drop", "out", "reply"]);
        for (const [k, e] of kinds) assert.equal(e.svcId, svc, `${k} carries the service`);
        assert.equal(drop.svcId, svc, `the drop names service ${svc}: ${shownKinds}`);

        // The agent's flows name the service: the frontend next to the backend's port 8080.
        const frontend = `${VIP}:80/TCP`;
        const { flows } = await n.flows({ service: frontend });
        const dropped = flows.find((f) => f.drop_reason === 133 && f.cilia_type === "drop");
        assert.ok(dropped, `a drop flow through ${frontend}: ${flows.length} flows`);
        assert.deepEqual(dropped.destination_service, { frontend, id: svc });
        assert.equal(dropped.source_service, undefined);
        assert.ok(dropped.l4 && "TCP" in dropped.l4);
        assert.equal(dropped.l4.TCP.destination_port, 8080);
        const reply = flows.find((f) => f.is_reply && f.traffic_direction === "INGRESS");
        assert.ok(reply, `a reply flow from ${frontend}`);
        assert.deepEqual(reply.source_service, { frontend, id: svc });
        assert.equal(reply.IP?.source, VIP, "the reply after the service address came back");
        // `cilia observe` shows it in the line and in -o json.
        const line = await cilia(n.socket, "observe", "--service", VIP, "--type", "drop");
        assert.match(line, new RegExp(`:8080 \\(.*\\) via service ${frontend} drop`));
        const json = await cilia(n.socket, "observe", "--service", frontend, "-o", "json");
        const observed = json.trim().split("\n").map((l) => JSON.parse(l).flow as Flow | undefined);
        assert.ok(observed.some((f) => f?.destination_service?.id === svc), json.slice(0, 2000));
        assert.ok(observed.some((f) => f?.source_service?.frontend === frontend));
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
      const drop = events.find((e) => e.subtype === 158);
      assert.ok(drop, `drop 158: ${events.map(dropText)}`);
      assert.equal(drop.svcId, await serviceId(EMPTY_VIP), "the drop names the empty service");
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
