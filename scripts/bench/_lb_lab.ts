// The lab of `bench lb`: one node netns per setup, each with a client pod and a server pod, so
// every setup is live at once and the bench can alternate between them round by round (machine
// load then hits every setup alike). The setups: a bare node (the direct baseline), nodes with
// kube-proxy's iptables rules for N services, nodes with cilia attached (KernelSink, as the agent)
// and the same N services. The origin in every server pod is a one-thread haproxy answering
// `200 ok` itself (`http-request return`: no backend, a few µs per request); the load generator is
// wrk (C, epoll). Beside it, the lean connection tool's server (_connrate.c: 1 byte each way, then
// close) for new connections per second without HTTP's cost. The services and kube-proxy's rules come from _lb_services.ts. Sysctls are set in
// the lab's namespaces only; every netns, process and mount goes in close().
import { KernelSink } from "../../agent/datapath/kernel_sink.ts";
import type { DatapathEndpoint } from "../../agent/endpoint/datapath_sink.ts";
import { Logger } from "../../agent/log.ts";
import { Lab, type Node, type Pod } from "../../tests/helpers/netns.ts";
import { benchServices, CONN_PORT, kubeProxyRules, ORIGIN_PORT } from "./_lb_services.ts";
import { buildConnrate, type ConnrateResult, parseConnrate } from "./_connrate.ts";
import { haproxyOrigin, parseWrk, waitHttp200, type WrkCounts } from "./_wrk.ts";
import { attachSockLb, runInCgroup, type TestCgroup } from "./_lb_sock.ts";

export { parseWrk };

const BUILD_DIR = new URL("../../bpf/build", import.meta.url).pathname;
/** Direct setups connect to DIRECT_PORT of the origin, services to ORIGIN_PORT, so that two
 * paths to one server never share a tuple (nor the server's TIME_WAIT sockets). */
export const DIRECT_PORT = 8081;
/** The same for the lean connection tool: direct setups connect to CONN_DIRECT_PORT. */
export const CONN_DIRECT_PORT = 9081;

export type SetupKind = "direct" | "iptables" | "cilia";

export interface SetupSpec {
  name: string;
  kind: SetupKind;
  /** Services installed on the node (0 for direct). */
  services: number;
  /** Connect to the server pod's own address instead of the service (a direct path). */
  toServer?: boolean;
  /** Share the node of the setup with this name (a second path through one node). */
  sameNodeAs?: string;
  /** Socket LB (bpf/sock.c): the client runs in a cgroup with the node's programs (_lb_sock.ts). */
  sock?: boolean;
}

export interface Setup extends SetupSpec {
  node: Node;
  client: Pod;
  server: Pod;
  /** Where the client connects: the measured service's address and port, or the server's. */
  target: string;
  port: number;
  /** The lean connection tool's port at `target`. */
  connPort: number;
  /** The origin (haproxy) process. */
  originPid: number;
  /** The lean connection tool's server process. */
  connServerPid: number;
  /** Time to install the services (iptables-restore, or KernelSink.applyServices). */
  installMs?: number;
  sink?: KernelSink;
  /** The socket-LB setup's cgroup, where its client's tools run. */
  cgroup?: TestCgroup;
}

/** What wrk measured, and the CPU it took. */
export interface WrkResult extends WrkCounts {
  /**
   * CPU seconds wrk and the origin used (user + system; with tick accounting the softirq work
   * of the packets they send, the datapath included, is charged to them). Other jobs on the
   * machine do not add to it, unlike to the rate.
   */
  cpuSeconds?: number;
}

export class LbLab implements AsyncDisposable {
  readonly lab: Lab;
  readonly setups: Setup[] = [];
  /** The lean connection tool's binary (built into the lab's directory). */
  connrateBin = "";

  private constructor(lab: Lab) {
    this.lab = lab;
  }

  static async create(specs: readonly SetupSpec[]): Promise<LbLab> {
    const l = new LbLab(await Lab.create());
    try {
      l.connrateBin = await buildConnrate(l.lab.dir);
      for (const s of specs) await l.#add(s);
      for (const s of l.setups) await l.#waitOrigin(s);
      return l;
    } catch (e) {
      await l.close();
      throw e;
    }
  }

