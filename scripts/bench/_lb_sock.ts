// The socket-LB setups of `bench lb` (bpf/sock.c, as the agent runs it with --bpf-lb-sock true):
// the node's cgroup programs loaded against its pinned service maps and attached to a cgroup of
// the setup's own (never the machine's root), in which the client's load tools then run, so a
// connection to the VIP leaves with the backend's address from its first packet. Every cgroup,
// process and mount goes in close() (tests/e2e/_sock_lab.ts's TestCgroup).
import { attachSock, loadSock } from "../../agent/datapath/sock_loader.ts";
import { execCommand } from "../../agent/sys/exec.ts";
import { TestCgroup } from "../../tests/e2e/_sock_lab.ts";
import type { Node } from "../../tests/helpers/netns.ts";

export type { TestCgroup };

/** A cgroup with the node's socket-LB programs attached. */
export async function attachSockLb(node: Node, buildDir: string): Promise<TestCgroup> {
  const cg = await TestCgroup.create();
  try {
    await attachSock(await loadSock({ bpffsRoot: `${node.bpffs}/cilia`, buildDir }), cg.path);
    return cg;
  } catch (e) {
    await cg.close();
    throw e;
  }
}

/** argv in netns as a process of the cgroup; its stdout, or an error with its stderr. */
export async function runInCgroup(cg: TestCgroup, netns: string, argv: string[]): Promise<string> {
  const r = await execCommand(cg.argv(["ip", "netns", "exec", netns, ...argv]));
  if (r.code !== 0) {
    throw new Error(`${argv.join(" ")} (in ${cg.path}): exit ${r.code}: ${r.stderr.trim()}`);
  }
  return r.stdout;
}
