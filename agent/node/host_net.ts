/**
 * The node side of pod networking with the kernel datapath: IP forwarding on, and the
 * `cilia_host` device (one end of a veth pair with `cilia_net`, as in Cilium; no dummy device is
 * needed from the kernel) holding the gateway address of each pod CIDR: the pods' default gateway
 * for IPv4, and the source of node → pod traffic. Idempotent, so a restarted agent finds it in
 * place; it is never removed by the agent (pods keep routing while the agent is down).
 * Runs in the agent's own network namespace; it knows nothing of endpoints.
 */

import { execCommand } from "../sys/exec.ts";
import { linkIndex } from "../sys/links.ts";

export const HOST_DEVICE = "cilia_host";
export const HOST_PEER = "cilia_net";

async function ip(lines: string[], what: string): Promise<void> {
  const r = await execCommand(["ip", "-batch", "-"], { stdin: lines.join("\n") + "\n" });
  if (r.code !== 0) throw new Error(`${what}: ip exited with status ${r.code}: ${r.stderr.trim()}`);
}

async function sysctl(path: string, value: string): Promise<void> {
  const file = `/proc/sys/net/${path}`;
  if ((await Deno.readTextFile(file)).trim() !== value) await Deno.writeTextFile(file, value);
}

/** Turns forwarding on and puts the gateways on cilia_host; returns the gateway addresses. */
export async function setupHostNetwork(
  pools: readonly { family: 4 | 6; gateway: string }[],
): Promise<string[]> {
  if (pools.length === 0) return [];
  for (const p of pools) {
    await sysctl(p.family === 4 ? "ipv4/ip_forward" : "ipv6/conf/all/forwarding", "1");
  }
  if ((await linkIndex(HOST_DEVICE)) === undefined) {
    await ip(
      [`link add ${HOST_DEVICE} type veth peer name ${HOST_PEER}`],
      `Cannot create "${HOST_DEVICE}"`,
    );
  }
  await ip(
    [
      ...pools.map((p) =>
        p.family === 4
          ? `addr replace ${p.gateway}/32 dev ${HOST_DEVICE}`
          : `addr replace ${p.gateway}/128 dev ${HOST_DEVICE} nodad`
      ),
      `link set ${HOST_PEER} up`,
      `link set ${HOST_DEVICE} up`,
    ],
    `Cannot configure "${HOST_DEVICE}"`,
  );
  return pools.map((p) => p.gateway);
}
