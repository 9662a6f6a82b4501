// `deno task bench datapath [--quick]`: pod-to-pod TCP throughput (iperf3) and 1-byte request/
// response rate through one node, in one run: over a bare veth pair without cilia, through cilia
// without policy, with the engine's policy over 10, 10,000 and 100,000 identities (and ipcache entries), and through 1,000
// and 10,000 iptables rules doing the same filtering; ratios against the bare veth. Then CNI ADD
// latency through bin/cilia-cni with a warm agent (cni_bench.ts, also `bench cni`). Needs root.
// Progress goes to stderr, the table to stdout; every netns, mount and process is removed.
import { parseArgs } from "node:util";
import { BenchTopology } from "./_datapath_topology.ts";
import { measureCniAdd, report as cniReport } from "./cni_bench.ts";

interface Row {
  setup: string;
  gbps: number;
  rr: number;
  note?: string;
}

const progress = (msg: string) => console.error(`bench datapath: ${msg}`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function measure(
  t: BenchTopology,
  setup: string,
  o: { seconds: number; rrSeconds: number; reps: number; note?: string },
): Promise<Row> {
  const gbps: number[] = [], rr: number[] = [];
  for (let i = 0; i < o.reps; i++) {
    gbps.push(await t.throughput(o.seconds));
    rr.push(await t.requestResponse(o.rrSeconds));
  }
  const row = { setup, gbps: median(gbps), rr: median(rr), ...(o.note ? { note: o.note } : {}) };
  progress(`${setup}: ${row.gbps.toFixed(2)} Gbit/s, ${Math.round(row.rr)} RR/s`);
  return row;
}

function table(rows: Row[]): string {
  const base = rows[0]!;
  const head = ["setup", "Gbit/s", "vs bare", "RR/s", "vs bare", ""];
  const body = rows.map((r) => [
    r.setup,
    r.gbps.toFixed(2),
    (r.gbps / base.gbps).toFixed(2),
    String(Math.round(r.rr)),
    (r.rr / base.rr).toFixed(2),
    r.note ?? "",
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => i === 0 || i === 5 ? c.padEnd(w[i]!) : c.padStart(w[i]!)).join("  ")
      .trimEnd();
  return [line(head), line(w.map((n) => "-".repeat(n))), ...body.map(line)].join("\n");
}

/** Issue #15: the 100k-identity row against the 10-identity row (target ≥ 0.95× on both). */
function scaleLine(rows: Row[]): string {
  const small = rows.find((r) => r.setup.endsWith(" 10 identities"));
  const big = rows.find((r) => r.setup.endsWith(" 100,000 identities"));
  if (!small || !big) return "100k-identity row: not measured";
  const g = big.gbps / small.gbps, rr = big.rr / small.rr;
  const ok = g >= 0.95 && rr >= 0.95;
  return `100k identities vs 10: throughput ${g.toFixed(2)}×, RR ${rr.toFixed(2)}×` +
    `   target ≥ 0.95× both   ${ok ? "PASS" : "MISSED"}`;
}

export async function main(args: string[]): Promise<void> {
  const flags = parseArgs({ args, options: { quick: { type: "boolean", default: false } } });
  const quick = flags.values.quick;
  const o = quick ? { seconds: 1, rrSeconds: 0.5, reps: 1 } : { seconds: 3, rrSeconds: 2, reps: 3 };
  if (Deno.uid() !== 0) throw new Error("The datapath bench needs root (netns, bpffs, tc)");
  const rows: Row[] = [];
  const started = performance.now();
  progress(`building the topology (${quick ? "quick" : "full"} run)`);
  const t = await BenchTopology.create();
  try {
    await measure(t, "warm-up (bare veth, not reported)", { ...o, reps: 1 });
    rows.push(await measure(t, "bare veth (no cilia)", o));
    await t.attachCilia();
    rows.push(await measure(t, "cilia, no policy", o));
    for (const n of [10, 10_000, 100_000]) {
      const p = await t.applyPolicy(n);
      const note = `${p.keys} policy keys (${p.ranges} ranges); engine ${
        Math.round(p.computeMs)
      } ms, maps ${Math.round(p.writeMs)} ms`;
      progress(`policy over ${n} identities: ${note}`);
      rows.push(
        await measure(t, `cilia, policy, ${n.toLocaleString("en")} identities`, {
          ...o,
          note,
        }),
      );
    }
    await t.detachCilia();
    for (const n of [1_000, 10_000]) {
      const count = await t.iptables(n);
      progress(`iptables: ${count} rules in FORWARD`);
      rows.push(await measure(t, `iptables, ${n.toLocaleString("en")} rules`, o));
    }
  } finally {
    await t.close();
  }
  console.log(table(rows));
  console.log(scaleLine(rows));
  console.log(cniReport(await measureCniAdd({ samples: quick ? 20 : 200 })));
  progress(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

if (import.meta.main) await main(Deno.args);
