// `deno task bench dns --trace DIR`: joins the client's per-query times (_dns_load.ts,
// DIR/client-N.json: [id, server, send, read, arrival]) with the DNS proxy Worker's stage times
// (agent/proxy/_dns_udp_trace.ts, DIR/worker.jsonl), all CLOCK_REALTIME µs on one machine, and
// prints where the time of the proxied queries goes: each stage's p50 over all of them and its
// mean over the slowest 1%, how often the main thread was asked, how many arrived while the Worker
// was busy (not in epoll_wait), and the epoll batch sizes. Reads files only.

import { T } from "../../agent/proxy/_dns_udp_trace.ts";

const STAGES: [string, number, number][] = [
  ["client send → proxy socket (kernel)", -1, T.kin],
  ["proxy socket → Worker read", T.kin, T.read],
  ["Worker read → upstream sent", T.read, T.fwd],
  ["upstream sent → answer on the leg (kernel)", T.fwd, T.ukin],
  ["answer on the leg → Worker read", T.ukin, T.uread],
  ["Worker read → reply sent", T.uread, T.sent],
  ["reply sent → client socket (kernel)", T.sent, -3],
  ["client socket → client read", -3, -2],
];

const q = (xs: number[], p: number) =>
  xs.length
    ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))]!
    : NaN;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** Prints the breakdown of the proxied queries (server index 1) of run 0. */
export function printTrace(dir: string, proxied: string, runs: number): void {
  const worker = Deno.readTextFileSync(`${dir}/worker.jsonl`).trim().split("\n")
    .map((l) => JSON.parse(l) as number[]);
  const byId = new Map<number, number[][]>();
  for (const w of worker) {
    const list = byId.get(w[T.id]!) ?? [];
    list.push(w);
    byId.set(w[T.id]!, list);
  }
  const client = JSON.parse(Deno.readTextFileSync(`${dir}/client-0.json`)) as number[][];
  const joined: { rtt: number; st: number[]; w: number[] }[] = [];
  const direct: number[] = [];
  for (
    const [id, server, send, recv, kin] of client as number[][] as [
      number,
      number,
      number,
      number,
      number,
    ][]
  ) {
    if (server === 0) {
      direct.push(kin - send);
      continue;
    }
    const w = byId.get(id)?.find((r) => r[T.read]! >= send && r[T.read]! <= recv);
    // Answered by the Worker from its upstream (not a SERVFAIL at the timeout), with time stamps.
    if (!w || !w[T.sent] || !w[T.uread] || !w[T.ukin] || !w[T.kin] || !kin) continue;
    const at = (c: number) => c === -1 ? send : c === -2 ? recv : c === -3 ? kin : w[c]!;
    joined.push({ rtt: kin - send, st: STAGES.map(([, a, b]) => at(b) - at(a)), w });
  }
  joined.sort((a, b) => a.rtt - b.rtt);
  const slow = joined.slice(Math.floor(joined.length * 0.99));
  console.log(
    `-- trace of run 1${runs > 1 ? ` of ${runs}` : ""}: ${joined.length} proxied queries to ` +
      `${proxied} joined with the Worker's rows (${worker.length}); to the client's socket: p50 ` +
      `${(q(joined.map((j) => j.rtt), 0.5) / 1000).toFixed(3)} ms, p99 ` +
      `${(q(joined.map((j) => j.rtt), 0.99) / 1000).toFixed(3)} ms; direct p50 ` +
      `${(q(direct, 0.5) / 1000).toFixed(3)} ms, p99 ${(q(direct, 0.99) / 1000).toFixed(3)} ms`,
  );
  console.log(`${"stage (µs)".padEnd(44)} p50 all  p99 all  mean slowest 1%  max slowest 1%`);
  STAGES.forEach(([name], i) => {
    const all = joined.map((j) => j.st[i]!), s = slow.map((j) => j.st[i]!);
    console.log(
      `${name.padEnd(44)} ${q(all, 0.5).toFixed(0).padStart(7)}  ${
        q(all, 0.99).toFixed(0).padStart(7)
      }` +
        `  ${mean(s).toFixed(0).padStart(15)}  ${Math.max(...s).toFixed(0).padStart(14)}`,
    );
  });
  const main = (js: typeof joined) => js.filter((j) => j.w[T.main]! > 0).length;
  const busy = (js: typeof joined) => js.filter((j) => j.w[T.kin]! < j.w[T.waitFrom]!).length;
  const batch = (js: typeof joined) => q(js.map((j) => j.w[T.batch]!), 0.5);
  const waitSleep = (js: typeof joined) =>
    mean(
      js.filter((j) => j.w[T.kin]! >= j.w[T.waitFrom]!).map((j) => j.w[T.waitTo]! - j.w[T.kin]!),
    );
  for (const [name, js] of [["all", joined], ["slowest 1%", slow]] as const) {
    console.log(
      `${name}: asked the main thread ${
        main(js)
      }/${js.length}, arrived while the Worker was busy ` +
        `${busy(js)}/${js.length}, epoll batch p50 ${batch(js)}, arrival → epoll_wait returned ` +
        `(Worker asleep) mean ${waitSleep(js).toFixed(0)} µs`,
    );
  }
  const slowest = slow.slice(-5).map((j) => j.st.map((x) => x.toFixed(0)).join("/"));
  console.log(`slowest 5 (stages in µs, in order): ${slowest.join("  ")}`);
}
