// Socket-level load balancing (bpf/sock.c, --bpf-lb-sock true) with real sockets: the agent
// attaches the cgroup hooks to a cgroup of this test's own (never the machine's root: other tests
// use the same VIPs at the same time), and the clients run inside it. TCP through the VIP spreads
// over two backends while the client's stack sends only to the backends (iptables OUTPUT counters
// in the pod: the socket path ran; the tc path would send to the VIP) and getpeername shows the VIP;
// dig through a UDP VIP gets dnsmasq's answers (dig drops an answer from an address it did not ask:
// recvmsg4 must give the VIP back); a service without backends refuses at once (ECONNREFUSED);
// IPv6 through connect6; policy still decides on the backend's identity (drop 133 toward it); a
// process outside the cgroup is served by the tc path (its stack sends to the VIP); an agent
// restart, and a replacement by another object, keep held connections on their backends and
// fail no new connection meanwhile; a backend removed from a service has its connections through
// the service ended (bpf/sock_term.c: TCP aborted, IPv4 and IPv6; a connected UDP socket
// disconnected; the walk runs in a Worker and the agent logs it) while the other backend's and a
// direct connection to the same pod go on, and a backend only turned terminating keeps its
// connection; a plain restart ends nothing, and a backend removed from the stored record while
// the agent was down has its connection ended after the start (the first write compares with
// the pinned service maps) while the kept backend's goes on; --bpf-lb-sock false detaches them again; an agent given a --cgroup-root that is not
// cgroup2 does not start and names the path. Needs root, clang, dnsmasq, dig, iptables, python3
// (the holding client).
import assert from "node:assert/strict";
import { CiliaNode, dropText, type TestPod } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { execCommand } from "../../agent/sys/exec.ts";
import { attachSock, loadSock, SOCK_PROGS } from "../../agent/datapath/sock_loader.ts";
import { killAll, putService } from "./_services_lab.ts";
import { openKvStore } from "../../agent/kvstore/kvstore.ts";
import { SERVICE_PREFIX } from "../../agent/service/manager.ts";
import { buildSockPeer, counted, countTo, startSockBackends, TestCgroup } from "./_sock_lab.ts";

const VIP = "10.96.0.10", DNS_VIP = "10.96.0.53", EMPTY_VIP = "10.96.0.11";
const VIP6 = "fd00:96::10";
const TERM_VIP = "10.96.0.12", TERM_UDP_VIP = "10.96.0.13", TERM_VIP6 = "fd00:96::12";
const DOWN_VIP = "10.96.0.14";

// Holds connections, one per argument "tcp|udp,ADDR,PORT[,NAME]" (with NAME: connects until the
// answer is NAME). Prints the first answers (a JSON array), then, for each line on stdin, what
// each connection answers now: a name, "EOF", "timeout" or the errno's name (ECONNABORTED).
const HOLDER = `
import errno, json, socket, sys, time
def ex(s):
    try:
        s.send(b"x")
        d = s.recv(64)
        return d.decode().strip() if d else "EOF"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
conns, first = [], []
for spec in sys.argv[1:]:
    kind, host, port, *want = spec.split(",")
    for _ in range(40):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        s.settimeout(2)
        s.connect((host, int(port)))
        n = ex(s)
        if not want or n == want[0]:
            conns.append(s)
            first.append(n)
            break
        s.close()
    else:
        first.append("none")
print(json.dumps(first), flush=True)
for line in sys.stdin:
    t = time.monotonic()
    got = [ex(s) for s in conns]
    print(json.dumps({"got": got, "ms": round((time.monotonic() - t) * 1000)}), flush=True)
`;

/** Text chunks → lines. */
const splitLines = () => {
  let rest = "";
  return new TransformStream<string, string>({
    transform(chunk, c) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      for (const l of parts) c.enqueue(l);
    },
  });
};

interface Conn {
  peer?: string;
  name?: string;
  err?: string;
  ms?: number;
}

