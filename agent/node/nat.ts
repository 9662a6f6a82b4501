/**
 * Node-IP SNAT on the underlay device (--devices, else the interface holding the node IP): masquerade for pods
 * reaching the outside (`--enable-ipv4-masquerade`, `--ipv4-native-routing-cidr`) and NodePort
 * for clients outside the cluster (bpf/lib/nat.h, nodeport.h). Loads bpf/host.c once per node,
 * writes its settings, then attaches it, in either routing mode. Idempotent, and never detached
 * by the agent: translated connections keep working while it restarts. Runs in the agent's own
 * network namespace; it knows nothing of services or endpoints.
 */

import { underlayOf } from "./tunnel.ts";
import {
  attachNetdev,
  loadNetdev,
  type NatSettings,
  writeNatConfig,
} from "../datapath/netdev_loader.ts";

export async function setupNodeNat(
  opts: NatSettings & { bpffsRoot: string; buildDir: string; device?: string | undefined },
): Promise<{ ifname: string; mtu: number }> {
  const { bpffsRoot, buildDir, device, ...settings } = opts;
  const underlay = await underlayOf(opts.nodeIp, { device });
  const pins = await loadNetdev({ bpffsRoot, buildDir });
  await writeNatConfig(bpffsRoot, settings);
  await attachNetdev(pins, underlay.ifname);
  return underlay;
}
