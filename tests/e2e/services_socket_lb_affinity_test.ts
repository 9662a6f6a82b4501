// Session affinity through the socket LB (bpf/sock.c 7., bpf/lib/lb_affinity.h) with real
// sockets in a cgroup of this test's own: a ClientIP service's connections from one pod all reach
// one backend while the pod's stack never sends to the VIP (iptables OUTPUT counters: the socket
// path ran, not lb.h), TCP through connect4 and connect6 and unconnected UDP through sendmsg4
// (each datagram from a fresh socket, so only affinity can keep them together); the entry is
// keyed by the pod's network namespace cookie (family LB_AFFINITY_NETNS), and no address-keyed
// entry is made for the pod; a second pod gets an entry of its own; a backend removed from the
// service, or terminating, gets no new connections and the namespace moves to the other one, and
// re-adding the first does not move it back; an entry older than the service's timeout is not
// followed (the hash picks again and the entry is rewritten) while the same entry under a longer
// timeout is; the socket programs use the pinned affinity maps, also after those were made again
// (the agent loads them again). Needs root, clang, iptables, python3.
import assert from "node:assert/strict";
import { CiliaNode, type TestPod } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { execCommand } from "../../agent/sys/exec.ts";
import { killAll, putService } from "./_services_lab.ts";
import {
  AFFINITY_NETNS,
  affinityEntries,
  backendIds,
  buildSockPeer,
  counted,
  countTo,
  netnsCookie,
  startSockBackends,
  TestCgroup,
  writeAffinity,
} from "./_sock_lab.ts";

const VIP = "10.96.0.20", UDP_VIP = "10.96.0.21", VIP6 = "fd00:96::20";

// Sends one datagram to ADDR:PORT from each of N fresh unconnected sockets (sendmsg4, a new
// socket cookie each); prints a JSON array of [answer, "source address:port"].
const UDP_CLIENT = `
import json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"x", (host, port))
    try:
        d, a = s.recvfrom(64)
        out.append([d.decode().strip(), f"{a[0]}:{a[1]}"])
    except socket.timeout:
        out.append(["timeout", ""])
    s.close()
print(json.dumps(out))
`;

interface Conn {
  peer?: string;
  name?: string;
  err?: string;
}

