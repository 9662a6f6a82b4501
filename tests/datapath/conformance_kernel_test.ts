// The kernel datapath as a consumer of the conformance corpus (tests/policy_cases/): every case
// tagged `# kernel: yes` is loaded into a PolicyEngine exactly as the engine consumer loads it,
// the engine's map-state of every endpoint is written to a real datapath in a netns lab (one lab,
// reset between cases), and every query is sent as a real packet — TCP connect + echo, UDP
// request + reply, ICMP/ICMPv6 through raw sockets — whose fate is the verdict; a packet that
// passed is "audited" when the kernel sent an AUDIT policy-verdict event for it. Needs root.
// Expectations live in the corpus; a mismatch prints the probe and the engine's explanation.
import {
  evaluateFlow,
  explainFlow,
  flowOf,
  loadScenario,
  PolicyEngine,
  prepareScenario,
} from "../../policy-wasm/mod.ts";
import { conformanceTest, type Consumer, type Verdict } from "../policy_cases/runner.ts";
import { KERNEL_TOOLS } from "../helpers/root.ts";
import { KernelLab, type LabCase, type Probe } from "./_conformance_lab.ts";
import { planCase } from "./_conformance_plan.ts";
import type { PacketEvent } from "../../agent/datapath/events.ts";

let lab: KernelLab | undefined;

/** ICMP types other than the echo request leave no reply: they are observed where they land. */
const oneWay = (p: Probe) => p.proto === "icmp" && p.port !== (p.dst.includes(":") ? 128 : 8);

/** Whether one of the AUDIT events is the probe's (its endpoint, direction, peer and port). */
function audited(p: Probe, c: LabCase, events: readonly PacketEvent[]): boolean {
  const pod = (x: Probe["from"]) => x.kind === "pod" ? c.endpoints[x.index] : undefined;
  const src = pod(p.from), dst = pod(p.to);
  const proto = p.proto === "tcp" ? 6 : p.proto === "udp" ? 17 : p.dst.includes(":") ? 58 : 1;
  return events.some((e) =>
    e.proto === proto && e.dport === p.port &&
    ((e.direction === "ingress" && dst !== undefined && e.epId === dst.epId &&
      (src === undefined || e.srcIdentity === src.identity)) ||
      (e.direction === "egress" && src !== undefined && e.epId === src.epId &&
        (dst === undefined || e.dstIdentity === dst.identity)))
  );
}

function describe(p: Probe): string {
  const where = (x: Probe["from"]) => x.kind === "pod" ? `pod ${x.index}` : x.kind;
  const what = p.proto === "icmp" ? `ICMP type ${p.port}` : `${p.proto.toUpperCase()}/${p.port}`;
  return `${what} ${p.src} (${where(p.from)}) -> ${p.dst} (${where(p.to)})`;
}

const kernelConsumer: Consumer = {
  name: "kernel datapath",
  kernelOnly: true,
  needs: { root: true, binaries: KERNEL_TOOLS },
  async skip(c) {
    const loaded = loadScenario(c.text, `tests/policy_cases/${c.file}`);
    const engine = await PolicyEngine.create();
    try {
      const plan = planCase(loaded.scenario, prepareScenario(engine, loaded).cluster, engine);
      return "skip" in plan ? plan.skip : undefined;
    } finally {
      engine.close();
    }
  },
  async run(file, text) {
    const loaded = loadScenario(text, `tests/policy_cases/${file}`);
    const engine = await PolicyEngine.create();
    try {
      const { cluster } = prepareScenario(engine, loaded);
      const plan = planCase(loaded.scenario, cluster, engine);
      if ("skip" in plan) throw new Error(`Case "${file}" cannot be sent as packets: ${plan.skip}`);
      lab ??= await KernelLab.create();
      const l = lab;
      await l.apply(plan.lab);
      await l.listen(plan.probes);
      l.takeAudits();
      const outcomes = new Array<{ allowed: boolean; attempts: string[] }>(plan.probes.length);
      // Probes with their own ports or echo ids run together; the others share a conntrack tuple
      // (ICMP without ids) with each other, so they run one by one on an empty table.
      await Promise.all(plan.probes.map(async (p, i) => {
        if (!oneWay(p)) outcomes[i] = await l.probe(p);
      }));
      for (const [i, p] of plan.probes.entries()) {
        if (!oneWay(p)) continue;
        l.flushConntrack();
        outcomes[i] = await l.probe(p);
      }
      const audits = l.takeAudits();
      const verdicts = outcomes.map((o, i): Verdict =>
        !o.allowed ? "denied" : audited(plan.probes[i]!, plan.lab, audits) ? "audited" : "allowed"
      );
      const traces = loaded.scenario.queries.map((q, i) => [
        `kernel: ${describe(plan.probes[i]!)}: ${outcomes[i]!.attempts.join(", ")}`,
        ...explainFlow(engine, evaluateFlow(cluster, engine, flowOf(q))),
      ]);
      return { verdicts, traces };
    } finally {
      engine.close();
    }
  },
  async close() {
    await lab?.close();
    lab = undefined;
  },
};

conformanceTest(kernelConsumer);
