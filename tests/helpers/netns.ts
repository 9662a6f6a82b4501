// A per-test network lab made of network namespaces: nodes (each with its own bpffs instance),
// pods whose veth has its host side (lxc…) in the node, and external hosts on documentation
// ranges routed through a node. Every netns, link and mount carries the lab's random tag, traffic
// stays inside the lab, and close() (or `await using`) removes everything even after failures;
// create() first sweeps what crashed labs left behind. It sets up topology and runs commands; it
// knows nothing about cilia's datapath.
//
// How commands enter a node: `ip netns exec <node> sh -c 'mount --bind <bpffs> /sys/fs/bpf &&
// exec CMD'` (nodeArgv), so the command sees the node's own bpffs at /sys/fs/bpf and a correct
// /sys/class/net, as the agent will. In-process callers instead use the node's bpffs directory
// (visible from the host mount namespace) together with `nsenter --net` for netlink tools.

import { execCommand } from "../../agent/sys/exec.ts";

/** The socket helper run by Lab.peer() in a netns: JSON lines in, JSON lines out. */
export const PEER_SCRIPT = `
const enc = new TextEncoder(), dec = new TextDecoder();
const conns = new Map();
const reply = (o) => Deno.stdout.writeSync(enc.encode(JSON.stringify(o) + "\\n"));
function within(p, ms) {
  let t;
  p.catch(() => {});
  return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error("timeout")), ms); })])
    .finally(() => clearTimeout(t));
}
async function echo(c) {
  const buf = new Uint8Array(65536);
  try { for (;;) { const n = await c.read(buf); if (n === null) break; await c.write(buf.subarray(0, n)); } } catch {}
  try { c.close(); } catch {}
}
async function serveTcp(l) { for await (const c of l) echo(c); }
async function serveUdp(l) { for (;;) { const [d, a] = await l.receive(); await l.send(d, a); } }
async function exchange(c, data) {
  await c.write(enc.encode(data));
  const buf = new Uint8Array(data.length);
  let got = 0;
  while (got < data.length) { const n = await c.read(buf.subarray(got)); if (n === null) throw new Error("closed"); got += n; }
  return dec.decode(buf);
}
// The abort closes a connect that timed out: the kernel would retry its SYN for minutes, and each
// retry would be one more drop event for the tests that come after.
async function connect(host, port, ms) {
  const ac = new AbortController();
  const t = setTimeout(() => ac.abort(), ms);
  try { return await Deno.connect({ hostname: host, port, signal: ac.signal }); }
  catch (e) { throw ac.signal.aborted ? new Error("timeout") : e; }
  finally { clearTimeout(t); }
}
async function handle(r) {
  if (r.op === "listen" && r.proto === "tcp") { serveTcp(Deno.listen({ hostname: "::", port: r.port })); return {}; }
  if (r.op === "listen" && r.proto === "udp") {
    serveUdp(Deno.listenDatagram({ transport: "udp", hostname: "::", port: r.port })); return {};
  }
  if (r.op === "probe" && r.proto === "tcp") {
    const start = Date.now();
    const c = await connect(r.host, r.port, r.timeoutMs);
    try { await within(exchange(c, "probe"), Math.max(1, r.timeoutMs - (Date.now() - start))); }
    finally { try { c.close(); } catch {} }
    return {};
  }
  if (r.op === "probe" && r.proto === "udp") {
    const s = Deno.listenDatagram({ transport: "udp", hostname: r.host.includes(":") ? "::" : "0.0.0.0", port: 0 });
    try {
      await s.send(enc.encode("probe"), { transport: "udp", hostname: r.host, port: r.port });
      await within(s.receive(), r.timeoutMs);
    } finally { s.close(); }
    return {};
  }
  if (r.op === "open") { conns.set(r.conn, { c: await connect(r.host, r.port, r.timeoutMs), broken: false }); return {}; }
  if (r.op === "send") {
    const e = conns.get(r.conn);
    if (!e || e.broken) throw new Error("no usable connection " + r.conn);
    try { return { data: await within(exchange(e.c, r.data), r.timeoutMs) }; }
    catch (err) { e.broken = true; throw err; }
  }
  throw new Error("unknown op " + r.op);
}
let buf = "";
for await (const chunk of Deno.stdin.readable) {
  buf += dec.decode(chunk, { stream: true });
  let i;
  while ((i = buf.indexOf("\\n")) >= 0) {
    const line = buf.slice(0, i); buf = buf.slice(i + 1);
    if (!line) continue;
    const r = JSON.parse(line);
    try { reply({ id: r.id, ok: true, ...(await handle(r)) }); }
    catch (e) { reply({ id: r.id, ok: false, error: String(e && e.message || e) }); }
  }
}
Deno.exit(0);
`;

