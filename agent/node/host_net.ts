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
  // The L7 proxy's redirect (bpf/lib/proxy.h) hands packets of pods into the stack on
  // cilia_host: their source is a pod, which a reverse-path filter would call a martian.
  await sysctl(`ipv4/conf/${HOST_DEVICE}/rp_filter`, "0");
  return pools.map((p) => p.gateway);
}

/** cilia_host's ifindex and MAC (where the kernel hands redirected packets to the L7 proxy). */
export async function hostDevice(): Promise<{ ifindex: number; mac: Uint8Array }> {
  const r = await execCommand(["ip", "-j", "link", "show", HOST_DEVICE]);
  if (r.code !== 0) throw new Error(`Cannot read "${HOST_DEVICE}": ${r.stderr.trim()}`);
  const [link] = JSON.parse(r.stdout) as { ifindex: number; address: string }[];
  if (!link) throw new Error(`Cannot read "${HOST_DEVICE}": no such device`);
  return {
    ifindex: link.ifindex,
    mac: new Uint8Array(link.address.split(":").map((h) => parseInt(h, 16))),
  };
}
