// `cilia connectivity test [--test REGEX] [-o table|json]`: the built-in end-to-end suite. It
// builds a lab of network namespaces (connectivity_lab.ts: a node running the real agent, pods
// through the CNI plugin, an external host), then for each family (connectivity_cases.ts) puts
// its policies in force, sends real packets and compares with what must happen; every expected
// drop is cross-checked against the agent's flows (the kernel's reason and the policy the flow
// names). `[n/N]` progress on a terminal, a final table naming each failing case, exit 1 when one
// failed. `--nodes 2`: two nodes with one etcd in tunnel mode, the backend on the second node and
// every client on the first, so each case crosses nodes ("host" is then the backend's node);
// policies are imported on node 1 and waited for on every node, flows asked of every node. The
// lab is removed afterwards, also on Ctrl-C. Needs root (and etcd for --nodes 2).

import { type Case, type Family, PODS, selectFamilies } from "./connectivity_cases.ts";
import { ConnectivityLab, EXT_IPS } from "./connectivity_lab.ts";
import type { Flow } from "../agent/monitor/flow.ts";

/** Flips one case's expectation (`family/case`): how the suite checks that it reports failures. */
const FLIP_ENV = "CILIA_CONNECTIVITY_FLIP";

const USAGE = `cilia connectivity test — end-to-end suite: real packets, drops checked against flows

Usage: cilia connectivity test [--test REGEX] [--nodes 1|2] [-o table|json]

Builds a lab of network namespaces (a node running cilia-agent, pods through cilia-cni, an
external host), runs the connectivity families with real packets, and checks every expected drop
against the agent's flows (reason and policy). Needs root. Exit 1 when a case failed.

  --test REGEX   run only the cases whose "family/case" name matches
  --nodes N      1 (default) or 2: two nodes with one etcd (tunnel mode), the backend on node 2
                 and the clients on node 1, so every pod-to-pod case crosses nodes
  -o FORMAT      table (default) or json

Example:
  cilia connectivity test --test "deny|cidr"`;

interface Result {
  name: string;
  probe: string;
  expected: string;
  got: string;
  ok: boolean;
  why?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const expectText = (c: Case) =>
  c.expect === "allow"
    ? "allow"
    : "audit" in c.expect
    ? `pass, audit by ${c.expect.audit}`
    : `drop ${c.expect.drop} by ${c.expect.policy}`;

interface Options {
  test?: RegExp;
  format: "table" | "json";
  help: boolean;
  nodes: number;
}

function parse(argv: string[]): Options {
  const [sub, ...rest] = argv;
  if (sub === "-h" || sub === "--help" || sub === undefined) {
    return { format: "table", help: true, nodes: 1 };
  }
  if (sub !== "test") throw new TypeError(`Unknown subcommand "${sub}": expected "test"`);
  const o: Options = { format: "table", help: false, nodes: 1 };
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === "-h" || a === "--help") o.help = true;
    else if (a === "--test") {
      const v = rest[++i];
      if (v === undefined) throw new TypeError(`"--test" needs a regular expression`);
      try {
        o.test = new RegExp(v);
      } catch (err) {
        throw new TypeError(`Invalid --test "${v}": ${(err as Error).message}`);
      }
    } else if (a === "--nodes") {
      const v = rest[++i];
      if (v !== "1" && v !== "2") throw new TypeError(`Invalid --nodes "${v}": expected 1 or 2`);
      o.nodes = Number(v);
    } else if (a === "-o" || a === "--output") {
      const v = rest[++i];
      if (v !== "table" && v !== "json") {
        throw new TypeError(`Unknown output format "${v}": expected table or json`);
      }
      o.format = v;
    } else throw new TypeError(`Unknown flag "${a}"`);
  }
  return o;
}

class Suite {
  readonly lab: ConnectivityLab;
  readonly #tty = Deno.stderr.isTerminal();
  #done = 0;
  constructor(readonly total: number, readonly nodes = 1) {
    this.lab = new ConnectivityLab({ nodes });
  }

