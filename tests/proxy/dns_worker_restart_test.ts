// The DNS proxy's UDP Worker is restarted when it fails (agent/proxy/dns_udp_path.ts): an agent
// run with CILIA_TEST_DNS_WORKER_FAULT makes the Worker's loop throw on a query for that name, as
// a bug would. The query that killed it gets no answer; the next lookups are answered by a new
// Worker on the same sockets (a refused name still gets REFUSED, which only the proxy says, so
// nothing bypasses it); past the restart budget (RESTARTS in a minute) UDP DNS is no longer
// answered (fail closed). dnsmasq on the external host is the DNS server. Needs root.
import assert from "node:assert/strict";
import { CiliaNode } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { RESTARTS } from "../../agent/proxy/dns_udp_path.ts";

const DNS_IP = "203.0.113.10";
const FAULT = "crash.example.com";

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: restart, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchName: api.example.com}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toCIDR: [${DNS_IP}/32]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules: {dns: [{matchPattern: "*.example.com"}]}
`;

Deno.test({
  name: "DNS proxy: a failed UDP Worker is restarted on the same sockets, up to its budget",
  ...needsRoot(["dnsmasq", "dig"]),
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  await using n = await CiliaNode.create({
    external: true,
    agentEnv: { CILIA_TEST_DNS_WORKER_FAULT: `${FAULT}.` },
  });
  n.lab.spawn([
    ...["ip", "netns", "exec", n.ext!.netns, "dnsmasq", "--no-daemon", "--port=53"],
    ...[`--listen-address=${DNS_IP}`, "--bind-interfaces", "--no-resolv", "--no-hosts"],
    ...[`--address=/api.example.com/${DNS_IP}`, `--address=/${FAULT}/${DNS_IP}`],
    ...["--address=/other.net/203.0.113.20", `--pid-file=${n.lab.dir}/dnsmasq.pid`],
  ]);
  const client = await n.addPod("client", { app: "client" });
  const dig = async (name: string) => {
    const out = await n.lab.exec(client.netns, [
      ...["dig", "+time=1", "+tries=1", `@${DNS_IP}`, name, "A"],
    ]);
    return /status: (\w+)/.exec(out.stdout)?.[1] ?? "NONE";
  };
  /** The lookup's status once it is not NONE (at most `ms`), else NONE. */
  const answered = async (name: string, ms: number) => {
    const until = Date.now() + ms;
    for (;;) {
      const s = await dig(name);
      if (s !== "NONE" || Date.now() > until) return s;
    }
  };
  let first: string[] = [], fds = 0;
  for (let i = 0; i < 50 && (await dig("api.example.com")) !== "NOERROR"; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  await n.policy(POLICY);
  /** The agent's pid (its command line names the node's socket). */
  const agentPid = (() => {
    for (const e of Deno.readDirSync("/proc")) {
      if (!/^\d+$/.test(e.name)) continue;
      try {
        const cmd = Deno.readTextFileSync(`/proc/${e.name}/cmdline`);
        if (cmd.includes("agent/main.ts") && cmd.includes(n.socket)) return e.name;
      } catch { /* gone */ }
    }
    throw new Error(`No agent process for "${n.socket}"`);
  })();
  /** The agent's threads in SCHED_FIFO (policy 1, field 41 of the task's stat). */
  const fifoThreads = () =>
    [...Deno.readDirSync(`/proc/${agentPid}/task`)].filter((t) => {
      try {
        const stat = Deno.readTextFileSync(`/proc/${agentPid}/task/${t.name}/stat`);
        return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[38] === "1";
      } catch {
        return false;
      }
    }).map((t) => t.name);
  const openFds = () => [...Deno.readDirSync(`/proc/${agentPid}/fd`)].length;
  const dnsLog = () => n.log.split("\n").filter((l) => /dns/i.test(l)).join("\n");
  const restarted = () => n.log.split("\n").filter((l) => l.includes("DNS proxy worker restarted"));

  await t.step("the proxy answers, refuses, and a query can make its Worker fail", async () => {
    assert.equal(await answered("api.example.com", 5000), "NOERROR");
    assert.equal(await dig("other.net"), "REFUSED", "only the proxy refuses");
    first = fifoThreads();
    assert.equal(first.length, 1, "the Worker thread runs in SCHED_FIFO");
    fds = openFds();
    assert.equal(await dig(FAULT), "NONE", "the query that killed the Worker is not answered");
  });

  await t.step("a new Worker answers on the same sockets", async () => {
    assert.equal(await answered("api.example.com", 5000), "NOERROR");
    assert.equal(await dig("other.net"), "REFUSED", "still through the proxy");
    assert.equal(restarted().length, 1, n.log);
    const now = fifoThreads();
    assert.equal(now.length, 1, "the new Worker thread runs in SCHED_FIFO");
    assert.notEqual(now[0], first[0], "a new thread");
    assert.equal(openFds(), fds, "the failed Worker's legs, maps and epoll are closed");
  });

  await t.step(
    `past ${RESTARTS} restarts a minute, UDP DNS is not answered (fail closed)`,
    async () => {
      for (let i = 1; i < RESTARTS; i++) {
        assert.equal(await dig(FAULT), "NONE", dnsLog());
        assert.equal(await answered("api.example.com", 8000), "NOERROR", `restart ${i + 1}`);
      }
      assert.equal(restarted().length, RESTARTS);
      assert.equal(await dig(FAULT), "NONE");
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(await dig("api.example.com"), "NONE", "no answer, not even from dnsmasq");
      assert.match(n.log, /UDP DNS is not served/);
    },
  );
});