Deno.test({
  name: "services: socket LB (cgroup connect/sendmsg/recvmsg/getpeername) with real sockets",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  await using cg = await TestCgroup.create();
  await using n = await CiliaNode.create({
    agentArgs: ["--bpf-lb-sock", "true", "--cgroup-root", cg.agentPath],
  });
  const servers: Deno.ChildProcess[] = [];
  try {
    const peerBin = await buildSockPeer(n.dir);
    const [b1, b2] = await startSockBackends(n, servers);
    const client = await n.addPod("client", { app: "client" });
    const inPod = (argv: string[]) => ["ip", "netns", "exec", client.netns, ...argv];
    const run = async (argv: string[], inside = true) => {
      const r = await execCommand(inside ? cg.argv(inPod(argv)) : inPod(argv));
      assert.equal(r.code, 0, `${argv.join(" ")}: ${r.stderr}`);
      return r.stdout;
    };
    const conns = async (host: string, count: number, ms = 3000, inside = true) =>
      JSON.parse(
        await run([peerBin, "count", host, "80", String(count), String(ms)], inside),
      ) as Conn[];
    const names = (got: Conn[]) => [...new Set(got.map((c) => c.name))].sort();
    await countTo(client.netns, false, [VIP, DNS_VIP, EMPTY_VIP, b1.ipv4, b2.ipv4]);
    await countTo(client.netns, true, [VIP6, b1.ipv6, b2.ipv6]);

    await t.step("TCP: balanced, backends on the wire, getpeername shows the VIP", async () => {
      await putService(n, {
        frontend: { ip: VIP, port: 80, protocol: "TCP" },
        backends: [b1, b2].map((p) => ({ ip: p.ipv4, port: 8080 })),
      });
      const got = await conns(VIP, 20);
      const shown = JSON.stringify(got);
      assert.ok(got.every((c) => c.peer === `${VIP}:80`), `getpeername: the VIP: ${shown}`);
      assert.deepEqual(names(got), ["b1", "b2"], `both backends: ${shown}`);
      const c = await counted(client.netns, false);
      assert.equal(c[VIP], 0, `nothing sent to the VIP: ${JSON.stringify(c)}`);
      assert.ok(c[b1.ipv4]! > 0 && c[b2.ipv4]! > 0, `sent to both backends: ${JSON.stringify(c)}`);
    });

    await t.step("UDP: dig through the VIP gets dnsmasq's answers (recvmsg4)", async () => {
      await putService(n, {
        frontend: { ip: DNS_VIP, port: 53, protocol: "UDP" },
        backends: [b1, b2].map((p) => ({ ip: p.ipv4, port: 53 })),
      });
      const out = await run([
        "sh",
        "-c",
        `for i in $(seq 16); do dig @${DNS_VIP} svc.test +short +tries=1 +time=2; done`,
      ]);
      const lines = out.trim().split("\n");
      assert.equal(lines.length, 16, out);
      assert.ok(lines.every((l) => /^192\.0\.2\.[12]$/.test(l)), `dnsmasq answered: ${out}`);
      assert.deepEqual([...new Set(lines)].sort(), ["192.0.2.1", "192.0.2.2"], out);
      assert.equal((await counted(client.netns, false))[DNS_VIP], 0, "nothing sent to the VIP");
    });

    await t.step("a service without backends: connect fails at once (ECONNREFUSED)", async () => {
      await putService(n, { frontend: { ip: EMPTY_VIP, port: 80, protocol: "TCP" }, backends: [] });
      const [got] = await conns(EMPTY_VIP, 1);
      assert.equal(got?.err, "ECONNREFUSED", JSON.stringify(got));
      assert.ok(got!.ms! < 500, `at once: ${got!.ms} ms`);
      assert.equal((await counted(client.netns, false))[EMPTY_VIP], 0, "no packet sent");
    });

    await t.step("IPv6: connect6 balances, getpeername6 shows the VIP", async () => {
      await putService(n, {
        frontend: { ip: VIP6, port: 80, protocol: "TCP" },
        backends: [b1, b2].map((p) => ({ ip: p.ipv6, port: 8080 })),
      });
      const got = await conns(VIP6, 16);
      const shown = JSON.stringify(got);
      assert.ok(got.every((c) => c.peer === `[${VIP6}]:80`), `getpeername: the VIP: ${shown}`);
      assert.deepEqual(names(got), ["b1", "b2"], `both backends: ${shown}`);
      const c = await counted(client.netns, true);
      assert.equal(c[VIP6], 0, `nothing sent to the VIP: ${JSON.stringify(c)}`);
    });

    await t.step("policy decides on the backend's identity (133 toward b2)", async () => {
      const b2Identity = ((await n.call("GET", `/v1/endpoint/default/b2`)).body as {
        identity: number;
      }).identity;
      await n.policy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-b1, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {app: b1}}]
`);
      try {
        const { result, events } = await n.withEvents(() => conns(VIP, 10, 1500), {
          until: (e) => e.type === "drop" && e.subtype === 133,
        });
        const shown = JSON.stringify(result);
        const ok = result.filter((c) => c.name !== undefined);
        assert.ok(ok.length > 0 && ok.length < result.length, `some pass, some drop: ${shown}`);
        assert.ok(ok.every((c) => c.name === "b1"), `only b1 answers: ${shown}`);
        const drop = events.find((e) => e.type === "drop" && e.subtype === 133);
        assert.ok(drop, `a policy drop: ${events.map(dropText)}`);
        assert.equal(drop.dstIdentity, b2Identity, `toward b2: ${dropText(drop)}`);
        assert.equal(drop.dport, 8080, "the backend's port");
      } finally {
        await n.clearPolicies();
      }
    });

    await t.step("a process outside the cgroup is served by the tc path", async () => {
      const before = (await counted(client.netns, false))[VIP]!;
      const got = await conns(VIP, 6, 3000, false);
      const shown = JSON.stringify(got);
      assert.ok(got.every((c) => c.peer === `${VIP}:80` && c.name), `served: ${shown}`);
      const after = (await counted(client.netns, false))[VIP]!;
      assert.ok(after > before, `its stack sent to the VIP (${before} → ${after})`);
    });

    // A client holding connections (HOLDER) in the cgroup; ask() has each exchange once more.
    const holder = async (specs: string[]) => {
      const argv = cg.argv(inPod(["python3", "-c", HOLDER, ...specs]));
      const p = new Deno.Command(argv[0]!, { args: argv.slice(1), stdin: "piped", stdout: "piped" })
        .spawn();
      const lines = p.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(splitLines())
        .getReader();
      const w = p.stdin.getWriter();
      const first = JSON.parse((await lines.read()).value!) as string[];
      return {
        first,
        async ask() {
          await w.write(new TextEncoder().encode("\n"));
          return JSON.parse((await lines.read()).value!) as { got: string[]; ms: number };
        },
        async close() {
          await w.close();
          lines.releaseLock();
          await p.stdout.cancel().catch(() => {});
          await p.status;
        },
      };
    };
    await t.step(
      "a removed backend's connections end; the others' and direct ones go on",
      async () => {
        const svc = (b1State: "active" | "terminating" | "gone") =>
          putService(n, {
            frontend: { ip: TERM_VIP, port: 80, protocol: "TCP" },
            backends: [
              ...(b1State === "gone" ? [] : [{
                ip: b1.ipv4,
                port: 8080,
                ...(b1State === "terminating" ? { terminating: true } : {}),
              }]),
              { ip: b2.ipv4, port: 8080 },
            ],
          });
        await svc("active");
        const h = await holder([
          `tcp,${TERM_VIP},80,b1`,
          `tcp,${TERM_VIP},80,b2`,
          `tcp,${b1.ipv4},8080`,
        ]);
        try {
          assert.deepEqual(h.first, ["b1", "b2", "b1"], "one on each backend and a direct one");
          assert.deepEqual((await h.ask()).got, ["b1", "b2", "b1"], "all pass before");
          const started = performance.now();
          await svc("gone");
          const after = await h.ask();
          const ms = performance.now() - started;
          const shown = JSON.stringify(after);
          // bpf_sock_destroy aborts it: the next send fails with ECONNABORTED.
          assert.equal(after.got[0], "ECONNABORTED", `b1's connection through it ended: ${shown}`);
          assert.ok(ms < 1500, `within ~1 s: ${Math.round(ms)} ms`);
          assert.deepEqual(after.got.slice(1), ["b2", "b1"], `the others pass: ${shown}`);
          assert.deepEqual((await h.ask()).got.slice(1), ["b2", "b1"], "and still do");
          const logged = /ended the connections of removed backends \(walk in a worker\)/;
          for (let i = 0; i < 40 && !logged.test(n.log); i++) {
            await new Promise((r) => setTimeout(r, 50));
          }
          assert.match(n.log, logged, "the agent logged the run");
        } finally {
          await h.close();
        }

        await svc("active");
        const t2 = await holder([`tcp,${TERM_VIP},80,b1`]);
        try {
          assert.deepEqual(t2.first, ["b1"]);
          await svc("terminating");
          assert.deepEqual((await t2.ask()).got, ["b1"], "a terminating backend keeps it");
          const got = await conns(TERM_VIP, 8);
          assert.deepEqual(names(got), ["b2"], `no new one to b1: ${JSON.stringify(got)}`);
        } finally {
          await t2.close();
        }
      },
    );

    await t.step("IPv6: a removed backend's connection ends, the other's goes on", async () => {
      const svc = (backends: TestPod[]) =>
        putService(n, {
          frontend: { ip: TERM_VIP6, port: 80, protocol: "TCP" },
          backends: backends.map((p) => ({ ip: p.ipv6, port: 8080 })),
        });
      await svc([b1, b2]);
      const h = await holder([`tcp,${TERM_VIP6},80,b1`, `tcp,${TERM_VIP6},80,b2`]);
      try {
        assert.deepEqual(h.first, ["b1", "b2"]);
        await svc([b2]);
        assert.deepEqual((await h.ask()).got, ["ECONNABORTED", "b2"]);
      } finally {
        await h.close();
      }
    });

    await t.step("a connected UDP socket to a removed backend is disconnected", async () => {
      const svc = (backends: TestPod[]) =>
        putService(n, {
          frontend: { ip: TERM_UDP_VIP, port: 80, protocol: "UDP" },
          backends: backends.map((p) => ({ ip: p.ipv4, port: 8080 })),
        });
      await svc([b1, b2]);
      const h = await holder([`udp,${TERM_UDP_VIP},80,b1`, `udp,${TERM_UDP_VIP},80,b2`]);
      try {
        assert.deepEqual(h.first, ["b1", "b2"]);
        await svc([b2]);
        const after = await h.ask();
        const shown = JSON.stringify(after);
        // bpf_sock_destroy on UDP (udp_abort): the socket is disconnected (its pending error,
        // ECONNABORTED, would come with a recv), so the next send has no peer: EDESTADDRREQ.
        assert.equal(after.got[0], "EDESTADDRREQ", `b1's socket: ${shown}`);
        assert.equal(after.got[1], "b2", `b2's socket passes: ${shown}`);
        const again = await h.ask();
        assert.equal(again.got[0], "EDESTADDRREQ", `then it has no peer: ${JSON.stringify(again)}`);
      } finally {
        await h.close();
      }
    });

    await t.step("agent restart and a program replacement: no failed connection", async () => {
      const hold = new Deno.Command(cg.argv(inPod([peerBin, "hold", VIP, "80", "6"]))[0]!, {
        args: cg.argv(inPod([peerBin, "hold", VIP, "80", "6"])).slice(1),
        stdin: "piped",
        stdout: "piped",
      }).spawn();
      const lines = hold.stdout.pipeThrough(new TextDecoderStream()).getReader();
      const first = JSON.parse((await lines.read()).value!) as string[];
      assert.ok(first.every((x) => x === "b1" || x === "b2"), JSON.stringify(first));
      // New connections all along: stop, another object attached over the running one, start.
      const loop = run([peerBin, "for", VIP, "80", "12000"]);
      await n.stopAgent();
      const src = `${n.dir}/bpf-other/`;
      await execCommand(["cp", "-r", new URL("../../bpf/", import.meta.url).pathname, src]);
      await Deno.writeTextFile(`${src}sock.c`, "\n/* another object */\n", { append: true });
      const other = await loadSock({
        bpffsRoot: n.bpffs,
        buildDir: `${n.dir}/build2`,
        sourceDir: src,
      });
      await attachSock(other, cg.path);
      await n.startAgent(); // its own object again: attached first, the other detached
      const w = hold.stdin.getWriter();
      await w.write(new TextEncoder().encode("again\n"));
      await w.close();
      const second = JSON.parse((await lines.read()).value!) as string[];
      assert.deepEqual(second, first, "held connections stay on their backends");
      lines.releaseLock();
      await hold.status;
      const r = JSON.parse(await loop) as { ok: number; errors: number; err: string };
      assert.equal(r.errors, 0, `no new connection failed: ${JSON.stringify(r)}`);
      assert.ok(r.ok > 0, JSON.stringify(r));
      const after = await conns(VIP, 16);
      assert.deepEqual(names(after), ["b1", "b2"], `still balanced: ${JSON.stringify(after)}`);
      const shown = JSON.parse(
        (await execCommand(["bpftool", "-j", "cgroup", "show", cg.path])).stdout,
      ) as { attach_type: string; name: string }[];
      assert.deepEqual(
        shown.map((p) => [p.attach_type, p.name]).sort(),
        Object.entries(SOCK_PROGS).sort(),
        "one program per hook: the older object detached",
      );
    });

    await t.step(
      "a backend removed while the agent was down: its connection ends after the start",
      async () => {
        await putService(n, {
          frontend: { ip: DOWN_VIP, port: 80, protocol: "TCP" },
          backends: [b1, b2].map((p) => ({ ip: p.ipv4, port: 8080 })),
        });
        const h = await holder([`tcp,${DOWN_VIP},80,b1`, `tcp,${DOWN_VIP},80,b2`]);
        try {
          assert.deepEqual(h.first, ["b1", "b2"]);
          await n.stopAgent();
          await n.startAgent();
          assert.deepEqual((await h.ask()).got, ["b1", "b2"], "a plain restart ends nothing");
          assert.doesNotMatch(n.log, /removed while the agent was down/);
          await n.stopAgent();
          // Another agent sharing the store would change the record so: the agent's own store
          // (its default, <state-dir>/kv.sqlite), through the same KvStore API.
          const store = await openKvStore(`denokv://${n.dir}/state/kv.sqlite`);
          try {
            const e = (await store.list(SERVICE_PREFIX)).find((e) =>
              new TextDecoder().decode(e.value).includes(`"${DOWN_VIP}"`)
            );
            assert.ok(e, `the record of ${DOWN_VIP}`);
            const rec = JSON.parse(new TextDecoder().decode(e.value));
            rec.backends = rec.backends.filter((x: { ip: string }) => x.ip !== b1.ipv4);
            assert.equal(rec.backends.length, 1, JSON.stringify(rec));
            await store.put(e.key, new TextEncoder().encode(JSON.stringify(rec)));
          } finally {
            await store.close();
          }
          const started = performance.now();
          await n.startAgent();
          let after = await h.ask();
          while (after.got[0] === "b1" && performance.now() - started < 5000) {
            await new Promise((r) => setTimeout(r, 100));
            after = await h.ask();
          }
          const shown = JSON.stringify(after);
          assert.equal(after.got[0], "ECONNABORTED", `b1's connection ended: ${shown}`);
          assert.equal(after.got[1], "b2", `b2's passes: ${shown}`);
          assert.equal((await h.ask()).got[1], "b2", "and still does");
          assert.match(n.log, /backends were removed while the agent was down/);
          const got = await conns(DOWN_VIP, 6);
          assert.deepEqual(names(got), ["b2"], `new ones go to b2: ${JSON.stringify(got)}`);
        } finally {
          await h.close();
        }
      },
    );

    await t.step("--bpf-lb-sock false detaches them: the tc path serves the cgroup", async () => {
      n.agentArgs = [];
      await n.stopAgent();
      await n.startAgent();
      const shown = (await execCommand(["bpftool", "-j", "cgroup", "show", cg.path])).stdout;
      assert.ok(shown.trim() === "" || shown.trim() === "[]", `nothing attached: ${shown}`);
      const before = (await counted(client.netns, false))[VIP]!;
      const got = await conns(VIP, 4);
      assert.ok(got.every((c) => c.name), JSON.stringify(got));
      assert.ok((await counted(client.netns, false))[VIP]! > before, "sent to the VIP now");
    });
  } finally {
    await killAll(servers);
  }
});

Deno.test({
  name: "services: socket LB refuses a --cgroup-root that is not cgroup2, naming it",
  ...needsRoot(),
  sanitizeResources: false,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-sock-notcg-" });
  try {
    await assert.rejects(
      CiliaNode.create({ agentArgs: ["--bpf-lb-sock", "true", "--cgroup-root", dir] }),
      // The agent's log is JSON: its quotes come escaped.
      new RegExp(`Invalid --cgroup-root \\\\?"${dir}\\\\?": it is on .*not cgroup2`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
