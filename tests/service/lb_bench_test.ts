// `bench lb`'s own code paths (scripts/bench/lb_bench.ts, _lb_lab.ts, _lb_services.ts,
// _connrate.ts): the kube-proxy rules it measures against are kube-proxy's shape, wrk's and the
// lean connection tool's reports are read right (errors counted), the targets are judged on
// per-round ratios; and with root, one short round of a small lab: wrk and the lean tool through
// kube-proxy's DNAT and through cilia's service really take those paths.
import assert from "node:assert/strict";
import { dumpConntrack } from "../../agent/datapath/conntrack_gc.ts";
import { DIR_EGRESS, DIR_SERVICE } from "../../agent/datapath/codecs.ts";
import { LbLab, parseWrk, statTicks } from "../../scripts/bench/_lb_lab.ts";
import { parseConnrate } from "../../scripts/bench/_connrate.ts";
import { benchServices, kubeProxyRules } from "../../scripts/bench/_lb_services.ts";
import {
  emptySamples,
  main,
  median,
  roundRatio,
  S,
  type Samples,
  verdicts,
} from "../../scripts/bench/lb_bench.ts";
import { needsRoot } from "../helpers/root.ts";

Deno.test("kubeProxyRules() writes kube-proxy's chains for every service, nothing of its own", () => {
  const { specs, vip } = benchServices(3, "10.200.1.12");
  assert.equal(vip, "10.96.0.2", "the measured service is the middle one");
  const rules = kubeProxyRules(specs).split("\n");
  const svc = rules.filter((r) => r.startsWith("-A KUBE-SERVICES"));
  assert.equal(svc.length, 4, "one rule per service, then KUBE-NODEPORTS");
  assert.match(svc[3]!, /--dst-type LOCAL -j KUBE-NODEPORTS$/);
  assert.match(
    svc[1]!,
    /^-A KUBE-SERVICES -d 10\.96\.0\.2\/32 -p tcp -m tcp --dport 8080 .* -j KUBE-SVC-/,
  );
  // Two backends: the first taken with probability 1/2, the second for the rest.
  const jumps = (i: number) =>
    rules.filter((r) =>
      r.startsWith(`-A ${/-j (KUBE-SVC-\S+)/.exec(svc[i]!)![1]} `) && r.includes("KUBE-SEP-")
    );
  assert.deepEqual(
    jumps(0).map((r) => /--probability (\S+)/.exec(r)?.[1] ?? "rest"),
    ["0.50000000000", "rest"],
  );
  assert.equal(jumps(1).length, 1, "the measured service has its one real backend");
  assert.ok(rules.some((r) => / -j DNAT --to-destination 10\.200\.1\.12:8080$/.test(r)));
  // The lean connection tool's port: the next rule, the same address, the same server.
  assert.match(svc[2]!, /^-A KUBE-SERVICES -d 10\.96\.0\.2\/32 -p tcp -m tcp --dport 9080 /);
  assert.equal(jumps(2).length, 1);
  assert.ok(rules.some((r) => / -j DNAT --to-destination 10\.200\.1\.12:9080$/.test(r)));
  assert.throws(() => benchServices(1, "10.200.1.12"), /Invalid service count 1/);
  assert.ok(
    rules.every((r) => !/ -j (ACCEPT|RETURN)$/.test(r) || r.startsWith("-A KUBE-POSTROUTING")),
  );
  assert.deepEqual([rules[0], rules.at(-2)], ["*nat", "COMMIT"]);
});

Deno.test("parseWrk() reads the rate and counts socket errors and non-2xx answers", () => {
  const ok = `Running 1s test @ http://10.200.1.12:8081/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.56ms  320.11us   4.10ms   80.00%
    Req/Sec    10.12k     1.01k   11.20k    70.00%
  10104 requests in 1.00s, 0.91MB read
Requests/sec:  10093.21
Transfer/sec:      0.91MB
`;
  assert.deepEqual(parseWrk(ok), { perSec: 10093.21, requests: 10104, errors: 0 });
  const bad = ok.replace(
    "Requests/sec",
    "  Socket errors: connect 3, read 4, write 0, timeout 1\n  Non-2xx or 3xx responses: 2\nRequests/sec",
  );
  assert.equal(parseWrk(bad).errors, 10);
  assert.throws(
    () => parseWrk("unable to connect to 10.0.0.1:80 Connection refused"),
    /Requests\/sec/,
  );
});