const LAB_ROOT = "/tmp";
const TAG_RE = /^cl([0-9a-f]{4})-/;

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Node {
  name: string;
  netns: string;
  /** This node's bpffs instance, mounted in the host mount namespace. */
  bpffs: string;
  index: number;
  pods: number;
}

export interface Pod {
  name: string;
  netns: string;
  node: Node;
  /** The host-side veth in the node netns. */
  ifname: string;
  ipv4: string;
  ipv6: string;
  mac: string;
}

export interface External {
  name: string;
  netns: string;
  ipv4: string;
  ipv6: string;
}

function exec(argv: string[], stdin?: string): Promise<ExecResult> {
  return execCommand(argv, stdin === undefined ? {} : { stdin });
}

async function must(argv: string[]): Promise<string> {
  const r = await exec(argv);
  if (r.code !== 0) {
    throw new Error(
      `Command failed: "${argv.join(" ")}" exited with ${r.code}: ${r.stderr.trim()}`,
    );
  }
  return r.stdout;
}

function alive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** True when path exists and was modified less than ms ago. */
async function youngerThan(path: string, ms: number): Promise<boolean> {
  try {
    const { mtime } = await Deno.stat(path);
    return mtime !== null && Date.now() - mtime.getTime() < ms;
  } catch {
    return false;
  }
}

/** Mount points under dir (deepest first), from /proc/self/mountinfo. */
async function mountsUnder(dir: string): Promise<string[]> {
  const info = await Deno.readTextFile("/proc/self/mountinfo");
  return info.split("\n").map((l) => l.split(" ")[4] ?? "").filter((m) =>
    m === dir || m.startsWith(dir + "/")
  ).sort((a, b) => b.length - a.length);
}

async function removeTagged(tag: string, dir: string): Promise<void> {
  const list = await exec(["ip", "netns", "list"]);
  for (const line of list.stdout.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    if (name.startsWith(tag)) await exec(["ip", "netns", "del", name]);
  }
  for (const m of await mountsUnder(dir)) await exec(["umount", "-l", m]);
  await Deno.remove(dir, { recursive: true }).catch(() => {});
}

/** Removes netns and mounts of labs whose process is gone. */
export async function sweepLeftovers(): Promise<string[]> {
  const tags = new Set<string>();
  for (const line of (await exec(["ip", "netns", "list"])).stdout.split("\n")) {
    const m = TAG_RE.exec(line);
    if (m) tags.add(m[1]!);
  }
  for await (const e of Deno.readDir(LAB_ROOT)) {
    const m = /^cilia-lab-([0-9a-f]{4})$/.exec(e.name);
    if (m) tags.add(m[1]!);
  }
  const swept: string[] = [];
  for (const t of tags) {
    const dir = `${LAB_ROOT}/cilia-lab-${t}`;
    const pid = Number(await Deno.readTextFile(`${dir}/pid`).catch(() => "0"));
    if (pid > 0 && alive(pid)) continue;
    // No pid yet: another test process may be between create()'s mkdir and its pid write.
    if (pid === 0 && await youngerThan(dir, 60_000)) continue;
    await removeTagged(`cl${t}-`, dir);
    swept.push(t);
  }
  return swept;
}

export class Lab implements AsyncDisposable {
  /** Four hex digits shared by every name this lab creates. */
  readonly tag: string;
  /** "cl<tag>-": the netns prefix. */
  readonly prefix: string;
  readonly dir: string;
  readonly #children = new Set<Deno.ChildProcess>();
  readonly #peers = new Map<string, Peer>();
  #nodes = 0;
  #closed = false;

  private constructor(tag: string) {
    this.tag = tag;
    this.prefix = `cl${tag}-`;
    this.dir = `${LAB_ROOT}/cilia-lab-${tag}`;
  }

  static async create(): Promise<Lab> {
    await sweepLeftovers();
    for (;;) {
      const tag = crypto.getRandomValues(new Uint16Array(1))[0]!.toString(16).padStart(4, "0");
      const lab = new Lab(tag);
      try {
        await Deno.mkdir(lab.dir);
      } catch {
        continue; // taken by a live lab
      }
      await Deno.writeTextFile(`${lab.dir}/pid`, String(Deno.pid));
      await Deno.writeTextFile(`${lab.dir}/peer.ts`, PEER_SCRIPT);
      return lab;
    }
  }

  /** Runs argv in a netns (ip netns exec); never throws for a non-zero exit. */
  exec(netns: string, argv: string[], stdin?: string): Promise<ExecResult> {
    return exec(["ip", "netns", "exec", netns, ...argv], stdin);
  }

