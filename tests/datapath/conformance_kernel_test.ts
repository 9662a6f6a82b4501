// The kernel datapath as a consumer of the conformance corpus (tests/policy_cases/): every case
// tagged `# kernel: yes` is loaded into a PolicyEngine exactly as the engine consumer loads it,
// the engine's map-state of every endpoint is written to a real datapath in a netns lab (two
// labs, one case at a time each, a lab reset between its cases), and every query is sent as a
// real packet — TCP connect + echo, UDP request + reply, ICMP/ICMPv6 through raw sockets — whose
// fate is the verdict (a timeout is retried once, unless the datapath's drop event for that very
// packet says it was dropped, not late); a packet that passed is "audited" when the kernel sent
// an AUDIT policy-verdict event for it. Needs root.
// Expectations live in the corpus; a mismatch prints the probe and the engine's explanation.
import {
  evaluateFlow,
  explainFlow,
  flowOf,
  type LoadedScenario,
  loadScenario,
  PolicyEngine,
  prepareScenario,
  type SimCluster,
} from "../../policy-wasm/mod.ts";
import {
  conformanceTest,
  type Consumer,
  type ConsumerResult,
  type Verdict,
} from "../policy_cases/runner.ts";
import { KERNEL_TOOLS } from "../helpers/root.ts";
import { KernelLab, type LabCase, type Probe } from "./_conformance_lab.ts";
import { type CasePlan, planCase } from "./_conformance_plan.ts";
import type { PacketEvent } from "../../agent/datapath/events.ts";

/**
 * Labs at once, each its own node netns, datapath and pod pool: a case mostly waits for its
 * denied probes to time out, so two cases run side by side, one per lab (more labs cost more to
 * set up than they save on 2 cores).
 */
const LABS = 2;
/** Every lab made (closed by close()), and those not running a case. */
const labs: KernelLab[] = [];
const idle: KernelLab[] = [];

async function takeLab(): Promise<KernelLab> {
  const free = idle.pop();
  if (free) return free;
  const made = await KernelLab.create();
  labs.push(made);
  return made;
}

const protoOf = (p: Probe) =>
  p.proto === "tcp" ? 6 : p.proto === "udp" ? 17 : p.dst.includes(":") ? 58 : 1;

/** ICMP types other than the echo request leave no reply: they are observed where they land. */
const oneWay = (p: Probe) => p.proto === "icmp" && p.port !== (p.dst.includes(":") ? 128 : 8);

/** Whether one of the AUDIT events is the probe's (its endpoint, direction, peer and port). */
function audited(p: Probe, c: LabCase, events: readonly PacketEvent[]): boolean {
  const pod = (x: Probe["from"]) => x.kind === "pod" ? c.endpoints[x.index] : undefined;
  const src = pod(p.from), dst = pod(p.to);
  const proto = protoOf(p);
  return events.some((e) =>
    e.proto === proto && e.dport === p.port &&
    ((e.direction === "ingress" && dst !== undefined && e.epId === dst.epId &&
      (src === undefined || e.srcIdentity === src.identity)) ||
      (e.direction === "egress" && src !== undefined && e.epId === src.epId &&
        (dst === undefined || e.dstIdentity === dst.identity)))
  );
}

const canonical = (ip: string) => ip.includes(":") ? new URL(`http://[${ip}]`).hostname : ip;

/** Source and destination of an event's captured packet (Ethernet, then IPv4 or IPv6). */
function packetAddrs(d: Uint8Array): [string, string] | undefined {
  const v6 = (b: Uint8Array) =>
    canonical(
      Array.from({ length: 8 }, (_, i) => (b[2 * i]! << 8 | b[2 * i + 1]!).toString(16)).join(":"),
    );
  if (d.length >= 34 && d[14]! >> 4 === 4) {
    return [d.subarray(26, 30).join("."), d.subarray(30, 34).join(".")];
  }
  if (d.length >= 54 && d[14]! >> 4 === 6) return [v6(d.subarray(22, 38)), v6(d.subarray(38, 54))];
  return undefined;
}

/** Whether a drop event is the probe's own packet: protocol, port (ICMP type) and addresses. */
function isProbeDrop(p: Probe, e: PacketEvent): boolean {
  const proto = protoOf(p);
  if (e.type !== "drop" || e.proto !== proto || e.dport !== p.port) return false;
  const addrs = packetAddrs(e.data);
  return addrs !== undefined && addrs[0] === canonical(p.src) && addrs[1] === canonical(p.dst);
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
  concurrency: LABS,
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
      const l = await takeLab();
      try {
        return await runOn(l, plan, loaded, { engine, cluster });
      } finally {
        idle.push(l); // as before with one lab: the next case's apply() undoes this one
      }
    } finally {
      engine.close();
    }
  },
  async close() {
    const all = labs.splice(0);
    idle.length = 0;
    await Promise.all(all.map((l) => l.close()));
  },
};

/** One case on one lab: the case's cluster applied, every probe sent, verdicts and traces. */
async function runOn(
  l: KernelLab,
  plan: CasePlan,
  loaded: LoadedScenario,
  { engine, cluster }: { engine: PolicyEngine; cluster: SimCluster },
): Promise<ConsumerResult> {
  await l.apply(plan.lab);
  await l.listen(plan.probes);
  l.takeAudits();
  const dropped = (i: number) => (drops: readonly PacketEvent[]) =>
    drops.some((e) => isProbeDrop(plan.probes[i]!, e));
  const outcomes = new Array<{ allowed: boolean; attempts: string[] }>(plan.probes.length);
  // Probes with their own ports or echo ids run together; the others share a conntrack tuple
  // (ICMP without ids) with each other, so they run one by one on an empty table.
  await Promise.all(plan.probes.map(async (p, i) => {
    if (!oneWay(p)) outcomes[i] = await l.probe(p, dropped(i));
  }));
  for (const [i, p] of plan.probes.entries()) {
    if (!oneWay(p)) continue;
    l.flushConntrack();
    outcomes[i] = await l.probe(p, dropped(i));
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
}

conformanceTest(kernelConsumer);
