// `deno task bench lb [--quick]`: a ClusterIP service in front of one backend pod, in one run:
// new TCP connections per second (connect, 1-byte round trip, close) and 1-byte request/response
// rate through the service with 10 and with 10,000 services installed — through kube-proxy's
// iptables rules (nat KUBE-SERVICES → KUBE-SVC-* → KUBE-SEP-* with statistic random
// probabilities, as kube-proxy writes them, in the node netns; the measured service in the middle
// of KUBE-SERVICES) and through cilia (lb.h, written by the agent's KernelSink) — against a
// direct connection to the backend measured rep by rep alongside (for iptables it skips the
// service chains; for cilia the programs are attached); plus the time to install 10,000
// services both ways. Every figure is the median of 5 (1 with --quick).
// Targets (issue #13): cilia flat from 10 to 10,000 services (≥ 0.95×), ≥ 0.9× direct, and ≥ 3×
// iptables' connection rate at 10,000 services. Needs root. Progress on stderr, table on stdout.
import { parseArgs } from "node:util";
import { BenchTopology, RR_PORT } from "./_datapath_topology.ts";
import type { ServiceSpec } from "../../agent/service/spec.ts";

const progress = (msg: string) => console.error(`bench lb: ${msg}`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

interface Row {
  setup: string;
  conns: number;
  rr: number;
  /** Median of the per-rep ratios against the direct path measured next to it. */
  connsVsDirect: number;
  rrVsDirect: number;
  note?: string;
}

/** The i-th service's address: 10.96.0.0/16 from .1 (i < 65,000). */
const vipOf = (i: number) => `10.96.${(i + 1) >> 8}.${(i + 1) & 0xff}`;
/** Two decoy backends per other service (never reached). */
const decoy = (i: number, k: number) => `10.${210 + k}.${i >> 8}.${i & 0xff}`;

/** n services; the measured one (index n/2, in the middle) has the real server as backend. */
function services(n: number, server: string): { specs: ServiceSpec[]; vip: string } {
  const mid = Math.floor(n / 2);
  const specs = Array.from({ length: n }, (_, i): ServiceSpec => ({
    id: i + 1,
    type: "ClusterIP",
    frontend: { ip: vipOf(i), port: RR_PORT, protocol: "TCP" },
    algorithm: "random",
    backends: i === mid
      ? [{ ip: server, port: RR_PORT, weight: 1 }]
      : [0, 1].map((k) => ({ ip: decoy(i, k), port: RR_PORT, weight: 1 })),
  }));
  return { specs, vip: vipOf(mid) };
}

const chainId = (kind: string, i: number, k = 0) =>
  `KUBE-${kind}-${(((i + 1) * 2654435761 + k * 40503) >>> 0).toString(16).padStart(8, "0")}` +
  `${(i * 7 + k).toString(36).toUpperCase().padStart(8, "X")}`;

/**
 * kube-proxy's iptables-restore input (nat table) for the services. One rule is the bench's own:
 * new connections straight to `direct` (the backend) skip the service chains, so the direct path
 * measured next to each setup stays the baseline (on a kube-proxy node every new connection, a
 * direct one too, walks KUBE-SERVICES).
 */
export function kubeProxyRules(specs: readonly ServiceSpec[], direct: string): string {
  const chains = [":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]"];
  const rules = [
    `-A PREROUTING -d ${direct}/32 -m comment --comment "bench: the direct path" -j ACCEPT`,
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
  ];
  specs.forEach((s, i) => {
    const svc = chainId("SVC", i), f = s.frontend, name = `bench/svc-${i}:rr`;
    chains.push(`:${svc} - [0:0]`);
    rules.push(
      `-A KUBE-SERVICES -d ${f.ip}/32 -p tcp -m comment --comment "${name} cluster IP" ` +
        `-m tcp --dport ${f.port} -j ${svc}`,
    );
    s.backends.forEach((b, k) => {
      const sep = chainId("SEP", i, k), left = s.backends.length - k;
      chains.push(`:${sep} - [0:0]`);
      const stat = left > 1
        ? `-m statistic --mode random --probability ${(1 / left).toFixed(11)} `
        : "";
      rules.push(
        `-A ${svc} -m comment --comment "${name} -> ${b.ip}:${b.port}" ${stat}-j ${sep}`,
        `-A ${sep} -s ${b.ip}/32 -m comment --comment "${name}" -j KUBE-MARK-MASQ`,
        `-A ${sep} -p tcp -m comment --comment "${name}" -m tcp -j DNAT --to-destination ` +
          `${b.ip}:${b.port}`,
      );
    });
  });
  return ["*nat", ...chains, ...rules, "COMMIT", ""].join("\n");
}

/**
 * The service (host) and the direct path, alternated rep by rep so both see the same machine
 * load: each figure is the median of its reps, and `vs direct` the median of the per-rep ratios.
 */
async function measure(
  t: BenchTopology,
  setup: string,
  host: string,
  o: { seconds: number; reps: number; note?: string },
): Promise<Row> {
  const conns: number[] = [], rr: number[] = [], cRatio: number[] = [], rRatio: number[] = [];
  for (let i = 0; i < o.reps; i++) {
    const dc = await t.connectionRate(o.seconds), c = await t.connectionRate(o.seconds, host);
    const dr = await t.requestResponse(o.seconds), r = await t.requestResponse(o.seconds, host);
    conns.push(c), rr.push(r), cRatio.push(c / dc), rRatio.push(r / dr);
  }
  const row = {
    setup,
    conns: median(conns),
    rr: median(rr),
    connsVsDirect: median(cRatio),
    rrVsDirect: median(rRatio),
    ...(o.note ? { note: o.note } : {}),
  };
  const each = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(" ");
  progress(
    `${setup}: ${Math.round(row.conns)} conn/s (${row.connsVsDirect.toFixed(2)}× direct: ` +
      `${each(cRatio)}), ${Math.round(row.rr)} RR/s (${row.rrVsDirect.toFixed(2)}× direct: ` +
      `${each(rRatio)})`,
  );
  return row;
}

function table(rows: Row[]): string {
  const head = ["setup", "conn/s", "vs direct", "RR/s", "vs direct", ""];
  const body = rows.map((r) => [
    r.setup,
    String(Math.round(r.conns)),
    r.connsVsDirect.toFixed(2),
    String(Math.round(r.rr)),
    r.rrVsDirect.toFixed(2),
    r.note ?? "",
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => i === 0 || i === 5 ? c.padEnd(w[i]!) : c.padStart(w[i]!)).join("  ")
      .trimEnd();
  return [line(head), line(w.map((n) => "-".repeat(n))), ...body.map(line)].join("\n");
}

function verdicts(rows: Row[], direct: { bare: Row; cilia: Row }): string[] {
  const get = (s: string) => rows.find((r) => r.setup === s)!;
  const c10 = get("cilia: 10 services"), c10k = get("cilia: 10,000 services");
  const i10k = get("iptables: 10,000 services");
  const check = (what: string, v: number, target: number) =>
    `${what}: ${v.toFixed(2)}×   target ≥ ${target}×   ${v >= target ? "PASS" : "MISSED"}`;
  // Flatness and the iptables comparison on figures normalised by the direct path measured
  // alongside, so that load on the machine between the setups cancels out.
  const ciliaDirect = direct.cilia.conns / direct.bare.conns;
  return [
    check("cilia 10,000 vs 10 services, conn/s", c10k.connsVsDirect / c10.connsVsDirect, 0.95),
    check("cilia 10,000 vs 10 services, RR/s", c10k.rrVsDirect / c10.rrVsDirect, 0.95),
    check("cilia 10,000 services vs direct, conn/s", c10k.connsVsDirect, 0.9),
    check("cilia 10,000 services vs direct, RR/s", c10k.rrVsDirect, 0.9),
    check(
      "cilia vs iptables at 10,000 services, conn/s (each vs the bare veth)",
      (c10k.connsVsDirect * ciliaDirect) / i10k.connsVsDirect,
      3,
    ),
    `cilia vs iptables at 10,000 services, raw conn/s: ${(c10k.conns / i10k.conns).toFixed(2)}×, ` +
    `RR/s: ${
      (c10k.rr / i10k.rr).toFixed(2)
    }× (iptables translates only a connection's first packet)`,
  ];
}

export async function main(args: string[]): Promise<void> {
  const flags = parseArgs({ args, options: { quick: { type: "boolean", default: false } } });
  const o = flags.values.quick ? { seconds: 0.5, reps: 1 } : { seconds: 1.5, reps: 5 };
  if (Deno.uid() !== 0) throw new Error("The lb bench needs root (netns, bpffs, tc, iptables)");
  const rows: Row[] = [];
  const started = performance.now();
  progress(`building the topology (${flags.values.quick ? "quick" : "full"} run)`);
  const t = await BenchTopology.create();
  try {
    // Many short connections from one address: reuse TIME_WAIT ports as clients do under load.
    await t.lab.run(t.client.netns, [
      "sysctl",
      "-qw",
      "net.ipv4.tcp_tw_reuse=1",
      "net.ipv4.ip_local_port_range=10000 65000",
    ]);
    const server = t.server.ipv4;
    await measure(t, "warm-up (not reported)", server, { ...o, reps: 1 });
    const bare = await measure(t, "direct to the backend (bare veth)", server, o);
    rows.push(bare);
    for (const n of [10, 10_000]) {
      const { specs, vip } = services(n, server);
      const text = kubeProxyRules(specs, server);
      const t0 = performance.now();
      const r = await t.lab.exec(t.node.netns, ["iptables-restore"], text);
      if (r.code !== 0) throw new Error(`iptables-restore exited with ${r.code}: ${r.stderr}`);
      const ms = performance.now() - t0;
      const note = `iptables-restore ${Math.round(ms)} ms (${text.split("\n").length} lines)`;
      progress(`iptables, ${n} services: ${note}`);
      rows.push(
        await measure(t, `iptables: ${n.toLocaleString("en")} services`, vip, { ...o, note }),
      );
    }
    await t.lab.exec(t.node.netns, ["iptables-restore"], "*nat\nCOMMIT\n");
    await t.lab.run(t.node.netns, ["iptables", "-t", "nat", "-X"]);
    await t.attachCilia();
    const cilia = await measure(t, "direct to the backend (cilia attached)", server, o);
    rows.push(cilia);
    for (const n of [10, 10_000]) {
      const { specs, vip } = services(n, server);
      const t0 = performance.now();
      await t.applyServices(specs);
      const ms = performance.now() - t0;
      const note = `installed in ${Math.round(ms)} ms (KernelSink.applyServices)`;
      progress(`cilia, ${n} services: ${note}`);
      rows.push(await measure(t, `cilia: ${n.toLocaleString("en")} services`, vip, { ...o, note }));
    }
    console.log(table(rows));
    for (const v of verdicts(rows, { bare, cilia })) console.log(v);
  } finally {
    await t.close();
  }
  progress(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

if (import.meta.main) await main(Deno.args);
