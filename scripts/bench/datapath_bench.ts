// `deno task bench datapath [--quick]`: pod-to-pod TCP throughput (iperf3) and 1-byte request/
// response rate through one node, in one run: over a bare veth pair without cilia, through cilia
// without policy, with the engine's policy over 10 and over 10,000 identities, and through 1,000
// and 10,000 iptables rules doing the same filtering; ratios against the bare veth. Then CNI ADD
// latency (p50/p99) through bin/cilia-cni with a warm agent. Needs root. Progress goes to
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
 * CNI ADD latency against a warm agent: bin/cilia-agent (kernel datapath, Deno KV) runs in a lab
 * node with the three-tier example policy in force; after one ADD+DEL to warm it, `samples` ADDs
 * of fresh pod netns are timed from the plugin's exec to its exit (what a runtime waits for),
 * each followed by DEL. Unavailable (with the reason) without root or the plugin.
 */
export async function measureCniAdd(
  o: { samples: number },
): Promise<CniFigures | { unavailable: string }> {
  const root = new URL("../../", import.meta.url).pathname;
  const exists = (p: string) => Deno.stat(root + p).then(() => true, () => false);
  if (!(await exists("bin/cilia-cni"))) return { unavailable: "bin/cilia-cni does not exist" };
  if (!(await exists("bin/cilia-agent"))) return { unavailable: "bin/cilia-agent does not exist" };
  if (Deno.uid() !== 0) return { unavailable: "needs root (netns, bpffs)" };
  const { CiliaNode } = await import("../../tests/cni/_fixture.ts");
  const n = await CiliaNode.create();
  const ms: number[] = [];
  try {
    await n.policy(await Deno.readTextFile(`${root}examples/policies/three-tier.yaml`));
    await n.delPod(await n.addPod("warm", { app: "frontend" }));
    const apps = ["frontend", "backend", "db"];
    for (let i = 0; i < o.samples; i++) {
      const netns = `${n.lab.prefix}b${i}`;
      const ns = await new Deno.Command("ip", { args: ["netns", "add", netns] }).output();
      if (ns.code !== 0) throw new Error(`Cannot create netns "${netns}"`);
      const call = { containerId: `bench-${i}`, netns: `/run/netns/${netns}` };
      const r = await n.cni("ADD", {
        ...call,
        args: `IgnoreUnknown=1;K8S_POD_NAME=b${i};CILIA_LABELS=app=${apps[i % 3]}`,
      });
      if (r.code !== 0) throw new Error(`CNI ADD failed: ${r.stdout}`);
      ms.push(r.ms);
      await n.cni("DEL", call);
      await new Deno.Command("ip", { args: ["netns", "del", netns] }).output();
    }
  } finally {
    await n.close();
  }
  const sorted = [...ms].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
  return { p50Ms: at(0.5), p99Ms: at(0.99), samples: sorted.length };
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
      ? `CNI ADD latency (warm agent): not available: ${cni.unavailable}`
      : `CNI ADD latency (warm agent): p50 ${cni.p50Ms.toFixed(1)} ms, p99 ${
        cni.p99Ms.toFixed(1)
      } ms (${cni.samples} samples)`,
  );
  progress(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

if (import.meta.main) await main(Deno.args);