  /** The backend's node: the last one (clients stay on the first). */
  get #backendNode(): number {
    return this.nodes - 1;
  }

  progress(name: string): void {
    this.#done++;
    if (!this.#tty) return;
    const line = `[${this.#done}/${this.total}] ${name}`;
    Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[2K${line}`));
  }

  endProgress(): void {
    if (this.#tty) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[2K"));
  }

  async setUp(): Promise<void> {
    await this.lab.start();
    for (const p of PODS) {
      await this.lab.addPod(p.name, {
        namespace: p.namespace,
        labels: p.labels,
        ports: [...p.ports],
        node: p.name === "backend" ? this.#backendNode : 0,
      });
    }
    this.lab.serve(this.lab.ext, 80);
    await sleep(200); // the servers listen
    if (this.nodes > 1) await this.#podsKnown();
  }

  /** Every node has every other node's pods in its ipcache. */
  async #podsKnown(): Promise<void> {
    for (const deadline = Date.now() + 15_000;; await sleep(100)) {
      let all = true;
      for (const [i] of this.lab.nodes.entries()) {
        const r = await this.lab.api("GET", "/v1/bpf/ipcache", undefined, i);
        const known = new Set((JSON.parse(r.text) as { prefix: string }[]).map((e) => e.prefix));
        all &&= this.lab.pods.every((p) => p.node === i || known.has(`${p.ip}/32`));
      }
      if (all) return;
      if (Date.now() > deadline) throw new Error("The nodes did not learn each other's pods");
    }
  }

  #ip(t: Case["to"]): string {
    if (t === "ext0") return EXT_IPS[0];
    if (t === "ext1") return EXT_IPS[1];
    return this.lab.pods.find((p) => p.name === t)!.ip;
  }

  #netns(s: Case["from"]): string {
    if (s === "host") return this.lab.nodes[this.#backendNode]!;
    if (s === "world") return this.lab.ext;
    return this.lab.pods.find((p) => p.name === s)!.netns;
  }

  async #policies(f: Family): Promise<void> {
    const del = await this.lab.api("DELETE", "/v1/policy?all=true");
    if (del.status !== 200 && del.status !== 404) {
      throw new Error(`Cannot delete the policies: ${del.text}`);
    }
    if (this.nodes > 1) await this.#inForce(f, 0);
    if (f.policies.length === 0) return;
    const r = await this.lab.api("PUT", "/v1/policy", f.policies.join("---\n"));
    if (r.status !== 200) throw new Error(`Cannot import the policies of "${f.name}": ${r.text}`);
  }

  /** Every node holds `count` policies, realised (they travel through etcd). */
  async #inForce(f: Family, count: number): Promise<void> {
    for (const [i] of this.lab.nodes.entries()) {
      for (const deadline = Date.now() + 15_000;; await sleep(50)) {
        const s = JSON.parse((await this.lab.api("GET", "/v1/status", undefined, i)).text) as {
          realised: boolean;
          policy: { count: number };
        };
        if (s.policy.count === count && s.realised) break;
        if (Date.now() > deadline) {
          throw new Error(`The policies of "${f.name}" are not in force on node ${i + 1}`);
        }
      }
    }
  }

  /** The case's flow with `verdict`, polled for a moment (flows arrive within milliseconds). */
  async #flow(c: Case, since: Date, verdict: "DROPPED" | "AUDIT"): Promise<Flow | undefined> {
    const from = c.from === "host" ? undefined : c.from === "world" ? EXT_IPS[0] : this.#ip(
      c.from as "backend",
    );
    const q = new URLSearchParams({
      verdict,
      "to-ip": this.#ip(c.to),
      since: since.toISOString(),
    });
    if (from && !from.startsWith("203.")) q.set("from-ip", from);
    for (let i = 0; i < 15; i++) {
      const flows: Flow[] = [];
      for (const [n] of this.lab.nodes.entries()) {
        const r = await this.lab.api("GET", `/v1/flows?${q}`, undefined, n);
        flows.push(
          ...r.text.split("\n").filter(Boolean).map((l) => JSON.parse(l) as { flow?: Flow })
            .flatMap((l) => l.flow ? [l.flow] : []),
        );
      }
      const hit = flows.find((f) =>
        c.proto === "icmp"
          ? f.l4 !== undefined && "ICMPv4" in f.l4
          : f.l4 !== undefined && "TCP" in f.l4 && f.l4.TCP.destination_port === c.port
      );
      if (hit) return hit;
      await sleep(100);
    }
    return undefined;
  }

  async #runCase(f: Family, c: Case, since: Date): Promise<Result> {
    const name = `${f.name}/${c.name}`;
    const probe = `${c.from} → ${c.to} ${c.proto === "tcp" ? `TCP ${c.port}` : "ICMP"}`;
    const passed = await this.lab.probe(this.#netns(c.from), this.#ip(c.to), c.proto, c.port);
    const base = { name, probe, expected: expectText(c) };
    if (c.expect === "allow") {
      return { ...base, got: passed ? "allowed" : "dropped", ok: passed };
    }
    if ("audit" in c.expect) {
      if (!passed) return { ...base, got: "dropped", ok: false, why: "audit mode must pass" };
      const flow = await this.#flow(c, since, "AUDIT");
      const got = `pass, audit by ${flow?.policy?.name ?? "(no AUDIT flow)"}`;
      const ok = flow?.policy?.name === c.expect.audit;
      return { ...base, got, ok, ...(ok ? {} : { why: "no AUDIT flow naming the policy" }) };
    }
    if (passed) return { ...base, got: "allowed", ok: false, why: "the packets got through" };
    const flow = await this.#flow(c, since, "DROPPED");
    if (!flow) return { ...base, got: "dropped", ok: false, why: "no drop flow in the agent" };
    const got = `drop ${flow.drop_reason} by ${flow.policy?.name ?? "(no policy)"}`;
    const ok = flow.drop_reason === c.expect.drop && flow.policy?.name === c.expect.policy;
    return { ...base, got, ok, ...(ok ? {} : { why: "the flow names another reason or policy" }) };
  }

  async runFamily(f: Family): Promise<Result[]> {
    await this.#policies(f);
    if (this.nodes > 1) await this.#inForce(f, f.policies.length);
    const since = new Date(Date.now() - 50);
    const results = await Promise.all(f.cases.map((c) => this.#runCase(f, c, since)));
    for (const r of results) this.progress(r.name);
    return results;
  }
}

function table(results: Result[], skipped: Family[]): string {
  const head = ["case", "probe", "expected", "got", "result"];
  const rows = results.map((r) => [
    r.name,
    r.probe,
    r.expected,
    r.got,
    r.ok ? "ok" : `FAIL${r.why ? `: ${r.why}` : ""}`,
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => x.padEnd(w[i]!)).join("  ").trimEnd();
  const failed = results.filter((r) => !r.ok);
  return [
    line(head),
    ...rows.map(line),
    "",
    ...skipped.map((f) => `skipped ${f.name}: ${f.skip}`),
    `${results.length - failed.length} passed, ${failed.length} failed, ${skipped.length} ` +
    `famil${skipped.length === 1 ? "y" : "ies"} skipped`,
    ...(failed.length > 0 ? [`failing: ${failed.map((r) => r.name).join(", ")}`] : []),
  ].join("\n");
}

/** `cilia connectivity …` (own flags); returns the exit code. */
export async function connectivity(argv: string[]): Promise<number> {
  let o;
  try {
    o = parse(argv);
  } catch (err) {
    console.error(`cilia connectivity: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (o.help) {
    console.log(USAGE);
    return 0;
  }
  if (Deno.uid() !== 0) {
    console.error(
      "cilia connectivity test: needs root (network namespaces, a bpffs, eBPF programs)",
    );
    return 1;
  }
  const families = selectFamilies(o.test, Deno.env.get(FLIP_ENV));
  const run = families.filter((f) => !f.skip);
  const suite = new Suite(run.reduce((n, f) => n + f.cases.length, 0), o.nodes);
  const onSignal = () => {
    suite.endProgress();
    console.error("\ncilia connectivity test: interrupted, removing the lab");
    suite.lab.close().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const results: Result[] = [];
  try {
    await suite.setUp();
    for (const f of run) results.push(...await suite.runFamily(f));
    suite.endProgress();
  } catch (err) {
    suite.endProgress();
    console.error(`cilia connectivity test: ${(err as Error).message}`);
    console.error(`agent log (last lines):\n${await suite.lab.agentLog()}`);
    return 1;
  } finally {
    await suite.lab.close();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
  const skipped = families.filter((f) => f.skip);
  if (o.format === "json") {
    console.log(JSON.stringify(
      { results, skipped: skipped.map((f) => ({ family: f.name, reason: f.skip })) },
      null,
      2,
    ));
  } else console.log(table(results, skipped));
  return results.every((r) => r.ok) ? 0 : 1;
}
