// The socket LB's trace events (bpf/lib/sock_trace.h) with real sockets in a cgroup of this test's
// own: a TCP connection to a VIP yields exactly one TRACE_SOCK_XLATE event, from the sockops hook,
// with the service's id, the chosen backend, the client's address and port (the same tuple its SYN
// has) and the socket's cookie, and its flow names the client pod as the source and the service's
// frontend (IPv4 and IPv6); a DNS query through a UDP VIP yields one with the service and the
// backend; an unconnected UDP socket sending three datagrams yields one, not three; a connection
// to a pod directly yields none; a live follower of all flows gets a sock flow with its fields; the
// events come through the ring the lxc programs use, also after that ring was made again. Needs root, dnsmasq, dig and python3.
import assert from "node:assert/strict";
import { CiliaNode } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { execCommand } from "../../agent/sys/exec.ts";
import type { PacketEvent } from "../../agent/datapath/events.ts";
import { TRACE_FROM_ENDPOINT, TRACE_SOCK_XLATE } from "../../agent/datapath/codecs.ts";
import { SOCK_PROGS } from "../../agent/datapath/sock_loader.ts";
import { parsePacket } from "../../agent/monitor/_packet.ts";
import { type Flow, type MonitorLine, readLines } from "../../agent/monitor/mod.ts";
import { killAll, putService } from "./_services_lab.ts";
import { startSockBackends, TestCgroup } from "./_sock_lab.ts";

const VIP = "10.96.1.10", VIP6 = "fd00:96::1:10", DNS_VIP = "10.96.1.53", UDP_VIP = "10.96.1.20";

// One TCP connection (or one unconnected UDP socket sending N datagrams): prints its local
// address and port, the answer and the socket's cookie (SO_COOKIE).
const CLIENT = `
import json, socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
if kind == "tcp":
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3); s.connect((host, port)); s.send(b"x")
else:
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(3)
    for _ in range(int(sys.argv[4])): s.sendto(b"x", (host, port))
name = s.recv(64).decode().strip()
cookie = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), "little")
print(json.dumps({"local": list(s.getsockname()[:2]), "name": name, "cookie": cookie}))
`;

interface ClientResult {
  local: [string, number];
  name: string;
  cookie: number;
}

const isSock = (e: PacketEvent) => e.type === "trace" && e.subtype === TRACE_SOCK_XLATE;
const text = (e: PacketEvent) => {
  const ip = parsePacket(e.data).IP;
  return `${e.type}/${e.subtype} svc=${e.svcId} ${ip?.source}:${e.sport} -> ` +
    `${ip?.destination}:${e.dport} proto=${e.proto} ids=${e.srcIdentity}->${e.dstIdentity}`;
};

