// `deno task demo [--once]`: cilia end to end on this machine, inside network namespaces it makes
// and removes. Checks the machine, builds a node with its own bpffs, starts bin/cilia-agent in it
// (Deno KV), adds labelled pods through bin/cilia-cni, imports examples/policies/three-tier.yaml
// with bin/cilia, sends allowed and denied traffic (TCP connects, pings, an external host on
// 203.0.113.0/24) and reports each verdict with the datapath's drop reason and identities; then the
// L7 scene, the DNS scene (demo/_dns.ts) and the services scene (demo/_services.ts). Then it
// prints live drop events until Ctrl-C (with --once it stops after the report, exit 1 when a
// verdict was not the expected one) and removes everything it made, also after errors.
import { parseArgs } from "node:util";
import {
  DemoLab,
  EXT,
  EXT_IP,
  NODE,
  POD_CIDR,
  POD_CIDR_V6,
  PREFIX,
  RUN_DIR,
  SOCKET,
  sweep,
} from "./demo/_lab.ts";
import {
  addresses,
  allowLine,
  dropLine,
  EventLog,
  FLOWS,
  flowText,
  IdentityNames,
  LISTEN,
  type Outcome,
} from "./demo/_traffic.ts";
import { runMultinode } from "./demo/_multinode.ts";
import { dnsScene } from "./demo/_dns.ts";
import { servicesScene } from "./demo/_services.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const POLICY = "examples/policies/three-tier.yaml";
const HTTP_POLICY = "examples/policies/http-get-public.yaml";
const color = Deno.stdout.isTerminal() && !Deno.env.get("NO_COLOR");
const paint = (code: string) => (s: string) => color ? `\x1b[${code}m${s}\x1b[0m` : s;
const [green, red, dim, bold] = [paint("32"), paint("31"), paint("2"), paint("1")];
const say = (s = "") => console.log(s);
const row = (k: string, v: string) => say(`  ${k.padEnd(11)}${v}`);

class Interrupted extends Error {}

async function version(argv: string[]): Promise<string | undefined> {
  try {
    const o = await new Deno.Command(argv[0]!, { args: argv.slice(1), stderr: "null" }).output();
    return o.code === 0 ? new TextDecoder().decode(o.stdout).split("\n")[0]!.trim() : undefined;
  } catch {
    return undefined;
  }
}

/** Root, a kernel with bpffs, and the tools; each failure says how to fix it. */
async function preflight(): Promise<string> {
  if (Deno.build.os !== "linux") throw new Error("The demo needs Linux (network namespaces, eBPF)");
  if (Deno.uid() !== 0) {
    throw new Error(
      "The demo needs root: it creates network namespaces, mounts a bpffs and loads eBPF " +
        "programs. Run it as root (sudo bin/deno task demo)",
    );
  }
  const fs = await Deno.readTextFile("/proc/filesystems").catch(() => "");
  if (!/\tbpf$/m.test(fs)) throw new Error("This kernel has no bpffs: eBPF is not available here");
  const tools: Record<string, string[]> = {
    ip: ["ip", "-V"],
    tc: ["tc", "-V"],
    nsenter: ["nsenter", "--version"],
    clang: ["clang", "--version"],
    bpftool: ["bpftool", "version"],
  };
  const found: string[] = [];
  for (const [name, argv] of Object.entries(tools)) {
    const v = await version(argv);
    if (v === undefined) throw new Error(`"${name}" is missing: run scripts/setup first`);
    if (name === "clang" || name === "bpftool") found.push(v.replace(/^Debian /, ""));
  }
  const kernel = (await version(["uname", "-r"])) ?? "?";
  return `root, bpffs, kernel ${kernel}, ${found.join(", ")}`;
}

async function probe(lab: DemoLab, from: string, to: string, f: (typeof FLOWS)[number]) {
  const netns = from === "node" ? NODE : from === "external" ? EXT : `${PREFIX}${from}`;
  if (f.proto === "icmp") {
    const o = await new Deno.Command("ip", {
      args: ["netns", "exec", netns, "ping", "-c", "1", "-W", "1", to],
      stdout: "null",
      stderr: "null",
    }).output();
    return o.code === 0;
  }
  return await lab.peer(netns, "client").probe(
    "tcp",
    to,
    f.port,
    f.expect === "allowed" ? 2000 : 700,
  );
}

/** Agent, pods, external host, policy, listeners: the world the traffic runs in. */
async function setUp(lab: DemoLab, check: () => void): Promise<void> {
  const ms = await lab.startAgent();
  const ready = `ready in ${(ms / 1000).toFixed(1)} s`;
  row("agent", `bin/cilia-agent in ${NODE}, Deno KV in ${RUN_DIR}/state (${ready})`);
  check();
  for (const [i, app] of ["frontend", "backend", "db"].entries()) {
    const p = await lab.addPod(app, { app });
    const id = `identity ${String(p.identity).padEnd(6)}`;
    const add = dim(`CNI ADD ${Math.round(p.addMs)} ms`);
    row(
      i === 0 ? "pods (CNI)" : "",
      `${app.padEnd(9)} ${p.ip.padEnd(11)} app=${app.padEnd(9)} ${id} ${add}`,
    );
    check();
  }
  row("external", `${EXT} at ${EXT_IP} (outside the cluster: "world")`);
  row("policy", `bin/cilia policy import ${POLICY}: ${await lab.importPolicy(`${ROOT}${POLICY}`)}`);
  check();
  for (const [place, ports] of Object.entries(LISTEN)) {
    const netns = place === "external" ? EXT : `${PREFIX}${place}`;
    for (const port of ports) await lab.peer(netns, "server").listen("tcp", port);
  }
}