Deno.test("parseConnrate() reads the rate of completed connections and refuses other output", () => {
  const r = parseConnrate(
    '{"connections":12000,"errors":3,"seconds":1.500000,"cpuSeconds":0.800000}\n',
  );
  assert.deepEqual(r, { perSec: 8000, connections: 12000, errors: 3, cpuSeconds: 0.8 });
  assert.throws(() => parseConnrate("_connrate: bind: Address in use\n"), /No report/);
  assert.throws(
    () => parseConnrate('{"connections":1,"errors":0,"seconds":0,"cpuSeconds":0}'),
    /Invalid connrate report/,
  );
});

Deno.test("statTicks() reads utime+stime and cutime+cstime past a command name with spaces", () => {
  const line = "42 (wrk ) x) S 1 42 42 0 -1 4194304 98 0 0 0 7 5 30 11 20 0 1 0 4397018";
  assert.equal(statTicks(line, 14), 12);
  assert.equal(statTicks(line, 16), 41);
});

Deno.test("verdicts() judge each target on the median of per-round ratios", () => {
  // The lean tool's rate is judged; HTTP connections (here at 0.8 of it) are shown only.
  const x = (lean: number[], rr: number[]): Samples => ({
    ...emptySamples(),
    lean,
    conn: lean.map((c) => c * 0.8),
    rr,
    // CPU cost per connection / request: the rate's inverse.
    cpuLean: lean.map((c) => 1e6 / c),
    cpuConn: lean.map((c) => 1e6 / c / 0.8),
    cpuRr: rr.map((r) => 1e6 / r),
  });
  const s = new Map<string, Samples>([
    // Round 2 is slow for every setup alike: per-round ratios cancel it.
    [S.bare, x([10_000, 5_000, 10_000], [40_000, 20_000, 40_000])],
    [S.ciliaDirect, x([9_000, 4_500, 9_000], [36_000, 18_000, 36_000])],
    [S.sock10, x([8_800, 4_400, 8_800], [35_000, 17_500, 35_000])],
    [S.sock10k, x([8_600, 4_300, 8_700], [34_000, 17_000, 34_000])],
    // The tc path: shown, not judged.
    [S.cil10, x([8_000, 4_000, 8_000], [33_000, 16_500, 33_000])],
    [S.cil10k, x([7_000, 3_500, 7_000], [32_000, 16_000, 32_000])],
    [S.ipt10, x([9_500, 4_700, 9_500], [38_000, 19_000, 38_000])],
    [S.ipt10k, x([3_000, 1_500, 3_000], [38_000, 19_000, 38_000])],
  ]);
  const v = verdicts(s);
  const at = (re: RegExp) => v.find((l) => re.test(l));
  assert.match(v[0]!, /10,000 vs 10 services, new conn\/s: 0\.98× .* met /);
  assert.match(v[0]!, /\(by CPU cost: 0\.98×\)$/);
  assert.match(v[2]!, /10,000 vs 10 services, HTTP conn\/s: 0\.98× {3}\(shown, no target\)/);
  assert.ok(at(/vs direct \(cilia attached\), new conn\/s: 0\.96× .* met /), v.join("\n"));
  assert.ok(at(/vs direct \(bare veth\), new conn\/s: 0\.86× .* MISSED /), v.join("\n"));
  assert.ok(at(/iptables at 10,000 services, new conn\/s: 2\.87× {3}target ≥ 3× {3}MISSED /));
  assert.ok(at(/^bound: a datapath that cost nothing would be 3\.33× iptables .* new conn\/s/));
  assert.ok(at(/^bound: .* 3\.33× iptables at 10,000 services in HTTP conn\/s/));
  assert.match(v[0]!, /^socket LB 10,000 vs 10 services/, "judged on the socket LB");
  assert.ok(
    at(/^tc path vs iptables at 10,000 services, new conn\/s: 2\.33× {3}\(shown, no target\)/),
  );
  assert.ok(at(/^tc path 10,000 vs 10 services, new conn\/s: 0\.88× {3}\(shown/), v.join("\n"));
  assert.equal(v.filter((l) => / target ≥ /.test(l)).length, 7, "7 targets judged");
  assert.equal(roundRatio([2, 1, 9], [1, 1, 3]), 2);
  assert.deepEqual([median([3, 1, 2]), median([4, 1, 2, 3])], [2, 2.5]);
  assert.throws(
    () => verdicts(new Map()),
    /No samples for setup "cilia \(socket LB\): 10 services"/,
  );
});

Deno.test("bench lb refuses bad --rounds and --seconds with the flag's value", async () => {
  await assert.rejects(() => main(["--rounds", "0"]), /Invalid --rounds "0"/);
  await assert.rejects(() => main(["--seconds", "0.5"]), /Invalid --seconds "0\.5"/);
});

Deno.test({
  name: "bench lb: one round through kube-proxy's DNAT and cilia's service takes those paths",
  ...needsRoot(["ip", "tc", "bpftool", "clang", "iptables-restore", "wrk", "haproxy", "curl"]),
  async fn() {
    await using lab = await LbLab.create([
      { name: S.bare, kind: "direct", services: 0 },
      { name: S.ipt10, kind: "iptables", services: 10 },
      { name: S.cil10, kind: "cilia", services: 10 },
      { name: S.sock10, kind: "cilia", services: 10, sock: true, sameNodeAs: S.cil10 },
    ]);
    const [bare, ipt, cil, sock] = lab.setups as [
      typeof lab.setups[0],
      typeof lab.setups[0],
      typeof lab.setups[0],
      typeof lab.setups[0],
    ];
    assert.ok(sock.cgroup && sock.target === cil.target, "socket LB: the same VIP, a cgroup");
    // Packets that passed a service conntrack entry (lb.h's per-packet path) so far.
    const servicePackets = () =>
      dumpConntrack(cil.sink!.datapath.pins.maps.cilia_ct)
        .filter((e) => Number(e.key.dir) === DIR_SERVICE)
        .reduce((n, e) => n + Number(e.value.packets), 0);
    let beforeSock = 0;
    assert.equal(bare.target, bare.server.ipv4);
    assert.equal(ipt.target, "10.96.0.5");
    for (const s of lab.setups) {
      if (s === sock) beforeSock = servicePackets();
      const crr = await lab.wrk(s, { seconds: 1, close: true, connections: 4 });
      const rr = await lab.wrk(s, { seconds: 1, close: false, connections: 4 });
      assert.ok(
        crr.perSec > 100 && rr.perSec > 100,
        `${s.name}: ${crr.perSec} conn/s, ${rr.perSec} RR/s`,
      );
      assert.ok(crr.cpuSeconds! > 0 && rr.cpuSeconds! > 0, `${s.name}: no CPU time measured`);
      const lean = await lab.connrate(s, { seconds: 1, connections: 4 });
      assert.ok(lean.perSec > 100 && lean.cpuSeconds > 0, `${s.name}: ${JSON.stringify(lean)}`);
      if (s === ipt) {
        // Every new connection was DNATed by the measured service's KUBE-SEP rule.
        const nat = await lab.lab.run(s.node.netns, [
          "iptables",
          "-t",
          "nat",
          "-L",
          "-v",
          "-x",
          "-n",
        ]);
        const dnat = nat.split("\n").find((l) =>
          l.includes(`DNAT`) && l.includes(`to:${s.server.ipv4}:8080`)
        );
        assert.ok(dnat, nat);
        const pkts = Number(dnat.trim().split(/\s+/)[0]);
        assert.ok(pkts >= crr.requests, `${pkts} DNATed connections for ${crr.requests} requests`);
        const lean9080 = nat.split("\n").find((l) =>
          l.includes(`DNAT`) && l.includes(`to:${s.server.ipv4}:9080`)
        );
        const leanPkts = Number(lean9080?.trim().split(/\s+/)[0]);
        assert.ok(leanPkts >= lean.connections, `${leanPkts} for ${lean.connections}`);
      }
      if (s === cil) {
        // cilia's service conntrack entries: client → VIP, translated to the server.
        // One service entry per client port, and the client's egress entry to the backend
        // from that port carries the service id for the replies (no reverse DIR_SERVICE
        // entry: lb.h). The client takes its ports again within a round (tens of thousands
        // of connections), and a new connection on a reused port finds the same entries, so
        // entries are counted by port and packets by connection.
        const all = dumpConntrack(s.sink!.datapath.pins.maps.cilia_ct);
        const svc = all.filter((e) => Number(e.key.dir) === DIR_SERVICE);
        const fwd = svc.filter((e) => Number(e.value.rev_nat) !== 0);
        assert.equal(svc.length, fwd.length, "no reverse DIR_SERVICE entries");
        const clientEgressNat = all.filter((e) =>
          Number(e.key.dir) === DIR_EGRESS && Number(e.key.ep_id) === 1 &&
          Number(e.value.rev_nat) !== 0
        );
        // The service's port is its backends' (ORIGIN_PORT, CONN_PORT).
        const clientPorts = (es: typeof all) =>
          new Set(es.map((e) => `${e.key["tuple.sport"]}→${e.key["tuple.dport"]}`));
        const ports = clientPorts(fwd);
        assert.ok(ports.size > 1000, `${ports.size} client ports in ${fwd.length} service entries`);
        // Each service entry's client port has its egress entry to the backend, and only those.
        // A closed connection's entries live 10 s after their last packet (conntrack.h, 5.) and
        // the sink's GC deletes expired ones; the two entries of a connection see different last
        // packets, so on a slow run a few of either kind may be gone: at most 1 in 1,000.
        const egress = clientPorts(clientEgressNat);
        const missing = [...ports].filter((p) => !egress.has(p));
        const extra = [...egress].filter((p) => !ports.has(p));
        assert.ok(
          missing.length + extra.length <= ports.size / 1000,
          `${missing.length} service ports without an egress entry (${missing.slice(0, 5)}), ` +
            `${extra.length} egress entries without a service entry (${extra.slice(0, 5)})`,
        );
        // Each connection's SYN, ACK and request passed its service entry at least.
        const packets = fwd.reduce((n, e) => n + Number(e.value.packets), 0);
        const conns = crr.requests + lean.connections;
        assert.ok(packets >= 3 * conns, `${packets} service packets for ${conns} connections`);
      }
    }
    // The socket LB translated at connect: its connections passed no service entry of lb.h.
    const afterSock = servicePackets();
    assert.ok(afterSock <= beforeSock, `service packets ${beforeSock} → ${afterSock}`);
    // The switch is machine-wide: another job may flip it (or enable stats through a
    // BPF_ENABLE_STATS fd, which the sysctl does not show), so only a steady "on" is judged.
    const statsOn = async () =>
      (await Deno.readTextFile("/proc/sys/kernel/bpf_stats_enabled")).trim() === "1";
    const on0 = await statsOn(), ns = await lab.bpfRunNs(cil), on1 = await statsOn();
    if (on0 && on1) assert.ok(ns !== undefined, `bpf_stats_enabled=1, run_time_ns ${ns}`);
    assert.equal(await lab.bpfRunNs(ipt), undefined, "no cilia programs on the iptables node");
  },
});

Deno.test({
  name: "LbLab.create() refuses a setup that shares a node not created before it",
  ...needsRoot(["ip"]),
  async fn() {
    await assert.rejects(
      () => LbLab.create([{ name: "d", kind: "cilia", services: 0, sameNodeAs: "nope" }]),
      /Setup "d": no earlier setup "nope" to share/,
    );
  },
});