Deno.test({
  name: "services: the socket LB's translations are trace events with frontend and backend",
  ...needsRoot(["python3", "dig", "dnsmasq"]),
  sanitizeResources: false,
}, async (t) => {
  await using cg = await TestCgroup.create();
  await using n = await CiliaNode.create({
    agentArgs: ["--bpf-lb-sock", "true", "--cgroup-root", cg.agentPath],
  });
  const servers: Deno.ChildProcess[] = [];
  try {
    const [b1, b2] = await startSockBackends(n, servers);
    const client = await n.addPod("client", { app: "client" });
    const inCgroup = async (argv: string[]) => {
      const r = await execCommand(cg.argv(["ip", "netns", "exec", client.netns, ...argv]));
      assert.equal(r.code, 0, `${argv.join(" ")}: ${r.stderr}`);
      return r.stdout;
    };
    const connect = async (...args: string[]) =>
      JSON.parse(await inCgroup(["python3", "-c", CLIENT, ...args])) as ClientResult;
    const identity = async (name: string) =>
      ((await n.call("GET", `/v1/endpoint/default/${name}`)).body as { identity: number })
        .identity;
    const [b1Id, b2Id, clientId] = [
      await identity("b1"),
      await identity("b2"),
      await identity(
        "client",
      ),
    ];
    const backendOf = (name: string) => name === "b1" ? b1 : b2;
    const idOf = (name: string) => name === "b1" ? b1Id : b2Id;
    const services: Record<string, number> = {};
    for (
      const [ip, port, protocol, bport] of [
        [VIP, 80, "TCP", 8080],
        [VIP6, 80, "TCP", 8080],
        [DNS_VIP, 53, "UDP", 53],
        [UDP_VIP, 80, "UDP", 8080],
      ] as const
    ) {
      await putService(n, {
        frontend: { ip, port, protocol },
        backends: [b1, b2].map((p) => ({ ip: ip.includes(":") ? p.ipv6 : p.ipv4, port: bport })),
      });
    }
    for (
      const s of (await n.call("GET", "/v1/service")).body as {
        id: number;
        frontend: { ip: string };
      }[]
    ) {
      services[s.frontend.ip] = s.id;
    }
    // Every event of an action and the 1.5 s after it (a second event would come at once).
    const eventsOf = <T>(action: () => Promise<T>) => n.withEvents(action, { timeoutMs: 1500 });
    /** The flow of the sock event of `cookie` (the monitor's ring). */
    const flowOf = async (cookie: number): Promise<Flow> => {
      const { flows } = await n.flows();
      const f = flows.find((f) => f.sock_xlate_point && f.socket_cookie === cookie % 2 ** 32);
      assert.ok(f, `a sock flow with cookie ${cookie}: ${JSON.stringify(flows.slice(-5))}`);
      return f;
    };

    await t.step("TCP to a VIP: one event, from sockops, with the full tuple", async () => {
      const { result: c, events } = await eventsOf(() => connect("tcp", VIP, "80"));
      const sock = events.filter(isSock);
      assert.equal(sock.length, 1, `one sock event: ${events.map(text).join("; ")}`);
      const e = sock[0]!, be = backendOf(c.name), ip = parsePacket(e.data);
      assert.equal(e.svcId, services[VIP], text(e));
      assert.deepEqual([e.family, e.proto, e.dport, e.origLen, e.epId], [4, 6, 8080, 0, 0]);
      assert.deepEqual(ip.IP, { source: client.ipv4, destination: be.ipv4, ipVersion: "IPv4" });
      assert.deepEqual(c.local, [client.ipv4, e.sport], "the client's own port");
      assert.deepEqual([e.srcIdentity, e.dstIdentity], [clientId, idOf(c.name)], text(e));
      assert.equal(e.ifindex, c.cookie % 2 ** 32, "the socket's cookie");
      const syn = events.find((x) =>
        x.type === "trace" && x.subtype === TRACE_FROM_ENDPOINT && x.sport === e.sport
      );
      assert.ok(syn, `the SYN with the same port: ${events.map(text).join("; ")}`);
      assert.equal(parsePacket(syn.data).IP?.destination, be.ipv4, "the SYN goes to the backend");

      const f = await flowOf(c.cookie);
      assert.equal(f.source.pod_name, "client", JSON.stringify(f.source));
      assert.equal(f.source.identity, clientId);
      assert.equal(f.destination.identity, idOf(c.name));
      assert.equal(f.destination.pod_name, c.name, `the backend pod: ${JSON.stringify(f)}`);
      assert.deepEqual(f.l4, { TCP: { source_port: e.sport, destination_port: 8080 } });
      assert.deepEqual([f.event_type.type, f.Type, f.traffic_direction], [133, "SOCK", "EGRESS"]);
      assert.equal(f.sock_xlate_point, "SOCK_XLATE_POINT_POST_DIRECTION_FWD");
      assert.equal(f.destination_service?.frontend, `${VIP}:80/TCP`, JSON.stringify(f));
      assert.equal(f.destination_service?.id, services[VIP]);
    });

    await t.step("TCP over IPv6: one event with the IPv6 tuple", async () => {
      const { result: c, events } = await eventsOf(() => connect("tcp", VIP6, "80"));
      const sock = events.filter(isSock);
      assert.equal(sock.length, 1, `one sock event: ${events.map(text).join("; ")}`);
      const e = sock[0]!, be = backendOf(c.name);
      assert.deepEqual([e.svcId, e.family, e.proto, e.dport], [services[VIP6], 6, 6, 8080]);
      assert.deepEqual(parsePacket(e.data).IP, {
        source: client.ipv6,
        destination: be.ipv6,
        ipVersion: "IPv6",
      });
      assert.deepEqual(c.local, [client.ipv6, e.sport]);
      const f = await flowOf(c.cookie);
      assert.equal(f.source.pod_name, "client", JSON.stringify(f.source));
      assert.equal(f.destination_service?.frontend, `[${VIP6}]:80/TCP`, JSON.stringify(f));
    });

    await t.step("UDP: a DNS query through the VIP names the service and the backend", async () => {
      const { result: out, events } = await eventsOf(() =>
        inCgroup(["dig", `@${DNS_VIP}`, "svc.test", "+short", "+tries=1", "+time=2"])
      );
      assert.match(out.trim(), /^192\.0\.2\.[12]$/, "dnsmasq answered");
      const sock = events.filter((e) => isSock(e) && e.svcId === services[DNS_VIP]);
      assert.equal(sock.length, 1, `one sock event: ${events.map(text).join("; ")}`);
      const e = sock[0]!, ip = parsePacket(e.data).IP!;
      assert.deepEqual([e.family, e.proto, e.dport], [4, 17, 53]);
      const be = [b1, b2].find((p) => p.ipv4 === ip.destination);
      assert.ok(be, `a backend: ${text(e)}`);
      assert.equal(e.dstIdentity, idOf(be.name));
      // The source: the socket's bound address, if any (dig's is unbound until it sends).
      assert.ok(["0.0.0.0", client.ipv4].includes(ip.source), text(e));
      const { flows } = await n.flows();
      const f = flows.find((f) => f.sock_xlate_point && f.destination_service?.id === e.svcId);
      assert.equal(f?.destination_service?.frontend, `${DNS_VIP}:53/UDP`, JSON.stringify(f));
    });

    await t.step("unconnected UDP: three datagrams, one event", async () => {
      const { result: c, events } = await eventsOf(() => connect("udp", UDP_VIP, "80", "3"));
      const sock = events.filter((e) => isSock(e) && e.ifindex === c.cookie % 2 ** 32);
      assert.equal(sock.length, 1, `one sock event: ${events.map(text).join("; ")}`);
      const e = sock[0]!;
      assert.deepEqual([e.svcId, e.proto, e.dport], [services[UDP_VIP], 17, 8080]);
      assert.equal(parsePacket(e.data).IP?.destination, backendOf(c.name).ipv4, text(e));
      const again = await eventsOf(() => connect("udp", UDP_VIP, "80", "1"));
      const other = again.events.filter((e) => isSock(e) && e.svcId === services[UDP_VIP]);
      assert.equal(other.length, 1, "another socket: its own event");
      assert.equal(other[0]!.ifindex, again.result.cookie % 2 ** 32);
    });

    await t.step("a live follower of every flow (the line writer) gets its fields", async () => {
      // No event reader meanwhile: the monitor writes unfiltered lines from the record's bytes,
      // except for sock events (their flows have fields of their own).
      const client = Deno.createHttpClient({ proxy: { transport: "unix", path: n.socket } });
      const ac = new AbortController();
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        const res = await fetch("http://localhost/v1/flows?follow=true", {
          client,
          signal: ac.signal,
        } as RequestInit);
        assert.ok(res.ok && res.body, `HTTP ${res.status}`);
        const lines = readLines(res.body)[Symbol.asyncIterator]();
        const c = await connect("udp", UDP_VIP, "80", "1");
        timer = setTimeout(() => ac.abort(), 5000);
        let found: Flow | undefined;
        const seen: string[] = [];
        try {
          for (let r = await lines.next(); !r.done; r = await lines.next()) {
            const m = JSON.parse(r.value) as MonitorLine;
            if (!("flow" in m)) continue;
            seen.push(`${m.flow.cilia_type} ${m.flow.IP?.source} -> ${m.flow.IP?.destination}`);
            if (m.flow.Type === "SOCK" && m.flow.socket_cookie === c.cookie % 2 ** 32) {
              found = m.flow;
              break;
            }
          }
        } catch (err) {
          if (!ac.signal.aborted) throw err;
        }
        assert.ok(found, `the sock flow with its fields: ${seen.join("; ")}`);
        assert.equal(found.sock_xlate_point, "SOCK_XLATE_POINT_POST_DIRECTION_FWD");
        assert.equal(found.destination_service?.frontend, `${UDP_VIP}:80/UDP`);
        assert.equal(found.IP?.destination, backendOf(c.name).ipv4);
      } finally {
        clearTimeout(timer);
        ac.abort();
        client.close();
      }
    });

    await t.step("a connection to a pod, not a service: no sock event", async () => {
      const { result: c, events } = await eventsOf(() => connect("tcp", b1.ipv4, "8080"));
      assert.equal(c.name, "b1");
      assert.deepEqual(events.filter(isSock).map(text), [], "no sock event");
      assert.ok(
        events.some((e) => e.type === "trace" && e.sport === c.local[1]),
        `the monitor saw the connection: ${events.map(text).join("; ")}`,
      );
    });

    await t.step("the ring is the lxc programs' one, also after it was made again", async () => {
      const mapId = async (path: string) =>
        (JSON.parse(
          (await execCommand(["bpftool", "-j", "map", "show", "pinned", path])).stdout,
        ) as {
          id: number;
        }).id;
      const sockOpsMaps = async () => {
        const out = await execCommand(["bpftool", "-j", "cgroup", "show", cg.path]);
        const rows = JSON.parse(out.stdout) as { id: number; attach_type: string }[];
        const ops = rows.filter((r) => r.attach_type === "cgroup_sock_ops");
        assert.equal(ops.length, 1, `one sockops program: ${out.stdout}`);
        const prog = await execCommand(["bpftool", "-j", "prog", "show", "id", String(ops[0]!.id)]);
        return (JSON.parse(prog.stdout) as { map_ids: number[] }).map_ids;
      };
      const ring = `${n.bpffs}/maps/cilia_events`;
      assert.ok((await sockOpsMaps()).includes(await mapId(ring)), "the pinned ring");
      await n.stopAgent();
      await Deno.remove(ring); // as an upgrade that changes the ring's type does
      await n.startAgent();
      const now = await mapId(ring);
      assert.ok((await sockOpsMaps()).includes(now), "the new ring");
      const shown = JSON.parse(
        (await execCommand(["bpftool", "-j", "cgroup", "show", cg.path])).stdout,
      ) as { attach_type: string; name: string }[];
      assert.deepEqual(
        shown.map((p) => [p.attach_type, p.name]).sort(),
        Object.entries(SOCK_PROGS).sort(),
        "one program per hook: the ones of the old ring detached",
      );
      const { result: c, events } = await eventsOf(() => connect("tcp", VIP, "80"));
      assert.equal(events.filter(isSock).length, 1, `seen: ${events.map(text).join("; ")}`);
      assert.equal(events.find(isSock)!.ifindex, c.cookie % 2 ** 32);
    });
  } finally {
    await killAll(servers);
  }
});