interface Names {
  ids: IdentityNames;
  eps: Map<number, string>;
}

async function names(lab: DemoLab): Promise<Names> {
  const ids = new IdentityNames(lab.api);
  await ids.refresh();
  const eps = new Map<number, string>();
  for (const e of await lab.api.request<{ id: number; name: string }[]>("GET", "/v1/endpoint")) {
    eps.set(e.id, e.name);
  }
  return { ids, eps };
}

/** Sends every flow and prints its verdict; returns how many were not as expected. */
async function traffic(lab: DemoLab, log: EventLog, n: Names, check: () => void) {
  const ip = (name: string) =>
    name === "external" ? EXT_IP : lab.pods.find((p) => p.name === name)!.ip;
  say();
  say(bold("  traffic                          result    why"));
  const outcomes: Outcome[] = [];
  for (const f of FLOWS) {
    check();
    const from = log.events.length;
    const allowed = await probe(lab, f.from, ip(f.to), f);
    const src = f.from === "node" ? undefined : ip(f.from);
    const drop = allowed ? undefined : await log.dropFor(from, f, { src, dst: ip(f.to) });
    outcomes.push({ flow: f, allowed, drop });
    const as = (allowed ? "allowed" : "denied") === f.expect;
    const why = drop
      ? dropLine(drop, n.ids, n.eps)
      : allowed
      ? dim(allowLine(await log.allowsFor(from, f), n.eps))
      : "no drop event seen";
    const verdict = allowed ? green("allowed ") : red("dropped ");
    say(`  ${flowText(f)}${verdict}  ${why}${as ? "" : red("  UNEXPECTED")}`);
  }
  const wrong = outcomes.filter((o) => (o.allowed ? "allowed" : "denied") !== o.flow.expect);
  const allowed = outcomes.filter((o) => o.allowed).length;
  const verdicts = wrong.length === 0
    ? green("every verdict as the policy says")
    : red(`${wrong.length} unexpected`);
  say();
  say(
    `  ${outcomes.length} flows: ${allowed} allowed, ${
      outcomes.length - allowed
    } dropped — ${verdicts}`,
  );
  const metrics = await lab.api.request<string>("GET", "/v1/metrics", { accept: "text/plain" });
  for (const l of String(metrics).split("\n")) {
    if (l.startsWith("cilia_drop_count_total{")) say(dim(`  ${l}`));
  }
  await observe();
  return wrong.length;
}

/** The denied connections as `cilia observe` shows them: both pods' labels, reason, policy. */
async function observe() {
  // Frontend → backend only: the drops toward db and the external host come later and would
  // fill "the last 3".
  const args = [
    ...["observe", "--type", "drop", "--from-pod", "default/frontend"],
    ...["--to-pod", "default/backend", "--last", "3"],
  ];
  say();
  say(bold(`  $ cilia ${args.join(" ")}`));
  const out = await new Deno.Command(`${ROOT}bin/cilia`, {
    args,
    env: { CILIA_HOST: `unix://${SOCKET}`, CILIA_DENO: Deno.execPath() },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.code === 0 ? out.stdout : out.stderr);
  for (const l of text.trimEnd().split("\n")) say(`  ${l}`);
}

const PROTOS: Record<number, string> = { 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6" };

/** Prints every drop until `stopped`. */
async function live(lab: DemoLab, log: EventLog, n: Names, stopped: Promise<void>) {
  const db = lab.pods.find((p) => p.name === "db")!.ip;
  say();
  say(bold("  Live drop events (Ctrl-C stops the demo and removes everything). Try:"));
  say(`    ip netns exec ${PREFIX}frontend ping -c1 ${db}`);
  say(`    bin/cilia -H unix://${SOCKET} endpoint list`);
  say(`    bin/cilia -H unix://${SOCKET} policy get`);
  say();
  log.onEvent(async (e) => {
    if (e.type !== "drop") return;
    if (!n.ids.has(e.srcIdentity) || !n.ids.has(e.dstIdentity)) await n.ids.refresh();
    const a = addresses(e);
    const port = e.proto === 6 || e.proto === 17 ? `:${e.dport}` : "";
    const what = `${PROTOS[e.proto] ?? `proto ${e.proto}`} ${a?.src ?? "?"} → ${
      a?.dst ?? "?"
    }${port}`;
    const time = new Date().toISOString().slice(11, 19);
    say(`  ${time}  ${red("dropped")} ${what}  ${dropLine(e, n.ids, n.eps)}`);
  });
  await stopped;
}

/** curl in a pod's netns: the status code and the body (code 0: no answer). */
async function curl(netns: string, method: string, url: string) {
  const o = await new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      netns,
      "curl",
      "-s",
      "-m",
      "3",
      "-X",
      method,
      "-w",
      "\n%{http_code}",
      url,
    ],
    stdout: "piped",
    stderr: "null",
  }).output();
  const lines = new TextDecoder().decode(o.stdout).split("\n");
  return { code: Number(lines.pop() ?? 0), body: lines.join(" ").trim() };
}