  /** Like exec, but throws on a non-zero exit and returns stdout. */
  async run(netns: string, argv: string[]): Promise<string> {
    return await must(["ip", "netns", "exec", netns, ...argv]);
  }

  /** argv that runs CMD inside the node with the node's bpffs bind-mounted at /sys/fs/bpf. */
  nodeArgv(node: Node, argv: string[]): string[] {
    return [
      "ip",
      "netns",
      "exec",
      node.netns,
      "sh",
      "-c",
      'mount --bind "$0" /sys/fs/bpf && exec "$@"',
      node.bpffs,
      ...argv,
    ];
  }

  /** Runs argv inside the node (see nodeArgv). */
  execInNode(node: Node, argv: string[], stdin?: string): Promise<ExecResult> {
    return exec(this.nodeArgv(node, argv), stdin);
  }

  async addNode(name: string): Promise<Node> {
    const netns = `${this.prefix}${name}`;
    const index = ++this.#nodes;
    const bpffs = `${this.dir}/bpf-${name}`;
    await must(["ip", "netns", "add", netns]);
    await Deno.mkdir(bpffs);
    await must(["mount", "-t", "bpf", "bpf", bpffs]);
    const sh = (cmd: string) => must(["ip", "netns", "exec", netns, "sh", "-c", cmd]);
    await sh(
      "ip link set lo up && ip addr add 169.254.1.1/32 dev lo && " +
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 " +
        "net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 " +
        "net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0",
    );
    return { name, netns, bpffs, index, pods: 0 };
  }

  /** A pod netns with eth0; host side lxc<tag><n> in the node, routed /32 and /128. */
  async addPod(node: Node, name: string): Promise<Pod> {
    const netns = `${this.prefix}${name}`;
    const n = ++node.pods;
    const ifname = `lxc${this.tag}${n}`;
    const ipv4 = `10.200.${node.index}.${10 + n}`;
    const ipv6 = `fd00:200:${node.index}::${(10 + n).toString(16)}`;
    await must(["ip", "netns", "add", netns]);
    const inPod = (cmd: string) => must(["ip", "netns", "exec", netns, "sh", "-c", cmd]);
    const inNode = (cmd: string) => must(["ip", "netns", "exec", node.netns, "sh", "-c", cmd]);
    await inPod(
      "ip link set lo up && sysctl -qw net.ipv6.conf.default.accept_dad=0 " +
        "net.ipv6.conf.all.accept_dad=0 net.ipv4.conf.all.rp_filter=0",
    );
    await inNode(
      `ip link add ${ifname} type veth peer name eth0 netns ${netns} && ` +
        `ip link set ${ifname} up && ip -6 addr add fe80::1/64 dev ${ifname} nodad && ` +
        `ip route add ${ipv4}/32 dev ${ifname} && ip -6 route add ${ipv6}/128 dev ${ifname}`,
    );
    await inPod(
      `ip addr add ${ipv4}/32 dev eth0 && ip -6 addr add ${ipv6}/128 dev eth0 nodad && ` +
        `ip link set eth0 up && ip route add 169.254.1.1 dev eth0 scope link && ` +
        `ip route add default via 169.254.1.1 dev eth0 && ` +
        `ip -6 route add default via fe80::1 dev eth0`,
    );
    const link = JSON.parse(await this.run(netns, ["ip", "-j", "link", "show", "eth0"])) as {
      address: string;
    }[];
    return { name, netns, node, ifname, ipv4, ipv6, mac: link[0]!.address };
  }

  /** An external host at 203.0.113.10 / 2001:db8:113::10, routed through node. */
  async addExternal(node: Node, name: string): Promise<External> {
    const netns = `${this.prefix}${name}`;
    const link = `ext${this.tag}`;
    await must(["ip", "netns", "add", netns]);
    const inExt = (cmd: string) => must(["ip", "netns", "exec", netns, "sh", "-c", cmd]);
    await inExt(
      "ip link set lo up && sysctl -qw net.ipv6.conf.all.accept_dad=0 " +
        "net.ipv6.conf.default.accept_dad=0",
    );
    await must([
      "ip",
      "netns",
      "exec",
      node.netns,
      "sh",
      "-c",
      `ip link add ${link} type veth peer name eth0 netns ${netns} && ` +
      `ip addr add 203.0.113.1/24 dev ${link} && ` +
      `ip -6 addr add 2001:db8:113::1/64 dev ${link} nodad && ip link set ${link} up`,
    ]);
    await inExt(
      "ip addr add 203.0.113.10/24 dev eth0 && ip -6 addr add 2001:db8:113::10/64 dev eth0 nodad" +
        " && ip link set eth0 up && ip route add default via 203.0.113.1 && " +
        "ip -6 route add default via 2001:db8:113::1",
    );
    return { name, netns, ipv4: "203.0.113.10", ipv6: "2001:db8:113::10" };
  }

