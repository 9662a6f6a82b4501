// `deno task bench dns [--rate Q] [--duration S]`: DNS queries through cilia's DNS proxy against
// the same queries straight to the same dnsmasq, in one lab node with an external host
// (tests/cni/_fixture.ts). dnsmasq on the external host answers api.example.com itself on two
// addresses: 203.0.113.10, which a DNS rule covers (the datapath redirects the queries to the
// agent's proxy, which judges, forwards, learns and answers), and 203.0.113.11, which an L3/L4
// rule allows (the queries go straight through the datapath: the baseline). A client pod sends
// UDP A queries at a paced rate (default 5k q/s, 3 s to each address, after a short warm-up) with
// a small Deno client in its own process (_dns_load.ts), alternating between the two addresses
// every 250 ms, so both are measured by the same client over the same stretch of time. Prints
// q/s and p50/p99 of both (round trips to the answer's arrival in the client's socket, the
// kernel's time stamp, and beside them to the client's read), the q/s ratio and the added p50/p99
// (proxied minus direct) against issue 11's target (MISSED with the figure when missed), with the
// load average before and after. `--trace DIR`: the proxy's Worker and the client record each
// query's stage times, and the breakdown of the proxied ones (slowest 1%) is printed
// (_dns_trace_report.ts).
// `--rate 1000,2500,5000 --runs 3`: each rate, the median of three runs. Needs root and dnsmasq;
// every netns and process is removed.
import { parseArgs } from "node:util";
import { CiliaNode } from "../../tests/cni/_fixture.ts";
import type { LoadFigures } from "./_dns_load.ts";
import { printTrace } from "./_dns_trace_report.ts";

/** Issue 11's target: the proxy adds less than 1 ms at p99 at 5k queries/s. */
export const TARGET = { addedP99Ms: 1.0, rate: 5000 };