const L7_REQUESTS = [
  { method: "GET", path: "/public/index.html", expect: 200 },
  { method: "GET", path: "/private/keys", expect: 403 },
  { method: "POST", path: "/public/form", expect: 403 },
] as const;

/**
 * L7: an HTTP rule on the backend's port 80 (GET /public/... from the frontend). Requests go
 * through the kernel's redirect to cilia's proxy, which judges each one with the engine; the
 * server sees the frontend's own address. Returns how many answers were not as expected.
 */
async function l7(lab: DemoLab, check: () => void): Promise<number> {
  const backend = lab.pods.find((p) => p.name === "backend")!;
  const frontend = lab.pods.find((p) => p.name === "frontend")!;
  await lab.httpServer(backend.netns, 80);
  say();
  say(bold("  L7: HTTP rules, enforced by cilia's proxy"));
  row(
    "policy",
    `bin/cilia policy import ${HTTP_POLICY}: ${await lab.importPolicy(`${ROOT}${HTTP_POLICY}`)}`,
  );
  let wrong = 0;
  for (const r of L7_REQUESTS) {
    check();
    const { code, body } = await curl(frontend.netns, r.method, `http://${backend.ip}${r.path}`);
    const ok = code === r.expect;
    if (!ok) wrong++;
    const what = `frontend → backend    HTTP ${r.method} ${r.path}`.padEnd(52);
    const answer = code === 0 ? "no answer" : `${code} ${body}`;
    say(
      `  ${what}${
        ok ? (code === 200 ? green(answer) : red(answer)) : red(`${answer}  UNEXPECTED`)
      }`,
    );
  }
  return wrong;
}

async function run(lab: DemoLab, once: boolean, stopped: Promise<void>, check: () => void) {
  await setUp(lab, check);
  const log = new EventLog();
  await log.start(lab.api);
  try {
    const n = await names(lab);
    const wrong = await traffic(lab, log, n, check) + await l7(lab, check) +
      await dnsScene(lab, check) + await servicesScene(lab, check);
    await lab.closePeers("client"); // denied connects would keep retrying their SYNs
    if (once) return wrong === 0 ? 0 : 1;
    await live(lab, log, n, stopped);
    return 0;
  } finally {
    await log.stop();
  }
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      once: { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
      nodes: { type: "string" },
      "routing-mode": { type: "string" },
    },
  });
  if (values.help) {
    say(
      "Usage: deno task demo [--once] [--nodes N [--routing-mode tunnel|native]]\n\n" +
        "  --once          send the traffic, print the report and clean up\n" +
        "  --nodes N       N nodes (2–4) with one etcd, traffic across nodes (scripts/demo/_multinode.ts)\n" +
        "  --routing-mode  between nodes: tunnel (VXLAN, default) or native (routes)",
    );
    return 0;
  }
  if (values.nodes !== undefined || values["routing-mode"] !== undefined) {
    const { nodes, once } = values, routingMode = values["routing-mode"];
    return await runMultinode({ nodes, routingMode, once: once ?? false, preflight });
  }
  say(bold("cilia demo: a node, three pods and an outside host, as network namespaces"));
  say();
  let lab: DemoLab | undefined;
  const stop = Promise.withResolvers<void>();
  let interrupted = 0;
  const onSignal = () => {
    // Ctrl-C reaches both `deno task` (which passes it on) and the demo: one press, two signals.
    if (interrupted > 0 && Date.now() - interrupted > 2000) {
      console.error("\nInterrupted again: exiting now; the next demo run removes what is left");
      Deno.exit(130);
    }
    interrupted ||= Date.now();
    stop.resolve();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const check = () => {
    if (interrupted > 0) throw new Interrupted();
  };
  let code = 1;
  try {
    row("preflight", await preflight());
    if (await sweep()) row("", dim("removed what an earlier, interrupted demo left behind"));
    lab = await DemoLab.create();
    row("node", `${NODE} (pod CIDRs ${POD_CIDR}, ${POD_CIDR_V6}; its own bpffs)`);
    code = await run(lab, values.once ?? false, stop.promise, check);
  } catch (err) {
    if (err instanceof Interrupted) code = 130;
    else {
      console.error(red(`\ndemo: ${err instanceof Error ? err.message : err}`));
      if (lab) console.error(dim(`agent log (last lines):\n${await lab.agentLog()}`));
    }
  } finally {
    if (lab) {
      say();
      say(dim("  cleaning up: CNI DEL of the pods, the agent, the namespaces, the bpffs…"));
      await lab.close();
      say(dim(`  removed everything the demo made (${RUN_DIR}, ciliademo-* namespaces)`));
    }
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
  return code;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
