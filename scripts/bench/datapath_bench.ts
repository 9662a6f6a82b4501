// `deno task bench datapath [--quick]`: pod-to-pod TCP throughput (iperf3) and 1-byte request/
// response rate through one node, in one run: over a bare veth pair without cilia, through cilia
// without policy, with the engine's policy over 10 and over 10,000 identities, and through 1,000
// and 10,000 iptables rules doing the same filtering; ratios against the bare veth. Then CNI ADD
// latency (p50/p99) with a warm agent, once the CNI plugin exists. Needs root. Progress goes to
// stderr, the table to stdout; every netns, mount and process is removed at the end.
import { parseArgs } from "node:util";
import { BenchTopology } from "./_datapath_topology.ts";

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

export interface CniFigures {
  p50Ms: number;
  p99Ms: number;
  samples: number;
}

/**
 * CNI ADD latency against a warm agent: undefined figures with the reason while the plugin (or
 * the way to drive it) does not exist. To fill in: start bin/cilia-agent for a lab node, run one
 * ADD+DEL to warm it, then time `samples` ADDs of fresh pod netns (CNI_COMMAND=ADD, stdin = the
 * network config), deleting each afterwards.
 */
export async function measureCniAdd(
  _o: { samples: number },
): Promise<CniFigures | { unavailable: string }> {
  const root = new URL("../../", import.meta.url).pathname;
  const exists = (p: string) => Deno.stat(root + p).then(() => true, () => false);
  if (!(await exists("bin/cilia-cni"))) {
    return { unavailable: "bin/cilia-cni does not exist yet (the CNI plugin is being built)" };
  }
  if (!(await exists("bin/cilia-agent"))) {
    return { unavailable: "bin/cilia-agent does not exist yet" };
  }
  return {
    unavailable: "bin/cilia-cni exists, but this bench does not drive it yet (measureCniAdd)",
  };
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
    for (const n of [10, 10_000]) {
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
  const cni = await measureCniAdd({ samples: quick ? 20 : 200 });
  console.log(
    "unavailable" in cni
      ? `CNI ADD latency (warm agent): not available yet: ${cni.unavailable}`
      : `CNI ADD latency (warm agent): p50 ${cni.p50Ms.toFixed(1)} ms, p99 ${
        cni.p99Ms.toFixed(1)
      } ms (${cni.samples} samples)`,
  );
  progress(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

if (import.meta.main) await main(Deno.args);