const DNS_IP = "203.0.113.10";
/** The same dnsmasq on an address no DNS rule covers: the baseline. */
const DIRECT_IP = "203.0.113.11";
const NAME = "api.example.com";
const LOAD = new URL("./_dns_load.ts", import.meta.url).pathname;
const progress = (msg: string) => console.error(`bench dns: ${msg}`);

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchName: ${NAME}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toCIDR: [${DNS_IP}/32]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*"}]}
  - toCIDR: [${DIRECT_IP}/32]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`;

async function waitAnswer(n: CiliaNode, netns: string, ip: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const r = await n.lab.exec(netns, ["dig", "+time=1", "+tries=1", `@${ip}`, NAME, "A"]);
    if (/status: NOERROR/.test(r.stdout)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`dnsmasq at "${ip}" does not answer "${NAME}" from the client pod`);
}

/** CPU seconds [user, system] of the agent serving `socket`, from /proc (NaN: not found). */
async function agentCpu(socket: string): Promise<[number, number]> {
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmd = await Deno.readTextFile(`/proc/${e.name}/cmdline`);
      if (!cmd.includes("agent/main.ts") || !cmd.includes(socket)) continue;
      const stat = await Deno.readTextFile(`/proc/${e.name}/stat`);
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return [Number(f[11]) / 100, Number(f[12]) / 100]; // utime, stime in ticks (USER_HZ 100)
    } catch { /* gone */ }
  }
  return [NaN, NaN];
}

const loadAverage = async () =>
  (await Deno.readTextFile("/proc/loadavg").catch(() => "?")).split(" ").slice(0, 3).join(" ");

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** The median run of several (by p99), with the totals of all. */
function medianOf(runs: LoadFigures[]): LoadFigures {
  return {
    sent: runs.reduce((n, r) => n + r.sent, 0),
    answered: runs.reduce((n, r) => n + r.answered, 0),
    qps: median(runs.map((r) => r.qps)),
    nonNoError: runs.reduce((n, r) => n + r.nonNoError, 0),
    p50Ms: median(runs.map((r) => r.p50Ms)),
    p99Ms: median(runs.map((r) => r.p99Ms)),
    readP50Ms: median(runs.map((r) => r.readP50Ms)),
    readP99Ms: median(runs.map((r) => r.readP99Ms)),
    maxMs: Math.max(...runs.map((r) => r.maxMs)),
  };
}

export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      rate: { type: "string", default: String(TARGET.rate) },
      duration: { type: "string", default: "3" },
      runs: { type: "string", default: "1" },
      trace: { type: "string" },
    },
  });
  const rates = values.rate.split(",").map(Number);
  const dur = Math.min(6, Number(values.duration)), runs = Number(values.runs);
  if (
    rates.some((r) => !(r > 0 && r * dur * 2 <= 60_000)) || !(runs >= 1 && runs <= 9) || !(dur > 0)
  ) {
    throw new RangeError(
      `Invalid arguments: --rate "${values.rate}" (q/s, comma separated), --runs "${values.runs}" ` +
        `(1–9), --duration "${values.duration}" (seconds; rate × duration at most 30,000 queries)`,
    );
  }
  const trace = values.trace;
  if (trace !== undefined) await Deno.mkdir(trace, { recursive: true });
  await measure(rates, dur, runs, trace);
  if (trace !== undefined) printTrace(trace, DNS_IP, runs);
}

async function measure(
  rates: number[],
  dur: number,
  runs: number,
  trace: string | undefined,
): Promise<void> {
  await using n = await CiliaNode.create({
    external: true,
    ...(trace !== undefined
      ? {
        agentEnv: {
          CILIA_DNS_TRACE: `${trace}/worker.jsonl`,
        },
      }
      : {}),
  });
  const ext = n.ext!;
  await n.lab.run(ext.netns, ["ip", "addr", "add", `${DIRECT_IP}/24`, "dev", "eth0"]);
  n.lab.spawn([
    ...["ip", "netns", "exec", ext.netns, "dnsmasq", "--no-daemon", "--port=53"],
    ...[`--listen-address=${DNS_IP}`, `--listen-address=${DIRECT_IP}`, "--bind-interfaces"],
    ...["--no-resolv", "--no-hosts"],
    ...["--local-ttl=60", `--address=/${NAME}/${DNS_IP}`, "--dns-forward-max=1000"],
    `--pid-file=${n.lab.dir}/dnsmasq.pid`,
  ]);
  const client = await n.addPod("client", { app: "client" });
  await n.policy(POLICY);
  await waitAnswer(n, client.netns, DNS_IP);
  await waitAnswer(n, client.netns, DIRECT_IP);
  const loadBefore = await loadAverage();
  // The agent's own background work (event polls, timers), measured idle in this run, so the
  // per-query figure can also be given net of it.
  const idle0 = await agentCpu(n.socket), idleT0 = performance.now();
  await new Promise((r) => setTimeout(r, 2000));
  const idle1 = await agentCpu(n.socket);
  const idlePerS = (idle1[0] + idle1[1] - idle0[0] - idle0[1]) /
    ((performance.now() - idleT0) / 1000);
  const cpuBefore = await agentCpu(n.socket), loadT0 = performance.now();
  /** One run: [direct, proxied], interleaved. */
  const run = async (rate: number, i: number): Promise<LoadFigures[]> => {
    progress(
      `${rate} q/s to each of ${DIRECT_IP} and ${DNS_IP} for ${dur} s (run ${i + 1} of ${runs})`,
    );
    const out = await n.lab.run(client.netns, [
      ...(trace !== undefined ? ["env", `DNS_LOAD_TRACE=${trace}/client-${i}.json`] : []),
      ...[Deno.execPath(), "run", "-A", "--unstable-net", "--no-config", LOAD],
      ...[NAME, String(rate), String(dur), DIRECT_IP, DNS_IP],
    ]);
    return JSON.parse(out.trim().split("\n").at(-1)!) as LoadFigures[];
  };
  const direct = new Map<number, LoadFigures>(), proxied = new Map<number, LoadFigures>();
  for (const rate of rates) {
    const all: LoadFigures[][] = [];
    for (let i = 0; i < runs; i++) all.push(await run(rate, i));
    direct.set(rate, medianOf(all.map((r) => r[0]!)));
    proxied.set(rate, medianOf(all.map((r) => r[1]!)));
  }
  // The Worker writes its trace when it idles (1 s without traffic).
  if (trace !== undefined) await new Promise((r) => setTimeout(r, 1500));
  const loadAfter = await loadAverage();
  const cpuAfter = await agentCpu(n.socket), loadS = (performance.now() - loadT0) / 1000;
  const [user, sys] = [cpuAfter[0] - cpuBefore[0], cpuAfter[1] - cpuBefore[1]];
  const cpu = user + sys;
  const { entries } = (await n.call("GET", `/v1/fqdn/cache?name=${NAME}`)).body as {
    entries: unknown[];
  };
  if (entries.length === 0) throw new Error(`The queries did not go through the proxy: no record`);

  const row = (name: string, f: LoadFigures) =>
    `${name.padEnd(26)} ${f.qps.toFixed(0).padStart(6)} q/s  answered ${f.answered}/${f.sent}` +
    `  p50 ${f.p50Ms.toFixed(3)} ms  p99 ${f.p99Ms.toFixed(3)} ms  max ${f.maxMs.toFixed(1)} ms` +
    `  (read by the client: p50 ${f.readP50Ms.toFixed(3)} ms  p99 ${f.readP99Ms.toFixed(3)} ms)` +
    (f.nonNoError ? `  non-NOERROR ${f.nonNoError}` : "");
  console.log(
    `UDP A ${NAME}, paced, ${dur} s to each address per run (interleaved every 250 ms), ` +
      `client pod → dnsmasq` + (runs > 1 ? `, median of ${runs} runs` : "") +
      `; load average ${loadBefore} before, ${loadAfter} after`,
  );
  const proxiedQueries = runs * rates.reduce((sum, r) => sum + r * (dur + 0.1), 0);
  console.log(
    `agent CPU over all runs ${cpu.toFixed(2)} s, about ` +
      `${(cpu * 1e6 / proxiedQueries).toFixed(0)} µs per proxied query (warm-up included; ` +
      `user ${(user * 1e6 / proxiedQueries).toFixed(0)} µs, system ${
        (sys * 1e6 / proxiedQueries).toFixed(0)
      } µs); idle agent ${(idlePerS * 1000).toFixed(0)} ms CPU/s, so about ${
        ((cpu - idlePerS * loadS) * 1e6 / proxiedQueries).toFixed(0)
      } µs per proxied query net of it`,
  );
  for (const rate of rates) {
    const a = direct.get(rate)!, b = proxied.get(rate)!;
    console.log(`-- ${rate} q/s`);
    console.log(row("(a) straight to dnsmasq", a));
    console.log(row("(b) through the DNS proxy", b));
    const addedP50 = b.p50Ms - a.p50Ms, addedP99 = b.p99Ms - a.p99Ms;
    console.log(`proxy/direct q/s    ${(b.qps / a.qps).toFixed(2)}x`);
    console.log(`added p50           ${addedP50.toFixed(3)} ms`);
    console.log(
      `(as read by the client: added p50 ${(b.readP50Ms - a.readP50Ms).toFixed(3)} ms, ` +
        `p99 ${(b.readP99Ms - a.readP99Ms).toFixed(3)} ms)`,
    );
    const ok = addedP99 < TARGET.addedP99Ms && b.answered === b.sent && rate >= TARGET.rate;
    console.log(
      `added p99           ${addedP99.toFixed(3)} ms  target < ${TARGET.addedP99Ms} ms at ` +
        `${TARGET.rate} q/s  ` +
        (ok
          ? "ok"
          : `MISSED (${addedP99.toFixed(3)} ms at ${rate} q/s, ${b.sent - b.answered} unanswered)`),
    );
  }
}