  async #add(spec: SetupSpec): Promise<void> {
    if (spec.sameNodeAs !== undefined) {
      const shared = this.setups.find((s) => s.name === spec.sameNodeAs);
      if (!shared) {
        throw new Error(`Setup "${spec.name}": no earlier setup "${spec.sameNodeAs}" to share`);
      }
      const direct = spec.toServer || spec.kind === "direct";
      const target = direct ? shared.server.ipv4 : shared.target;
      const { installMs: _, cgroup: __, ...node } = shared;
      this.setups.push({
        ...node,
        ...spec,
        target,
        port: direct ? DIRECT_PORT : ORIGIN_PORT,
        connPort: direct ? CONN_DIRECT_PORT : CONN_PORT,
        ...(spec.sock ? { cgroup: await attachSockLb(shared.node, BUILD_DIR) } : {}),
      });
      return;
    }
    const lab = this.lab, n = this.setups.length;
    const node = await lab.addNode(`n${n}`);
    const client = await lab.addPod(node, `c${n}`), server = await lab.addPod(node, `s${n}`);
    // Many short connections from one address: reuse the client's ports, use all of them.
    await lab.run(client.netns, [
      "sysctl",
      "-qw",
      "net.ipv4.tcp_tw_reuse=1",
      "net.ipv4.ip_local_port_range=1024 65000",
    ]);
    const cfg = `${lab.dir}/origin-${n}.cfg`;
    await Deno.writeTextFile(cfg, haproxyOrigin([ORIGIN_PORT, DIRECT_PORT]));
    // `ip netns exec` execs haproxy in place: the child's pid is the origin's.
    const originPid = lab.spawn(["ip", "netns", "exec", server.netns, "haproxy", "-f", cfg]).pid;
    const connServerPid = lab.spawn([
      ...["ip", "netns", "exec", server.netns, this.connrateBin, "server"],
      ...[String(CONN_PORT), String(CONN_DIRECT_PORT)],
    ]).pid;
    const { specs, vip } = benchServices(spec.services, server.ipv4);
    const direct = spec.toServer || spec.kind === "direct";
    const setup: Setup = {
      ...spec,
      node,
      client,
      server,
      originPid,
      connServerPid,
      target: direct ? server.ipv4 : vip,
      port: direct ? DIRECT_PORT : ORIGIN_PORT,
      connPort: direct ? CONN_DIRECT_PORT : CONN_PORT,
    };
    if (spec.kind === "iptables") {
      const text = kubeProxyRules(specs);
      const t0 = performance.now();
      const r = await lab.exec(node.netns, ["iptables-restore"], text);
      if (r.code !== 0) throw new Error(`iptables-restore exited with ${r.code}: ${r.stderr}`);
      setup.installMs = performance.now() - t0;
    } else if (spec.kind === "cilia") {
      const sink = setup.sink = await attachCilia(node, client, server);
      const t0 = performance.now();
      await sink.applyServices(specs);
      setup.installMs = performance.now() - t0;
      if (spec.sock) setup.cgroup = await attachSockLb(node, BUILD_DIR);
    }
    this.setups.push(setup);
  }

  async #waitOrigin(s: Setup): Promise<void> {
    const url = `http://${s.target}:${s.port}/`;
    const failure = `Setup "${s.name}": no answer from the origin at ${url}`;
    await waitHttp200(this.lab, s.client.netns, url, failure, 50);
    for (let i = 0; i < 50; i++) {
      const r = await this.connrate(s, { seconds: 0.1, connections: 1 }).catch(() => undefined);
      if (r && r.connections > 0) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(
      `Setup "${s.name}": no answer from the connection tool at ` +
        `${s.target}:${s.connPort}`,
    );
  }

  /**
   * The lean connection tool's client from the client pod for `seconds`, `connections` in
   * flight: new TCP connections per second, and the CPU the client and its server used.
   */
  async connrate(
    s: Setup,
    o: { seconds: number; connections: number },
  ): Promise<ConnrateResult> {
    const server0 = await cpuTicks(s.connServerPid);
    const out = await this.#run(s, [
      ...[this.connrateBin, "client", s.target, String(s.connPort)],
      ...[String(o.seconds), String(o.connections)],
    ]);
    const server1 = await cpuTicks(s.connServerPid);
    const r = parseConnrate(out);
    if (server0 !== undefined && server1 !== undefined) {
      r.cpuSeconds += (server1 - server0) / CLK_TCK;
    }
    if (r.errors > r.connections / 100) {
      throw new Error(
        `Setup "${s.name}": ${r.errors} failed connections in ${r.connections}: ${out}`,
      );
    }
    return r;
  }

  /**
   * wrk from the client pod for `seconds`: `close` opens a new TCP connection per request
   * (Connection: close), otherwise requests reuse keep-alive connections.
   */
  async wrk(
    s: Setup,
    o: { seconds: number; close: boolean; connections: number },
  ): Promise<WrkResult> {
    const argv = ["wrk", "-t1", `-c${o.connections}`, `-d${o.seconds}s`, "--timeout", "2s"];
    if (o.close) argv.push("-H", "Connection: close");
    const origin0 = await cpuTicks(s.originPid);
    // The shell prints its own stat line after wrk: cutime and cstime are wrk's CPU time.
    const out = await this.#run(s, [
      "sh",
      "-c",
      '"$@" && echo "WRKSTAT $(cat /proc/$$/stat)"',
      "sh",
      ...argv,
      `http://${s.target}:${s.port}/`,
    ]);
    const origin1 = await cpuTicks(s.originPid);
    const r: WrkResult = parseWrk(out);
    const stat = /WRKSTAT (.*)/.exec(out)?.[1];
    if (stat && origin0 !== undefined && origin1 !== undefined) {
      r.cpuSeconds = (statTicks(stat, 16) + origin1 - origin0) / CLK_TCK;
    }
    if (r.errors > r.requests / 100) {
      throw new Error(
        `Setup "${s.name}": ${r.errors} wrk errors in ${r.requests} requests: ${out}`,
      );
    }
    return r;
  }

  /**
   * Nanoseconds the node's cilia programs have run so far (their bpf_stats run_time_ns), or
   * undefined without cilia or with kernel.bpf_stats_enabled=0 (a machine-wide switch the bench
   * leaves as it is). The client's and the server's veth run the same two programs.
   */
  async bpfRunNs(s: Setup): Promise<number | undefined> {
    if (!s.sink) return undefined;
    let total = 0;
    for (const dir of ["ingress", "egress"]) {
      const tc = await this.lab.run(s.node.netns, [
        "tc",
        "filter",
        "show",
        "dev",
        s.client.ifname,
        dir,
      ]);
      const id = /\bid (\d+)/.exec(tc)?.[1];
      if (!id) throw new Error(`Setup "${s.name}": no program on ${s.client.ifname} ${dir}: ${tc}`);
      const j = JSON.parse(
        await this.lab.run(s.node.netns, ["bpftool", "-j", "prog", "show", "id", id]),
      ) as {
        run_time_ns?: number;
      };
      if (j.run_time_ns === undefined) return undefined;
      total += j.run_time_ns;
    }
    return total;
  }

  /** argv in the client pod; in the setup's cgroup for socket LB. */
  #run(s: Setup, argv: string[]): Promise<string> {
    return s.cgroup
      ? runInCgroup(s.cgroup, s.client.netns, argv)
      : this.lab.run(s.client.netns, argv);
  }

  async close(): Promise<void> {
    for (const s of this.setups) await s.cgroup?.close().catch(() => {});
    const sinks = new Set(this.setups.map((s) => s.sink).filter((s) => s !== undefined));
    for (const s of sinks) await s.close().catch(() => {});
    await this.lab.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

const CLK_TCK = 100;

/**
 * Fields n and n+1 of a /proc/PID/stat line, summed (numbered as in proc(5): 14 utime + 15
 * stime, 16 cutime + 17 cstime); field 3 is the first after the command name.
 */
export function statTicks(line: string, n: number): number {
  const f = line.slice(line.lastIndexOf(")") + 2).split(" ");
  return Number(f[n - 3]) + Number(f[n - 2]);
}

/** utime + stime of a process in clock ticks; undefined if it is gone. */
async function cpuTicks(pid: number): Promise<number | undefined> {
  const line = await Deno.readTextFile(`/proc/${pid}/stat`).catch(() => undefined);
  return line === undefined ? undefined : statTicks(line, 14);
}

/** cilia on a node: the agent's sink, both pods attached, no policy (enforcement, allow all). */
async function attachCilia(node: Node, client: Pod, server: Pod): Promise<KernelSink> {
  const sink = await KernelSink.open({
    bpffsRoot: `${node.bpffs}/cilia`,
    buildDir: BUILD_DIR,
    log: new Logger({ level: "error" }),
    netns: node.netns,
  });
  try {
    const pods = [[1, client, 1000], [2, server, 300]] as const;
    await sink.updateIpcache(pods.map(([, p, identity]) => ({ prefix: p.ipv4, identity })), []);
    for (const [id, pod, identity] of pods) {
      const ep: DatapathEndpoint = {
        id,
        identity,
        name: pod.name,
        namespace: "bench",
        ips: [pod.ipv4, pod.ipv6],
        ifname: pod.ifname,
        mac: pod.mac,
      };
      const flags = { defaultDeny: { ingress: false, egress: false }, enforcement: true };
      await sink.attach(ep, flags, { adds: [], deletes: [], revision: id, full: true });
    }
    return sink;
  } catch (e) {
    await sink.close();
    throw e;
  }
}
