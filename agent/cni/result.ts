/**
 * The CNI 1.0.0 result of an attachment, built from its interfaces and addresses: the host-side
 * interface, the pod's interface in its sandbox (both with their MTU, a CNI 1.1 field), each
 * address as a host route (/32, /128) with its gateway, and default routes through them. Pure;
 * shared by the agent and the plugin.
 */

import type { CniResult } from "./protocol.ts";

export interface AttachmentFacts {
  hostIfname: string;
  hostMac?: string;
  ifname: string;
  mac?: string;
  sandbox: string;
  /** Both interfaces' MTU (CNI 1.1 `mtu`; convertResult drops it for older versions). */
  mtu?: number;
  ipv4?: string;
  ipv6?: string;
  gateway4?: string;
  gateway6?: string;
}

export function cniResult(a: AttachmentFacts): CniResult {
  const mtu = a.mtu ? { mtu: a.mtu } : {};
  return {
    cniVersion: "1.0.0",
    interfaces: [
      { name: a.hostIfname, ...(a.hostMac ? { mac: a.hostMac } : {}), ...mtu },
      { name: a.ifname, ...(a.mac ? { mac: a.mac } : {}), ...mtu, sandbox: a.sandbox },
    ],
    ips: [
      ...(a.ipv4
        ? [{
          address: `${a.ipv4}/32`,
          ...(a.gateway4 ? { gateway: a.gateway4 } : {}),
          interface: 1,
        }]
        : []),
      ...(a.ipv6
        ? [{
          address: `${a.ipv6}/128`,
          ...(a.gateway6 ? { gateway: a.gateway6 } : {}),
          interface: 1,
        }]
        : []),
    ],
    routes: [
      ...(a.ipv4 && a.gateway4 ? [{ dst: "0.0.0.0/0", gw: a.gateway4 }] : []),
      ...(a.ipv6 && a.gateway6 ? [{ dst: "::/0", gw: a.gateway6 }] : []),
    ],
    dns: {},
  };
}