  /** One ping; true when a reply came back within timeoutSec. */
  async ping(netns: string, ip: string, opts: { timeoutSec?: number } = {}): Promise<boolean> {
    const r = await this.exec(netns, ["ping", "-c", "1", "-W", String(opts.timeoutSec ?? 0.5), ip]);
    return r.code === 0;
  }

  /** The long-lived socket helper of a netns (started on first use). */
  peer(netns: string): Peer {
    let p = this.#peers.get(netns);
    if (!p) {
      p = spawnPeer(netns, `${this.dir}/peer.ts`);
      this.#children.add(p.process);
      this.#peers.set(netns, p);
    }
    return p;
  }

  /** Starts a long-running process in a netns; killed in close(). */
  spawn(argv: string[], opts: { stdout?: "piped" | "null" } = {}): Deno.ChildProcess {
    const child = new Deno.Command(argv[0]!, {
      args: argv.slice(1),
      stdin: "null",
      stdout: opts.stdout ?? "null",
      stderr: "inherit",
    }).spawn();
    this.#children.add(child);
    return child;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#peers.values()) await p.close().catch(() => {});
    for (const c of this.#children) {
      try {
        c.kill("SIGKILL");
      } catch { /* already gone */ }
      await c.status.catch(() => {});
      try {
        // Reading `stdout` throws when the child was spawned without a pipe.
        await c.stdout.cancel().catch(() => {});
      } catch { /* stdout was not piped */ }
    }
    await removeTagged(this.prefix, this.dir);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

export interface PeerReply {
  ok: boolean;
  error?: string;
  data?: string;
}

/** Starts the socket helper (PEER_SCRIPT, written to scriptPath) in a netns. */
export function spawnPeer(netns: string, scriptPath: string): Peer {
  const child = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      netns,
      Deno.execPath(),
      "run",
      "-A",
      "--no-config",
      "--unstable-net",
      scriptPath,
    ],
    env: { DENO_NO_UPDATE_CHECK: "1", DENO_NO_PROMPT: "1" },
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  return new Peer(child);
}

/** Line-delimited JSON requests to the socket helper running in one netns (see peer script). */
export class Peer {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncIterator<string>;
  #next = 1;

  constructor(child: Deno.ChildProcess) {
    this.#child = child;
    this.#writer = child.stdin.getWriter();
    this.#lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
      new LineSplitter(),
    )[Symbol.asyncIterator]();
  }

  /** The helper's process. */
  get process(): Deno.ChildProcess {
    return this.#child;
  }

  /** Sends one request and waits for its reply (requests are answered in order). */
  async call(req: Record<string, unknown>): Promise<PeerReply> {
    const id = this.#next++;
    await this.#writer.write(new TextEncoder().encode(JSON.stringify({ id, ...req }) + "\n"));
    const line = await this.#lines.next();
    if (line.done) throw new Error("The peer helper exited");
    return JSON.parse(line.value) as PeerReply;
  }

  /** Starts an echo server (tcp or udp) on port. */
  async listen(proto: "tcp" | "udp", port: number): Promise<void> {
    const r = await this.call({ op: "listen", proto, port });
    if (!r.ok) throw new Error(`Cannot listen on ${proto}/${port}: ${r.error}`);
  }

  /** True when a connection (tcp) or datagram (udp) got its echo within timeoutMs. */
  async probe(proto: "tcp" | "udp", host: string, port: number, timeoutMs = 400): Promise<boolean> {
    return (await this.call({ op: "probe", proto, host, port, timeoutMs })).ok;
  }

  /** Opens a TCP connection kept under name for send(). */
  async open(name: string, host: string, port: number, timeoutMs = 1000): Promise<boolean> {
    return (await this.call({ op: "open", conn: name, host, port, timeoutMs })).ok;
  }

  /** Sends data on an open connection; true when the echo came back within timeoutMs. */
  async send(name: string, data: string, timeoutMs = 400): Promise<boolean> {
    return (await this.call({ op: "send", conn: name, data, timeoutMs })).ok;
  }

  async close(): Promise<void> {
    await this.#writer.close().catch(() => {});
    await this.#lines.return?.();
    await this.#child.status;
  }
}

class LineSplitter extends TransformStream<string, string> {
  constructor() {
    let buf = "";
    super({
      transform(chunk, ctl) {
        buf += chunk;
        const parts = buf.split("\n");
        buf = parts.pop()!;
        for (const p of parts) if (p) ctl.enqueue(p);
      },
      flush(ctl) {
        if (buf) ctl.enqueue(buf);
      },
    });
  }
}
