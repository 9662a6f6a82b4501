// What the socket-LB e2e test needs beyond _services_lab.ts: a per-test cgroup v2 directory (never
// the machine's root: other tests run at the same time with the same VIPs), bind-mounted outside
// /sys so the agent, which `ip netns exec` gives a fresh /sys, can attach to it; commands run
// inside the cgroup; the C client (_sock_peer.c) built with clang; and iptables OUTPUT counters in
// a pod, which count what the pod's own stack sends (the socket's destination, before any tc
// program): the wire as the client writes it; the node's session-affinity entries read (and
// aged) through bpftool, and a netns's cookie. Needs root.
import { execCommand } from "../../agent/sys/exec.ts";
import type { CiliaNode, TestPod } from "../cni/_fixture.ts";
import { waitListening } from "./_services_lab.ts";

/** Where cgroup2 is mounted on this machine (hybrid v1/v2: /sys/fs/cgroup/unified). */
export async function cgroup2Mount(): Promise<string | undefined> {
  for (const line of (await Deno.readTextFile("/proc/self/mountinfo")).split("\n")) {
    const [left, right] = line.split(" - ");
    if (right?.split(" ")[0] === "cgroup2") return left!.split(" ")[4];
  }
  return undefined;
}

async function run(argv: string[]): Promise<string> {
  const r = await execCommand(argv);
  if (r.code !== 0) throw new Error(`${argv.join(" ")}: exit ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** A cgroup of its own for one test, and the same directory bind-mounted at `agentPath`. */
export class TestCgroup implements AsyncDisposable {
  readonly path: string;
  readonly dir: string;
  readonly agentPath: string;

  private constructor(path: string, dir: string) {
    this.path = path;
    this.dir = dir;
    this.agentPath = `${dir}/cgroup`;
  }

  static async create(): Promise<TestCgroup> {
    const mount = await cgroup2Mount();
    if (mount === undefined) throw new Error("No cgroup2 mount on this machine");
    const tag = `cilia-sock-${crypto.randomUUID().slice(0, 8)}`;
    const dir = await Deno.makeTempDir({ prefix: `${tag}-` });
    const cg = new TestCgroup(`${mount}/${tag}`, dir);
    await Deno.mkdir(cg.path);
    try {
      await Deno.mkdir(cg.agentPath);
      await run(["mount", "--bind", cg.path, cg.agentPath]);
    } catch (err) {
      await cg.close();
      throw err;
    }
    return cg;
  }

  /** argv run as a process of this cgroup (its children stay in it). */
  argv(argv: string[]): string[] {
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', this.path, ...argv];
  }

  /** The processes in the cgroup (a test's cleanup kills them before the rmdir). */
  async pids(): Promise<number[]> {
    const text = await Deno.readTextFile(`${this.path}/cgroup.procs`).catch(() => "");
    return text.split("\n").filter((l) => l !== "").map(Number);
  }

  async close(): Promise<void> {
    for (const pid of await this.pids()) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* gone */ }
    }
    await execCommand(["umount", "-l", this.agentPath]);
    for (let i = 0; i < 50; i++) {
      if (await Deno.remove(this.path).then(() => true, () => false)) break;
      await new Promise((r) => setTimeout(r, 100)); // the killed processes leave
    }
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Builds _sock_peer.c into dir; the binary's path. */
export async function buildSockPeer(dir: string): Promise<string> {
  const src = new URL("./_sock_peer.c", import.meta.url).pathname;
  await run(["clang", "-O2", "-Wall", "-o", `${dir}/sock_peer`, src]);
  return `${dir}/sock_peer`;
}

/** iptables (or ip6tables) OUTPUT rules in netns that only count packets to each address. */
export async function countTo(netns: string, v6: boolean, addrs: string[]): Promise<void> {
  const tool = v6 ? "ip6tables" : "iptables";
  for (const a of addrs) {
    await run(["ip", "netns", "exec", netns, tool, "-w", "-A", "OUTPUT", "-d", a]);
  }
}

/** The packets each counting rule saw, by address. */
export async function counted(netns: string, v6: boolean): Promise<Record<string, number>> {
  const tool = v6 ? "ip6tables" : "iptables";
  const out = await run(["ip", "netns", "exec", netns, tool, "-w", "-nvxL", "OUTPUT"]);
  const got: Record<string, number> = {};
  for (const line of out.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (!/^\d+$/.test(f[0] ?? "") || f.length < 6) continue;
    got[f.at(-1)!.replace(/\/(32|128)$/, "")] = Number(f[0]); // the destination: last column
  }
  return got;
}

// Answers every read with its name, on [::]:8080 (IPv4 too: a dual-stack socket), and every UDP
// datagram to 0.0.0.0:8080.
const SERVER = `
const [name] = Deno.args;
const enc = new TextEncoder();
(async () => {
  const u = Deno.listenDatagram({ hostname: "0.0.0.0", port: 8080, transport: "udp" });
  for await (const [, from] of u) await u.send(enc.encode(name + "\\n"), from);
})();
for await (const c of Deno.listen({ hostname: "::", port: 8080 })) {
  (async () => {
    const buf = new Uint8Array(64);
    try { while ((await c.read(buf)) !== null) await c.write(enc.encode(name + "\\n")); } catch {}
    try { c.close(); } catch {}
  })();
}`;

/**
 * Backends b1 and b2 (labels app=b1, app=b2) on node `n`, each answering with its name on
 * TCP and UDP 8080 (SERVER) and running dnsmasq on its port 53 (svc.test → 192.0.2.1 / .2);
 * their processes go into `procs` at once, so the caller's `finally` kills them even when a later
 * start fails. Returns once all three sockets of each listen.
 */
export async function startSockBackends(
  n: CiliaNode,
  procs: Deno.ChildProcess[],
): Promise<[TestPod, TestPod]> {
  await Deno.writeTextFile(`${n.dir}/server.js`, SERVER);
  const b: TestPod[] = [];
  for (const [i, name] of ["b1", "b2"].entries()) {
    const pod = await n.addPod(name, { app: name });
    b.push(pod);
    procs.push(
      new Deno.Command("ip", {
        args: ["netns", "exec", pod.netns, Deno.execPath(), "run", "-A", "--no-config"]
          .concat(["--unstable-net", `${n.dir}/server.js`, name]),
        stdout: "null",
        stderr: "inherit",
      }).spawn(),
      new Deno.Command("ip", {
        args: ["netns", "exec", pod.netns, "dnsmasq", "--no-daemon", "--port=53"].concat(
          [`--listen-address=${pod.ipv4}`, "--bind-interfaces", "--no-resolv", "--no-hosts"],
          ["--conf-file=/dev/null", "--pid-file=", "--user=root", "--log-facility=-"],
          [`--address=/svc.test/192.0.2.${i + 1}`],
        ),
        stdout: "null",
        stderr: "null",
      }).spawn(),
    );
  }
  for (const p of b) await waitListening(n.lab, p.netns, "( sport = :8080 or sport = :53 )", 3);
  return b as [TestPod, TestPod];
}

const hexBytes = (hex: string[]) => Uint8Array.from(hex.map((h) => parseInt(h, 16)));

/** A pinned map's entries as raw key and value bytes (`bpftool -j map dump`). */
export async function dumpMap(path: string): Promise<{ key: Uint8Array; value: Uint8Array }[]> {
  const rows = JSON.parse(await run(["bpftool", "-j", "map", "dump", "pinned", path])) as {
    key: string[];
    value: string[];
  }[];
  return rows.map((r) => ({ key: hexBytes(r.key), value: hexBytes(r.value) }));
}

/** lib/lb_affinity.h's LB_AFFINITY_NETNS: the key's family of a socket LB client. */
export const AFFINITY_NETNS = 0xff;

/** One cilia_lb_affinity entry (bpf/lib/lb_affinity.h's lb_affinity_key → lb_affinity). */
export interface AffinityEntry {
  key: Uint8Array;
  /** The netns cookie (family AFFINITY_NETNS), else undefined. */
  netns?: bigint;
  family: number;
  svcId: number;
  backendId: number;
  lastUsed: bigint;
}

/** The node's session-affinity entries (<bpffs>/maps/cilia_lb_affinity). */
export async function affinityEntries(bpffs: string): Promise<AffinityEntry[]> {
  return (await dumpMap(`${bpffs}/maps/cilia_lb_affinity`)).map(({ key, value }) => {
    const k = new DataView(key.buffer), v = new DataView(value.buffer);
    const family = key[18]!;
    return {
      key,
      family,
      svcId: k.getUint16(16, true),
      backendId: v.getUint32(8, true),
      lastUsed: v.getBigUint64(0, true),
      ...(family === AFFINITY_NETNS ? { netns: k.getBigUint64(0, true) } : {}),
    };
  });
}

/** Writes an affinity entry as the datapath would (a test ages or redirects one). */
export async function writeAffinity(
  bpffs: string,
  e: { key: Uint8Array; backendId: number; lastUsed: bigint },
): Promise<void> {
  const value = new Uint8Array(16), v = new DataView(value.buffer);
  v.setBigUint64(0, e.lastUsed, true);
  v.setUint32(8, e.backendId, true);
  const hex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0"));
  await run(["bpftool", "map", "update", "pinned", `${bpffs}/maps/cilia_lb_affinity`, "key", "hex"]
    .concat(hex(e.key), ["value", "hex"], hex(value)));
}

/** The IPv4 backends' ids by address, of one protocol (<bpffs>/maps/cilia_lb_backends). */
export async function backendIds(bpffs: string, proto = 6): Promise<Map<string, number>> {
  const ids = new Map<string, number>();
  for (const { key, value } of await dumpMap(`${bpffs}/maps/cilia_lb_backends`)) {
    if (value[19] !== 4 || value[18] !== proto) continue; // lb_backend.family, .proto
    ids.set([...value.subarray(0, 4)].join("."), new DataView(key.buffer).getUint32(0, true));
  }
  return ids;
}

/** The cookie of netns (SO_NETNS_COOKIE, what bpf_get_netns_cookie gives its sockets). */
export async function netnsCookie(netns: string): Promise<bigint> {
  const py = "import socket; s = socket.socket(); " +
    'print(int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 71, 8), "little"))';
  return BigInt((await run(["ip", "netns", "exec", netns, "python3", "-c", py])).trim());
}
