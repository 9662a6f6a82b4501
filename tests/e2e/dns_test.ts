// DNS-aware policy through the kernel and the agent's DNS proxy, with a real DNS server: dnsmasq
// on the external host (203.0.113.10) answers api.example.com → 203.0.113.10 and
// other.example.com / other.net → 203.0.113.20. A client pod with `toFQDNs: api.example.com` on
// TCP 8080 and a DNS rule on 53 cannot reach 203.0.113.10:8080 before it resolved the name, can
// after `dig` (the proxy learned the address before releasing the answer), and never reaches
// 203.0.113.20:8080; a DNS rule for `*.example.com` only makes `dig other.net` get REFUSED
// quickly, and each query is a DNS flow with its name, verdict and policy; `cilia fqdn cache
// list` shows the learned record and `clean -f` forgets it (the address is denied again, while
// the DNS server's own /32, also named by toCIDR, stays reachable: it is handed back to its CIDR
// identity). many.example.com (100 A records) does not fit a UDP answer: dig retries over TCP,
// which the kernel redirects to the proxy's TCP listener. short.example.com (TTL 1 s) expires
// within two seconds, except while a connection to its address is alive (conntrack). IPv6: the
// same dnsmasq also listens on 2001:db8:113::10 and answers AAAA (api.example.com →
// 2001:db8:113::10, v6.example.com → 2001:db8:113::20); the pod's IPv6 queries over UDP and TCP go
// through the proxy the same way, and its first IPv6 connect to the answer passes. UDP is served by
// the proxy's Worker, which caches verdicts and what was learned: a policy change and a cache
// clean must end both (a name allowed, then refused; an address cleaned, then learned again).
// Needs root.
import assert from "node:assert/strict";
import { CiliaNode } from "../cni/_fixture.ts";
import type { Flow } from "../../agent/monitor/mod.ts";
import { needsRoot } from "../helpers/root.ts";

const root = new URL("../../", import.meta.url).pathname;

const SERVER = `
const l = Deno.listen({ hostname: "::", port: 8080 }); // IPv4 and IPv6
for await (const c of l) { c.write(new TextEncoder().encode("hello\\n")).finally(() => c.close()); }
`;

const policy = (dns: string) =>
  `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchName: api.example.com}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toFQDNs: [{matchName: short.example.com}]
    toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
  - toFQDNs: [{matchName: v6.example.com}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toCIDR: [203.0.113.10/32, "2001:db8:113::10/128"]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "${dns}"}]}
`;

