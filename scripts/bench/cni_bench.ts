// `deno task bench cni [--samples N] [--quick]`: CNI ADD latency as a runtime feels it, from the
// exec of bin/cilia-cni until the plugin exits, against a warm agent (kernel datapath, Deno KV,
// the three-tier example policy in force) in a lab node. Each ADD gets a fresh pod netns and is
// followed by DEL. Prints p50/p99 of the total next to the figures issue 8 started from, and the
// breakdown from the plugin's CILIA_CNI_TIMING marks and the agent's Server-Timing header: process
// start (exec, Deno, module load), plugin (stdin, validation), request (the socket round trip
// without the agent's time), agent (body, validation, addresses, veth, endpoint, policy, programs)
// and exit. Needs root; every netns, mount and process is removed at the end.
import { parseArgs } from "node:util";

/** The figures issue 8 measured before the plugin's start was made cheap. */
export const BEFORE = { p50Ms: 141, p99Ms: 166 };
/** The goal of issue 8. */
export const GOAL = { p50Ms: 100, p99Ms: 150 };

const PARTS = ["start", "plugin", "request", "agent", "exit"] as const;
type Part = typeof PARTS[number];

export interface CniFigures {
  samples: number;
  totalMs: number[];
  parts: Record<Part, number[]>;
}

interface PluginMarks {
  startedAt: number;
  requests: { path: string; sentAt: number; answeredAt: number; server: { agent?: number } }[];
  doneAt: number;
}

const progress = (msg: string) => console.error(`bench cni: ${msg}`);

/** The plugin's `cilia-cni timing {…}` line from its stderr. */
export function marksOf(stderr: string): PluginMarks {
  const line = stderr.split("\n").find((l) => l.startsWith("cilia-cni timing "));
  if (!line) throw new Error(`The plugin printed no timing line: stderr was: ${stderr}`);
  return JSON.parse(line.slice("cilia-cni timing ".length)) as PluginMarks;
}

/** One ADD's parts in ms; they add up to the total. */
export function partsOf(
  run: { startedAt: number; ms: number },
  m: PluginMarks,
): Record<Part, number> {
  const add = m.requests.find((r) => r.path === "/v1/cni/add");
  if (!add || add.server.agent === undefined) {
    throw new Error(`The ADD request has no timing (agent Server-Timing missing?)`);
  }
  const agent = add.server.agent;
  return {
    start: m.startedAt - run.startedAt,
    plugin: add.sentAt - m.startedAt,
    request: add.answeredAt - add.sentAt - agent,
    agent,
    exit: run.startedAt + run.ms - add.answeredAt,
  };
}

export const percentile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
};

/** Times `samples` ADDs (after one warm-up ADD+DEL); throws without root or the plugin. */
export async function measureCniAdd(o: { samples: number }): Promise<CniFigures> {
  if (Deno.uid() !== 0) throw new Error("The CNI bench needs root (netns, bpffs, tc)");
  const root = new URL("../../", import.meta.url).pathname;
  const { CiliaNode } = await import("../../tests/cni/_fixture.ts");
  const n = await CiliaNode.create();
  const figures: CniFigures = {
    samples: 0,
    totalMs: [],
    parts: { start: [], plugin: [], request: [], agent: [], exit: [] },
  };
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
        timing: true,
      });
      if (r.code !== 0) throw new Error(`CNI ADD failed: ${r.stdout}`);
      const ep = await n.call("GET", `/v1/endpoint/b${i}`);
      if (ep.status !== 200 || ep.body.state !== "ready" || !(ep.body.policyRevision > 0)) {
        throw new Error(
          `After ADD the endpoint's policy is not in force: ${JSON.stringify(ep.body)}`,
        );
      }
      const parts = partsOf(r, marksOf(r.stderr));
      figures.totalMs.push(r.ms);
      for (const p of PARTS) figures.parts[p].push(parts[p]);
      figures.samples++;
      await n.cni("DEL", call);
      await new Deno.Command("ip", { args: ["netns", "del", netns] }).output();
      if ((i + 1) % 25 === 0) progress(`${i + 1} of ${o.samples} ADDs`);
    }
  } finally {
    await n.close();
  }
  return figures;
}

/** The report: total p50/p99 against the old figures and the goal, then the parts. */
export function report(f: CniFigures): string {
  const ms = (x: number) => `${x.toFixed(1)} ms`;
  const p50 = percentile(f.totalMs, 0.5), p99 = percentile(f.totalMs, 0.99);
  const met = p50 < GOAL.p50Ms && p99 < GOAL.p99Ms;
  const rows = PARTS.map((p) =>
    `  ${p.padEnd(8)} p50 ${ms(percentile(f.parts[p], 0.5)).padStart(9)}   p99 ${
      ms(percentile(f.parts[p], 0.99)).padStart(9)
    }`
  );
  return [
    `CNI ADD, exec until exit, warm agent, policy in force (${f.samples} samples)`,
    `  now      p50 ${ms(p50).padStart(9)}   p99 ${ms(p99).padStart(9)}`,
    `  before   p50 ${ms(BEFORE.p50Ms).padStart(9)}   p99 ${ms(BEFORE.p99Ms).padStart(9)}`,
    `  goal     p50 < ${GOAL.p50Ms} ms   p99 < ${GOAL.p99Ms} ms: ${met ? "met" : "NOT met"}`,
    `breakdown (each part's own percentiles; the p50s add up to about the total's)`,
    ...rows,
  ].join("\n");
}

export async function main(args: string[]): Promise<void> {
  const flags = parseArgs({
    args,
    options: { quick: { type: "boolean", default: false }, samples: { type: "string" } },
  });
  const samples = Number(flags.values.samples ?? (flags.values.quick ? 20 : 200));
  if (!Number.isInteger(samples) || samples < 1) {
    throw new RangeError(`Invalid --samples "${flags.values.samples}": expected a whole number`);
  }
  progress(`${samples} ADDs against a warm agent`);
  console.log(report(await measureCniAdd({ samples })));
}

if (import.meta.main) await main(Deno.args);