Deno.test({
  name: "services: session affinity through the socket LB, keyed by the network namespace",
  ...needsRoot(["python3", "clang", "iptables", "ip6tables"]),
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
    const client2 = await n.addPod("client2", { app: "client" });
    const ip: Record<string, string> = { b1: b1.ipv4, b2: b2.ipv4 };
    const other = (name: string) => name === "b1" ? "b2" : "b1";
    const run = async (pod: TestPod, argv: string[]) => {
      const r = await execCommand(cg.argv(["ip", "netns", "exec", pod.netns, ...argv]));
      assert.equal(r.code, 0, `${argv.join(" ")}: ${r.stderr}`);
      return r.stdout;
    };
    /** The names of `count` TCP connections' backends, one after another (all must answer). */
    const tcp = async (pod: TestPod, count: number, vip = VIP) => {
      const got = JSON.parse(
        await run(pod, [peerBin, "count", vip, "80", String(count), "3000"]),
      ) as Conn[];
      const shown = JSON.stringify(got);
      const peer = vip.includes(":") ? `[${vip}]:80` : `${vip}:80`;
      assert.ok(got.every((c) => c.peer === peer), `all answered via the VIP: ${shown}`);
      return got.map((c) => c.name!);
    };
    const one = (names: string[]) => {
      const set = [...new Set(names)];
      assert.equal(set.length, 1, `one backend: ${names}`);
      return set[0]!;
    };
    const put = (names: string[], timeout = 10800, terminating: string[] = []) =>
      putService(n, {
        frontend: { ip: VIP, port: 80, protocol: "TCP" },
        backends: names.map((b) => ({
          ip: ip[b]!,
          port: 8080,
          ...(terminating.includes(b) ? { terminating: true } : {}),
        })),
        sessionAffinity: "ClientIP",
        affinityTimeoutSeconds: timeout,
      });
    const cookie = await netnsCookie(client.netns), cookie2 = await netnsCookie(client2.netns);
    assert.notEqual(cookie, cookie2, "two network namespaces, two cookies");
    /** The namespace's entry for the TCP service (the only one with netns entries from it). */
    const entryOf = async (c: bigint, svcId?: number) => {
      const all = (await affinityEntries(n.bpffs)).filter((e) =>
        e.netns === c && (svcId === undefined || e.svcId === svcId)
      );
      return all;
    };
    await countTo(client.netns, false, [VIP, UDP_VIP, b1.ipv4, b2.ipv4]);
    await countTo(client2.netns, false, [VIP]);
    await countTo(client.netns, true, [VIP6, b1.ipv6, b2.ipv6]);
    let sticky = "", svcId = 0;

    await t.step(
      "TCP: 20 connections of a pod reach one backend, none sent to the VIP",
      async () => {
        await put(["b1", "b2"]);
        sticky = one(await tcp(client, 20));
        const c = await counted(client.netns, false);
        assert.equal(c[VIP], 0, `nothing sent to the VIP: ${JSON.stringify(c)}`);
        assert.ok(c[ip[sticky]!]! > 0, `sent to ${sticky}: ${JSON.stringify(c)}`);
        assert.equal(c[ip[other(sticky)]!], 0, `nothing to ${other(sticky)}: ${JSON.stringify(c)}`);
        const ids = await backendIds(n.bpffs);
        const [e, ...more] = await entryOf(cookie);
        assert.ok(e && more.length === 0, "one entry keyed by the pod's netns cookie");
        assert.equal(e.family, AFFINITY_NETNS);
        assert.equal(e.backendId, ids.get(ip[sticky]!), `the entry's backend is ${sticky}`);
        svcId = e.svcId;
        const byAddr = (await affinityEntries(n.bpffs)).filter((x) =>
          x.family === 4 && [...x.key.subarray(0, 4)].join(".") === client.ipv4
        );
        assert.deepEqual(byAddr, [], "no address-keyed entry: the tc path did not choose");
      },
    );

    await t.step("UDP: datagrams of fresh unconnected sockets reach one backend", async () => {
      await putService(n, {
        frontend: { ip: UDP_VIP, port: 80, protocol: "UDP" },
        backends: [b1, b2].map((p) => ({ ip: p.ipv4, port: 8080 })),
        sessionAffinity: "ClientIP",
      });
      const got = JSON.parse(
        await run(client, ["python3", "-c", UDP_CLIENT, UDP_VIP, "80", "16"]),
      ) as [string, string][];
      const shown = JSON.stringify(got);
      assert.ok(got.every(([, from]) => from === `${UDP_VIP}:80`), `from the VIP: ${shown}`);
      const name = one(got.map(([x]) => x));
      assert.ok(name === "b1" || name === "b2", shown);
      assert.equal((await counted(client.netns, false))[UDP_VIP], 0, "nothing sent to the VIP");
      const udp = (await entryOf(cookie)).filter((e) => e.svcId !== svcId);
      assert.equal(udp.length, 1, "the UDP service has its own entry for the pod");
    });

    await t.step(
      "IPv6: connect6 keeps the pod on one backend, keyed by its netns too",
      async () => {
        await putService(n, {
          frontend: { ip: VIP6, port: 80, protocol: "TCP" },
          backends: [b1, b2].map((p) => ({ ip: p.ipv6, port: 8080 })),
          sessionAffinity: "ClientIP",
        });
        const name = one(await tcp(client, 16, VIP6));
        const c = await counted(client.netns, true);
        assert.equal(c[VIP6], 0, `nothing sent to the VIP: ${JSON.stringify(c)}`);
        const to = name === "b1" ? b1.ipv6 : b2.ipv6, off = name === "b1" ? b2.ipv6 : b1.ipv6;
        assert.ok(c[to]! > 0 && c[off] === 0, `only to ${name}: ${JSON.stringify(c)}`);
        const services = new Set((await entryOf(cookie)).map((e) => e.svcId));
        assert.equal(services.size, 3, "one entry per service (TCP, UDP, IPv6) for the pod");
      },
    );

    await t.step("a second pod (another netns) gets an entry of its own", async () => {
      const name = one(await tcp(client2, 10));
      assert.equal((await counted(client2.netns, false))[VIP], 0, "nothing sent to the VIP");
      const ids = await backendIds(n.bpffs);
      const [e2] = await entryOf(cookie2, svcId);
      assert.ok(e2, "an entry keyed by the second pod's cookie");
      assert.equal(e2.backendId, ids.get(ip[name]!), `its backend is ${name}`);
      const [e1] = await entryOf(cookie, svcId);
      assert.equal(e1?.backendId, ids.get(ip[sticky]!), "the first pod's entry is untouched");
    });

    await t.step("a backend removed from the service gets no new connections", async () => {
      const rest = other(sticky);
      await put([rest]);
      assert.deepEqual(await tcp(client, 20), Array(20).fill(rest), `all to ${rest}`);
      await put(["b1", "b2"]); // re-added: the namespace stays where it went
      assert.deepEqual(await tcp(client, 10), Array(10).fill(rest), `still ${rest}`);
      sticky = rest;
    });

    await t.step("a terminating backend gets no new connections", async () => {
      await put(["b1", "b2"], 10800, [sticky]);
      const rest = other(sticky);
      assert.deepEqual(await tcp(client, 10), Array(10).fill(rest), `all to ${rest}`);
      sticky = rest;
      const ids = await backendIds(n.bpffs);
      const [e] = await entryOf(cookie, svcId);
      assert.equal(e?.backendId, ids.get(ip[rest]!), `the entry moved to ${rest}`);
    });

    await t.step("an entry older than the timeout is not followed; within it, it is", async () => {
      await put(["b1", "b2"], 3600);
      const ids = await backendIds(n.bpffs);
      const age = async (to: string) => {
        const [e] = await entryOf(cookie, svcId);
        assert.ok(e, "the pod's entry");
        const lastUsed = e.lastUsed - 2_000_000_000n; // 2 s before the pod's last connection
        await writeAffinity(n.bpffs, { key: e.key, backendId: ids.get(ip[to]!)!, lastUsed });
        return lastUsed;
      };
      // 2 s old under a 1 h timeout: followed, to the backend the test wrote in.
      const target = other(sticky);
      await age(target);
      assert.deepEqual(await tcp(client, 10), Array(10).fill(target), `followed to ${target}`);
      // The same under a 1 s timeout (the shortest the agent takes): the slot hash picks again
      // (a fresh socket cookie each time), so within a few tries it lands on the other backend.
      await put(["b1", "b2"], 1);
      const tries: string[] = [];
      for (let i = 0; i < 30 && !tries.includes(other(target)); i++) {
        const written = await age(target);
        const [name] = await tcp(client, 1);
        tries.push(name!);
        const [e] = await entryOf(cookie, svcId);
        assert.ok(e && e.lastUsed > written, "the connection rewrote the entry");
        assert.equal(e.backendId, ids.get(ip[name!]!), `the entry follows the pick: ${tries}`);
      }
      assert.ok(tries.includes(other(target)), `an expired entry is not followed: ${tries}`);
    });

    await t.step(
      "the affinity maps are the lxc programs' ones, also after they were made again",
      async () => {
        const json = async <T>(argv: string[]) =>
          JSON.parse((await execCommand(["bpftool", "-j", ...argv])).stdout) as T;
        const mapId = async (name: string) =>
          (await json<{ id: number }>(["map", "show", "pinned", `${n.bpffs}/maps/${name}`])).id;
        const connectMaps = async () => {
          const rows = await json<{ id: number; attach_type: string }[]>([
            "cgroup",
            "show",
            cg.path,
          ]);
          const ids = rows.filter((r) => r.attach_type === "cgroup_inet4_connect");
          assert.equal(ids.length, 1, `one connect4 program: ${JSON.stringify(rows)}`);
          return (await json<{ map_ids: number[] }>(["prog", "show", "id", String(ids[0]!.id)]))
            .map_ids;
        };
        const names = ["cilia_lb_affinity", "cilia_lb_affinity_match"];
        const before = await Promise.all(names.map(mapId));
        assert.ok(before.every((id) => 0 < id), "pinned");
        for (const id of before) assert.ok((await connectMaps()).includes(id), `map ${id} in use`);
        await n.stopAgent();
        for (const name of names) await Deno.remove(`${n.bpffs}/maps/${name}`);
        await n.startAgent();
        const now = await Promise.all(names.map(mapId));
        for (const id of now) assert.ok((await connectMaps()).includes(id), `new map ${id} in use`);
        const first = one(await tcp(client, 10));
        assert.equal((await counted(client.netns, false))[VIP], 0, "nothing sent to the VIP");
        const ids = await backendIds(n.bpffs);
        const [e] = await entryOf(cookie, svcId);
        assert.equal(e?.backendId, ids.get(ip[first]!), "the entry is in the pinned map");
      },
    );
  } finally {
    await killAll(servers);
  }
});