Deno.test({
  name: "dns: toFQDNs through the DNS proxy, REFUSED names, DNS flows",
  ...needsRoot(["dnsmasq", "dig", "curl"]),
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  await using n = await CiliaNode.create({ external: true });
  const ext = n.ext!;
  await n.lab.run(ext.netns, ["ip", "addr", "add", "203.0.113.20/24", "dev", "eth0"]);
  await n.lab.run(ext.netns, ["ip", "addr", "add", "203.0.113.30/24", "dev", "eth0"]);
  await n.lab.run(ext.netns, ["ip", "addr", "add", "2001:db8:113::20/64", "dev", "eth0", "nodad"]);
  await Deno.writeTextFile(`${n.lab.dir}/server.ts`, SERVER);
  // many.example.com has 100 A records: more than a UDP answer holds (TC), so dig retries on TCP.
  const many = Array.from({ length: 100 }, (_, i) => `198.51.100.${i + 1} many.example.com`);
  await Deno.writeTextFile(`${n.lab.dir}/many.hosts`, many.join("\n") + "\n");
  const spawn = (args: string[]) =>
    new Deno.Command("ip", {
      args: ["netns", "exec", ext.netns, ...args],
      stdout: "null",
      stderr: "null",
    }).spawn();
  const dnsmasq = spawn([
    "dnsmasq",
    "--no-daemon",
    "--port=53",
    "--listen-address=203.0.113.10",
    "--listen-address=2001:db8:113::10",
    "--bind-interfaces",
    "--no-resolv",
    "--no-hosts",
    "--local-ttl=60",
    "--address=/api.example.com/203.0.113.10",
    "--address=/api.example.com/2001:db8:113::10",
    "--address=/v6.example.com/2001:db8:113::20",
    "--address=/other.example.com/203.0.113.20",
    "--address=/other.net/203.0.113.20",
    `--addn-hosts=${n.lab.dir}/many.hosts`,
    "--host-record=short.example.com,203.0.113.30,1",
    `--pid-file=${n.lab.dir}/dnsmasq.pid`,
  ]);
  const srv = spawn([Deno.execPath(), "run", "-A", "--no-config", `${n.lab.dir}/server.ts`]);
  const echo = n.peer(ext.netns);
  try {
    const client = await n.addPod("client", { app: "client" });
    const connect = async (ip: string) =>
      (await n.lab.run(client.netns, [
        ...["curl", "-s", "-m", "1", `telnet://${ip.includes(":") ? `[${ip}]` : ip}:8080`],
      ]).catch(() => "")).includes("hello");
    /** A lookup from the pod; `v6`: AAAA asked of the server's IPv6 address, `tcp`: over TCP. */
    const dig = async (name: string, o: { v6?: boolean; tcp?: boolean } = {}) => {
      const start = performance.now();
      const out = await n.lab.run(client.netns, [
        ...["dig", "+time=2", "+tries=1", ...(o.tcp ? ["+tcp"] : [])],
        ...(o.v6 ? ["-6", "@2001:db8:113::10", name, "AAAA"] : ["@203.0.113.10", name, "A"]),
      ]).catch((e) => String(e));
      const status = /status: (\w+)/.exec(out)?.[1] ?? "NONE";
      const answer = /^\S+\s+\d+\s+IN\s+A{1,4}\s+(\S+)$/m.exec(out)?.[1];
      return { status, answer, ms: performance.now() - start };
    };
    /** The L7 flows, once `ready` holds of them (the DNS Worker's come in batches, ≤ 50 ms late). */
    const l7Flows = async (ready: (flows: Flow[]) => boolean) => {
      for (let i = 0;; i++) {
        const { flows } = await n.flows({ type: "l7" });
        if (ready(flows) || i === 40) return flows;
        await new Promise((r) => setTimeout(r, 25));
      }
    };
    const cilia = async (args: string[]) => {
      const o = await new Deno.Command(`${root}bin/cilia`, {
        args: ["fqdn", "cache", ...args, "-H", `unix://${n.socket}`],
        env: { CILIA_DENO: Deno.execPath(), NO_COLOR: "1" },
      }).output();
      const dec = new TextDecoder();
      return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
    };
    // Both servers are up (no policy yet).
    for (let i = 0; i < 50 && !(await connect("203.0.113.10")); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal((await dig("api.example.com")).answer, "203.0.113.10", "dnsmasq answers");

    await n.policy(policy("*"));

    await t.step("before the lookup the address is not allowed", async () => {
      assert.equal(await connect("203.0.113.10"), false);
    });

    await t.step("dig resolves through the proxy, then the connect passes", async () => {
      const r = await dig("api.example.com");
      assert.equal(r.status, "NOERROR");
      assert.equal(r.answer, "203.0.113.10");
      assert.equal(await connect("203.0.113.10"), true);
    });

    await t.step("another external address stays denied (also after its lookup)", async () => {
      assert.equal((await dig("other.example.com")).answer, "203.0.113.20");
      assert.equal(await connect("203.0.113.20"), false);
    });

    await t.step(
      "IPv6: AAAA over UDP to an IPv6 server, then the first connect passes",
      async () => {
        assert.equal(await connect("2001:db8:113::20"), false, "denied before the lookup");
        const r = await dig("v6.example.com", { v6: true });
        assert.equal(r.status, "NOERROR");
        assert.equal(r.answer, "2001:db8:113::20");
        assert.equal(await connect("2001:db8:113::20"), true);
        const flows = await l7Flows((fs) => fs.some((f) => f.l7?.dns?.query === "v6.example.com."));
        const f = flows.find((f) => f.l7?.dns?.query === "v6.example.com.");
        assert.ok(f?.l4 && "UDP" in f.l4, JSON.stringify(f));
        assert.equal(f.IP?.destination, "2001:db8:113::10");
        assert.deepEqual(f.l7?.dns?.ips, ["2001:db8:113::20"]);
      },
    );

    await t.step(
      "IPv6: AAAA over TCP through the proxy, then the first connect passes",
      async () => {
        assert.equal(await connect("2001:db8:113::10"), false, "denied before the lookup");
        const r = await dig("api.example.com", { v6: true, tcp: true });
        assert.equal(r.status, "NOERROR");
        assert.equal(r.answer, "2001:db8:113::10");
        assert.equal(await connect("2001:db8:113::10"), true);
        const { flows } = await n.flows({ type: "l7" });
        const f = flows.find((f) =>
          f.l7?.dns?.query === "api.example.com." && f.l7.dns.qtypes?.[0] === "AAAA"
        );
        assert.ok(f?.l4 && "TCP" in f.l4, JSON.stringify(f));
        assert.deepEqual(f.l7?.dns?.ips, ["2001:db8:113::10"]);
      },
    );

    await t.step("a name the DNS rules do not allow gets REFUSED quickly", async () => {
      // Allowed first: the UDP Worker caches that verdict, and the policy change must end it.
      assert.equal((await dig("other.net")).status, "NOERROR", "allowed under *");
      await n.policy(policy("*.example.com"));
      const r = await dig("other.net");
      assert.equal(r.status, "REFUSED");
      assert.ok(r.ms < 1000, `answered in ${r.ms.toFixed(0)} ms`);
      const r6 = await dig("other.net", { v6: true });
      assert.equal(r6.status, "REFUSED", "over IPv6 too");
      assert.equal((await dig("api.example.com")).answer, "203.0.113.10");
    });

    await t.step("a truncated UDP answer: dig retries over TCP through the proxy", async () => {
      const out = await n.lab.run(client.netns, [
        ...["dig", "+time=2", "+tries=1", "@203.0.113.10", "many.example.com", "A"],
      ]);
      assert.match(out, /Truncated, retrying in TCP mode/);
      assert.match(out, /status: NOERROR/);
      assert.match(out, /ANSWER: 100,/);
      const many = (f: Flow) => f.l7?.dns?.query === "many.example.com.";
      const seen = (await l7Flows((fs) => fs.filter(many).length >= 2)).filter(many);
      const over = (proto: string) => seen.find((f) => f.l4 && proto in f.l4);
      assert.ok(over("UDP"), JSON.stringify(seen));
      assert.equal(over("TCP")?.l7?.dns?.ips?.length, 100, JSON.stringify(seen));
    });

    await t.step("DNS flows carry the name, the verdict and the policy", async () => {
      const { flows } = await n.flows({ type: "l7" });
      const refused = flows.find((f) =>
        f.l7?.dns?.query === "other.net." && f.l7.dns.rcode !== 0 && f.l4 && "UDP" in f.l4
      );
      assert.ok(refused, JSON.stringify(flows.map((f) => f.Summary)));
      assert.equal(refused.verdict, "DROPPED");
      assert.equal(refused.l7?.dns?.rcode, 5);
      assert.equal(refused.policy?.name, "fqdn");
      const ok = flows.find((f) => f.l7?.dns?.query === "api.example.com.");
      assert.equal(ok?.verdict, "FORWARDED");
      assert.deepEqual(ok?.l7?.dns?.ips, ["203.0.113.10"]);
    });

    await t.step("the learned address survives an agent restart", async () => {
      await n.stopAgent();
      await n.startAgent();
      let ok = false;
      for (let i = 0; i < 30 && !(ok = await connect("203.0.113.10")); i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(ok, true);
      const list = await n.call("GET", "/v1/fqdn/cache");
      assert.equal(list.status, 200, JSON.stringify(list.body));
    });

    await t.step("cilia fqdn cache list shows the record; clean -f forgets it", async () => {
      assert.equal((await dig("api.example.com")).answer, "203.0.113.10");
      const list = await cilia(["list", "--endpoint", "client", "-o", "json"]);
      assert.equal(list.code, 0, list.err);
      const entries = JSON.parse(list.out) as { name: string; ip: string }[];
      assert.ok(
        entries.some((e) => e.name === "api.example.com." && e.ip === "203.0.113.10"),
        list.out,
      );
      const refused = await cilia(["clean", "--name", "api.example.com"]);
      assert.equal(refused.code, 2);
      assert.match(refused.err, /add -f/);
      const clean = await cilia(["clean", "-f", "--name", "api.example.com"]);
      assert.equal(clean.code, 0, clean.err);
      const after = await cilia(["list", "--name", "api.example.com", "-o", "json"]);
      assert.deepEqual(JSON.parse(after.out), []);
      assert.equal(await connect("203.0.113.10"), false);
      // The UDP Worker released this answer at once before; after the clean it must wait until
      // the address is learned again.
      assert.equal((await dig("api.example.com")).answer, "203.0.113.10");
      assert.equal(await connect("203.0.113.10"), true, "learned again after the clean");
    });

    await t.step("an expired address stays allowed while a connection uses it", async () => {
      await echo.listen("tcp", 9000);
      const cached = async () =>
        ((await n.call("GET", "/v1/fqdn/cache?name=short.example.com")).body as {
          entries: { ip: string }[];
        }).entries.map((e) => e.ip);
      const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
      // TTL 1 s and no connection: gone within two expiry passes.
      const first = await dig("short.example.com");
      assert.equal(first.answer, "203.0.113.30", first.status);
      assert.deepEqual(await cached(), ["203.0.113.30"]);
      await sleep(2500);
      assert.deepEqual(await cached(), [], "expired without a connection");
      // With a live connection it stays, and so does the address's policy.
      const peer = n.peer(client.netns);
      try {
        assert.equal((await dig("short.example.com")).answer, "203.0.113.30");
        assert.equal(await peer.open("k", "203.0.113.30", 9000), true);
        assert.equal(await peer.send("k", "x", 3000), true);
        await sleep(2500);
        assert.deepEqual(await cached(), ["203.0.113.30"], "kept while the connection lives");
        assert.equal(await peer.send("k", "y", 3000), true);
        assert.equal(await peer.probe("tcp", "203.0.113.30", 9000, 3000), true);
      } finally {
        await peer.close();
      }
    });
  } finally {
    await echo.close();
    for (const p of [dnsmasq, srv]) {
      try {
        p.kill("SIGTERM");
      } catch { /* gone */ }
      await p.status;
    }
  }
});
