// toServices with real packets (policy-wasm/src/translate_services.ts, agent/service/policy_refs.ts):
// a client pod whose only egress rule is `toServices` reaches the backends of a service with a
// selector (web: pods app=web) through its ClusterIP and directly, and the external backend of a
// selector-less service (ext: 203.0.113.10, read as a /32) through its ClusterIP; a pod that is
// no backend and an external address that is none stay denied (drop 133); changing the
// selector-less service's backend moves the allowed /32 with it; a restarted agent resolves them
// from its first policy load; a backend connecting to its own service reaches itself (hairpin,
// bpf/lib/lb.h 8.–9.). The web service is made with `cilia service create --selector`.
// Needs root.
import assert from "node:assert/strict";
import { CiliaNode, dropText, root, type TestPod } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { denoIn } from "./_services_lab.ts";

const WEB_VIP = "10.96.0.20", EXT_VIP = "10.96.0.21", EXT2 = "203.0.113.200";

const SERVER = `
const [name, port] = Deno.args;
for await (const c of Deno.listen({ hostname: "0.0.0.0", port: Number(port) })) {
  (async () => {
    try {
      const b = new Uint8Array(8);
      // "?" asks for the peer address too: "name address".
      if (await c.read(b) !== null) await c.write(new TextEncoder().encode(name + (b[0] === 63 ? " " + c.remoteAddr.hostname : "") + "\\n"));
    } catch {}
    try { c.close(); } catch {}
  })();
}`;

// Prints a JSON array: per connection the name that answered, or null when it failed.
const CLIENT = `
const [host, port, count, ms, ask = "x"] = Deno.args;
const out = [];
for (let i = 0; i < Number(count); i++) {
  let c, t;
  try {
    const timeout = new Promise((_, r) => { t = setTimeout(() => r(new Error("timeout")), Number(ms)); });
    const talk = (async () => {
      c = await Deno.connect({ hostname: host, port: Number(port) });
      await c.write(new TextEncoder().encode(ask));
      const b = new Uint8Array(64); const n = await c.read(b);
      if (n === null) throw new Error("closed");
      return new TextDecoder().decode(b.subarray(0, n)).trim();
    })();
    talk.catch(() => {});
    out.push(await Promise.race([talk, timeout]));
  } catch { out.push(null); }
  clearTimeout(t);
  try { c?.close(); } catch {}
}
console.log(JSON.stringify(out));
Deno.exit(0);`;

