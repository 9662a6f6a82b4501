// IPv6 ClusterIP services with real packets (bpf/lib/lb.h, the IPv6 half): two backend pods
// answer TCP and UDP with their own name on their IPv6 addresses; a client pod reaches them
// through [fd00:96::10]. Connections and datagrams spread over both backends, UDP answers come
// from the VIP (reverse NAT), an established connection stays on its backend when a backend is
// added (conntrack), a service without backends is refused at once with ICMPv6 port unreachable
// (ECONNREFUSED, drop 158), an ingress policy on the backends decides by the client's identity,
// and a service mixing families is a 400 naming the field. Services go in through
// `bin/cilia service create` and the API. Needs root.
import assert from "node:assert/strict";
import { CiliaNode, dropText, type TestPod } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { cilia, CLIENT_LIB, denoIn, killAll, putService, waitListening } from "./_services_lab.ts";

const VIP = "fd00:96::10", EMPTY_VIP = "fd00:96::11";
/** The per-connection timeout where an answer must come: generous, a loaded machine is slow. */
const OK_MS = "3000";

// TCP on [::]:8080 and UDP on [::]:5353, both answering with the server's name.
const SERVER = `
import dgram from "node:dgram";
const [name] = Deno.args;
const enc = new TextEncoder();
const udp = dgram.createSocket("udp6");
udp.on("message", (_m, r) => udp.send(name, r.port, r.address));
udp.bind(5353, "::");
for await (const c of Deno.listen({ hostname: "::", port: 8080 })) {
  (async () => {
    const buf = new Uint8Array(64);
    try { while ((await c.read(buf)) !== null) await c.write(enc.encode(name + "\\n")); } catch {}
    try { c.close(); } catch {}
  })();
}`;

// Modes (one JSON line each): "tcp HOST PORT N MS" and "udp HOST PORT N MS" → per attempt
// {name, from} or {err, ms}; "hold HOST PORT N" → the names of N open connections, then after
// a line on stdin the names the same connections answer with.
const CLIENT = `import dgram from "node:dgram";${CLIENT_LIB}
const [mode, host, port, count, ms] = Deno.args;
function udpAsk() {
  const s = dgram.createSocket("udp6");
  return new Promise((ok, fail) => {
    s.on("message", (m, r) => ok({ name: dec.decode(m), from: r.address }));
    s.on("error", fail);
    s.send("x", Number(port), host);
  }).finally(() => s.close());
}
const out = [];
if (mode === "hold") {
  const conns = [];
  for (let i = 0; i < Number(count); i++) conns.push(await within(Deno.connect({ hostname: host, port: Number(port) }), 2000));
  console.log(JSON.stringify(await Promise.all(conns.map(ask))));
  for await (const _ of Deno.stdin.readable) break;
  console.log(JSON.stringify(await Promise.all(conns.map((c) => within(ask(c), 2000).catch((e) => "ERR " + e.message)))));
  Deno.exit(0);
}
for (let i = 0; i < Number(count); i++) {
  const t0 = performance.now();
  try {
    if (mode === "udp") out.push(await within(udpAsk(), Number(ms)));
    else {
      const c = await within(Deno.connect({ hostname: host, port: Number(port) }), Number(ms));
      try { out.push({ name: await within(ask(c), Number(ms)), from: c.remoteAddr.hostname }); } finally { c.close(); }
    }
  } catch (e) { out.push({ err: e.name === "Error" ? e.message : e.name, ms: Math.round(performance.now() - t0) }); }
}
console.log(JSON.stringify(out));
Deno.exit(0);`;

interface Answer {
  name?: string;
  from?: string;
  err?: string;
  ms?: number;
}