Deno.test({
  name: "services: toServices in egress policy with real packets",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  await using n = await CiliaNode.create({ external: true });
  const ext = n.ext!;
  const servers: Deno.ChildProcess[] = [];
  try {
    await n.lab.run(ext.netns, ["ip", "addr", "add", `${EXT2}/24`, "dev", "eth0"]);
    await Deno.writeTextFile(`${n.dir}/server.js`, SERVER);
    await Deno.writeTextFile(`${n.dir}/client.js`, CLIENT);
    const inNetns = (netns: string, script: string, args: string[]) => denoIn(netns, script, args);
    const pods: Record<string, TestPod> = {};
    for (const [name, app] of [["w1", "web"], ["w2", "web"], ["o1", "other"]] as const) {
      pods[name] = await n.addPod(name, { app });
    }
    const listening = [...Object.values(pods).map((p) => p.netns), ext.netns];
    for (const [name, p] of Object.entries(pods)) {
      servers.push(inNetns(p.netns, `${n.dir}/server.js`, [name, "8080"]).spawn());
    }
    servers.push(inNetns(ext.netns, `${n.dir}/server.js`, ["ext", "8080"]).spawn());
    const client = await n.addPod("client", { app: "client" });
    for (const netns of listening) {
      for (let i = 0; i < 100; i++) {
        if ((await n.lab.run(netns, ["ss", "-Htln", "sport = :8080"])).trim() !== "") break;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    // 3 s per connection that must answer: a loaded machine is slow.
    const connect = async (host: string, port: number, count = 1, ms = 3000, from = client) => {
      const out = await inNetns(from.netns, `${n.dir}/client.js`, [
        host,
        String(port),
        String(count),
        String(ms),
        from === client ? "x" : "?",
      ]).output();
      return JSON.parse(new TextDecoder().decode(out.stdout)) as (string | null)[];
    };
    const upsert = async (body: Record<string, unknown>) => {
      const r = await n.call("PUT", "/v1/service", body);
      assert.ok(r.status === 200 || r.status === 201, JSON.stringify(r.body));
    };
    const denied = async (host: string, port: number) => {
      const { result, events } = await n.withEvents(() => connect(host, port, 1, 400), {
        until: (e) => e.type === "drop" && e.subtype === 133,
      });
      assert.deepEqual(result, [null], `${host}:${port} should be denied`);
      assert.ok(
        events.some((e) => e.type === "drop" && e.subtype === 133),
        `a policy drop toward ${host}: ${events.map(dropText)}`,
      );
    };

    const cli = (args: string[]) =>
      new Deno.Command(`${root}bin/cilia`, {
        args: [...args, "-H", `unix://${n.socket}`],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const bad = await cli(["service", "create", "--frontend", `${WEB_VIP}:80`, "--selector", "x"]);
    assert.notEqual(bad.code, 0);
    assert.match(
      new TextDecoder().decode(bad.stderr),
      /Invalid --selector "x": expected KEY=VALUE/,
    );
    const made = await cli([
      "service",
      "create",
      "--name",
      "default/web",
      "--selector",
      "app=web",
      "--frontend",
      `${WEB_VIP}:80/TCP`,
      "--backends",
      `${pods.w1!.ipv4}:8080,${pods.w2!.ipv4}:8080`,
      "-o",
      "json",
    ]);
    assert.equal(made.code, 0, new TextDecoder().decode(made.stderr));
    assert.deepEqual(JSON.parse(new TextDecoder().decode(made.stdout)).selector, { app: "web" });
    await upsert({
      name: "default/ext",
      frontend: { ip: EXT_VIP, port: 80, protocol: "TCP" },
      backends: [{ ip: ext.ipv4, port: 8080 }],
    });
    await n.policy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-to-services, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toServices:
    - k8sService: {serviceName: web, namespace: default}
    - k8sService: {serviceName: ext, namespace: default}
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`);

    await t.step("a service with a selector: its pods via the ClusterIP and directly", async () => {
      const got = await connect(WEB_VIP, 80, 10);
      assert.ok(got.every((x) => x === "w1" || x === "w2"), `web backends: ${got}`);
      assert.deepEqual(await connect(pods.w2!.ipv4, 8080), ["w2"]);
    });

    await t.step("a pod that is no backend stays denied (133)", async () => {
      await denied(pods.o1!.ipv4, 8080);
    });

    await t.step("a selector-less service: its external backend via the ClusterIP", async () => {
      assert.deepEqual(await connect(EXT_VIP, 80, 3), ["ext", "ext", "ext"]);
      assert.deepEqual(await connect(ext.ipv4, 8080), ["ext"], "directly too (its /32)");
      await denied(EXT2, 8080);
    });

    await t.step("changing the selector-less service's backend moves the allowed /32", async () => {
      await upsert({
        name: "default/ext",
        frontend: { ip: EXT_VIP, port: 80, protocol: "TCP" },
        backends: [{ ip: EXT2, port: 8080 }],
      });
      assert.deepEqual(await connect(EXT_VIP, 80, 2), ["ext", "ext"], "via the ClusterIP");
      assert.deepEqual(await connect(EXT2, 8080), ["ext"], "the new backend directly");
      await denied(ext.ipv4, 8080);
    });

    await t.step("hairpin: a backend connecting to its own service reaches itself", async () => {
      // w1 is a backend of web: the connections that land on w1 are SNATed to 169.254.42.1.
      const got = await connect(WEB_VIP, 80, 16, 3000, pods.w1!);
      const self = got.filter((x) => x?.startsWith("w1 "));
      assert.ok(got.every((x) => x !== null), `every connection answered: ${got}`);
      assert.ok(self.length > 0, `some connections reached w1 itself: ${got}`);
      assert.ok(self.every((x) => x === "w1 169.254.42.1"), `seen from 169.254.42.1: ${self}`);
      assert.ok(
        got.filter((x) => x?.startsWith("w2 ")).every((x) => x === `w2 ${pods.w1!.ipv4}`),
        `w2 sees w1's own address: ${got}`,
      );
    });

    await t.step("a restarted agent resolves toServices from its first policy load", async () => {
      await n.stopAgent();
      const before = n.log.length;
      await n.startAgent();
      const loads = () =>
        n.log.slice(before).split("\n").filter((l) => l.includes('"policy loaded"'));
      assert.deepEqual(await connect(EXT_VIP, 80), ["ext"], "via the ClusterIP");
      assert.deepEqual(await connect(WEB_VIP, 80, 2).then((g) => g.map((x) => x?.[0])), [
        "w",
        "w",
      ]);
      assert.ok(loads().length >= 1, "the policy was loaded");
      assert.ok(
        loads().every((l) => !l.includes("services change")),
        `no second load once the services are read: ${loads()}`,
      );
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