Deno.test({
  name: "services: IPv6 ClusterIP (TCP, UDP, reverse NAT, ICMPv6 reject, policy) with real packets",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  await using n = await CiliaNode.create();
  const servers: Deno.ChildProcess[] = [];
  try {
    await Deno.writeTextFile(`${n.dir}/server6.js`, SERVER);
    await Deno.writeTextFile(`${n.dir}/client6.js`, CLIENT);
    const backends: Record<string, TestPod> = {};
    for (const name of ["b1", "b2", "b3"]) {
      backends[name] = await n.addPod(name, { app: "web6" });
      assert.ok(backends[name].ipv6, `${name} has an IPv6 address`);
      servers.push(
        denoIn(backends[name].netns, `${n.dir}/server6.js`, [name], {
          stdout: "null",
        }).spawn(),
      );
    }
    const client = await n.addPod("client", { app: "client" });
    const other = await n.addPod("other", { app: "other" });
    for (const b of Object.values(backends)) {
      await waitListening(n.lab, b.netns, "( sport = :8080 or sport = :5353 )", 2);
    }
    const run = async (pod: TestPod, args: string[]) => {
      const out = await denoIn(pod.netns, `${n.dir}/client6.js`, args).output();
      return JSON.parse(new TextDecoder().decode(out.stdout)) as Answer[];
    };
    const cli = (...args: string[]) => cilia(n.socket, ...args);
    const b6 = (...names: string[]) => names.map((b) => `[${backends[b]!.ipv6}]`);
    const names = (got: Answer[]) => [...new Set(got.map((a) => a.name))].sort();

    await t.step(
      "TCP through [VIP]:80 reaches both backends (bin/cilia service create)",
      async () => {
        await cli(
          "service",
          "create",
          "--frontend",
          `[${VIP}]:80/TCP`,
          "--backends",
          b6("b1", "b2").map((b) => `${b}:8080`).join(","),
        );
        const got = await run(client, ["tcp", VIP, "80", "24", OK_MS]);
        assert.ok(got.every((a) => a.name), `every connection answered: ${JSON.stringify(got)}`);
        assert.deepEqual(names(got), ["b1", "b2"], "both backends used");
      },
    );

    await t.step(
      "UDP through [VIP]:53 reaches both backends; answers come from the VIP",
      async () => {
        await cli(
          "service",
          "create",
          "--frontend",
          `[${VIP}]:53/UDP`,
          "--backends",
          b6("b1", "b2").map((b) => `${b}:5353`).join(","),
        );
        const got = await run(client, ["udp", VIP, "53", "24", OK_MS]);
        assert.ok(got.every((a) => a.name), `every datagram answered: ${JSON.stringify(got)}`);
        assert.deepEqual(names(got), ["b1", "b2"], "both backends used");
        assert.ok(got.every((a) => a.from === VIP), `reply source: ${JSON.stringify(got)}`);
      },
    );

    await t.step("an established connection stays on its backend when one is added", async () => {
      const hold = denoIn(client.netns, `${n.dir}/client6.js`, ["hold", VIP, "80", "8"], {
        stdin: "piped",
      }).spawn();
      const lines = hold.stdout.pipeThrough(new TextDecoderStream())[Symbol.asyncIterator]();
      let text = "";
      const line = async () => {
        while (!text.includes("\n")) {
          const r = await lines.next();
          if (r.done) throw new Error(`the client ended: ${text}`);
          text += r.value;
        }
        const i = text.indexOf("\n"), l = text.slice(0, i);
        text = text.slice(i + 1);
        return JSON.parse(l) as string[];
      };
      try {
        const before = await line();
        await putService(n, {
          frontend: { ip: VIP, port: 80, protocol: "TCP" },
          backends: ["b1", "b2", "b3"].map((b) => ({ ip: backends[b]!.ipv6, port: 8080 })),
        });
        const w = hold.stdin.getWriter();
        await w.write(new TextEncoder().encode("go\n"));
        await w.close();
        assert.deepEqual(await line(), before, "each connection keeps its backend");
        const fresh = await run(client, ["tcp", VIP, "80", "30", OK_MS]);
        assert.deepEqual(names(fresh), ["b1", "b2", "b3"], "new connections use the new one");
      } finally {
        try {
          hold.kill("SIGKILL");
        } catch { /* ended */ }
        await hold.status;
      }
    });

    await t.step(
      "Maglev spreads over IPv6 backends; ClientIP affinity keeps a client on one",
      async () => {
        const upsert = (extra: Record<string, unknown>) =>
          putService(n, {
            frontend: { ip: VIP, port: 80, protocol: "TCP" },
            algorithm: "maglev",
            backends: ["b1", "b2", "b3"].map((b) => ({ ip: backends[b]!.ipv6, port: 8080 })),
            ...extra,
          });
        await upsert({});
        const spread = await run(client, ["tcp", VIP, "80", "20", OK_MS]);
        assert.ok(names(spread).length >= 2, `Maglev spreads: ${JSON.stringify(names(spread))}`);
        await upsert({ sessionAffinity: "ClientIP", affinityTimeoutSeconds: 60 });
        const sticky = await run(client, ["tcp", VIP, "80", "20", OK_MS]);
        assert.ok(
          sticky.every((a) => a.name),
          `every connection answered: ${JSON.stringify(sticky)}`,
        );
        assert.equal(names(sticky).length, 1, `one backend: ${JSON.stringify(names(sticky))}`);
      },
    );

    await t.step("no backends: ICMPv6 port unreachable from the VIP, drop 158", async () => {
      await cli("service", "create", "--frontend", `[${EMPTY_VIP}]:80/TCP`);
      const unreachs = async () =>
        Number(
          /Icmp6InDestUnreachs\s+(\d+)/.exec(
            await n.lab.run(client.netns, ["nstat", "-az", "Icmp6InDestUnreachs"]),
          )?.[1],
        );
      const before = await unreachs();
      const { result, events } = await n.withEvents(
        () => run(client, ["tcp", EMPTY_VIP, "80", "1", "3000"]),
        { until: (e) => e.type === "drop" && e.subtype === 158 },
      );
      assert.ok(await unreachs() > before, "the pod got an ICMPv6 destination unreachable");
      assert.equal(result[0]!.err, "ConnectionRefused", JSON.stringify(result));
      // Not a timeout. The answer to the first SYN arrives while connect() still holds the
      // socket (counted as TcpExtLockDroppedIcmps); Linux 6.18 then refuses an IPv6 connect only
      // with the SYN retransmit's answer (1 s), where IPv4 refuses at once.
      assert.ok(result[0]!.ms! < 1500, `refused, not timed out: ${result[0]!.ms} ms`);
      const drop = events.find((e) => e.type === "drop" && e.subtype === 158);
      assert.ok(drop, `drop 158: ${events.map(dropText)}`);
      assert.equal(drop.family, 6);
      // The drop names the service (enforce.h, 11.), and so does its flow, in IPv6's spelling.
      const list = (await n.call("GET", "/v1/service")).body as {
        id: number;
        frontend: { ip: string };
      }[];
      const id = list.find((s) => s.frontend.ip === EMPTY_VIP)?.id;
      assert.ok(id !== undefined && drop.svcId === id, `service ${id}: ${drop.svcId}`);
      const frontend = `[${EMPTY_VIP}]:80/TCP`;
      const { flows } = await n.flows({ service: frontend, type: "drop" });
      assert.deepEqual(flows.at(-1)?.destination_service, { frontend, id });
    });

    await t.step("an ingress policy on the backends decides by the client's identity", async () => {
      await n.policy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web6-from-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web6}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
`);
      const otherId = ((await n.call("GET", `/v1/endpoint/default/other`)).body as {
        identity: number;
      }).identity;
      const ok = await run(client, ["tcp", VIP, "80", "6", OK_MS]);
      assert.ok(ok.every((a) => a.name), `app=client passes: ${JSON.stringify(ok)}`);
      const { result, events } = await n.withEvents(
        () => run(other, ["tcp", VIP, "80", "2", "400"]),
        { until: (e) => e.type === "drop" && e.subtype === 133 },
      );
      assert.ok(result.every((a) => a.err), `app=other is dropped: ${JSON.stringify(result)}`);
      const drop = events.find((e) => e.type === "drop" && e.subtype === 133);
      assert.ok(drop, `a policy drop: ${events.map(dropText)}`);
      assert.equal(drop.srcIdentity, otherId, `by the client's identity: ${dropText(drop)}`);
      assert.equal(drop.dport, 8080, "at the backend, on its port");
      assert.equal(drop.family, 6);
      await n.clearPolicies();
    });

    await t.step("a service mixing families is a 400 naming the field", async () => {
      const r = await n.call("PUT", "/v1/service", {
        frontend: { ip: VIP, port: 81, protocol: "TCP" },
        backends: [{ ip: backends.b1!.ipv6, port: 8080 }, { ip: backends.b2!.ipv4, port: 8080 }],
      });
      assert.equal(r.status, 400, JSON.stringify(r.body));
      assert.match(
        r.body.error.message,
        /backends\[1\]\.ip: Invalid backends\[1\]\.ip ".+": an IPv4 address for the IPv6 frontend/,
      );
      const list = (await n.call("GET", "/v1/service")).body as { frontend: { port: number } }[];
      assert.ok(list.every((s) => s.frontend.port !== 81), "nothing stored");
      const out = await cli("service", "list");
      assert.match(out, /\[fd00:96::10\]:80\/TCP/);
    });
  } finally {
    await killAll(servers);
  }
});
