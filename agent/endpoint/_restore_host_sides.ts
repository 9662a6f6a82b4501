/**
 * What an agent's start does to the host sides (lxc…) of the CNI endpoints it restores, so that
 * endpoints made by an older cilia end up as a new ADD would make them, without a re-ADD:
 * - a record without `hostMac` (made before `endpoint_info.host_mac` existed) gets its host
 *   side's MAC read from the link (one `ip -j link` for all, only when such a record exists), so
 *   the endpoint entry written next carries it and the datapath answers the pod's neighbour
 *   solicitations for its router (`bpf/lib/nd.h`); the caller stores the records named in the
 *   answer;
 * - the ff00::/8 route of every host side (table local) is deleted in one rtnetlink batch
 *   (absent, ESRCH, is the usual answer): endpoints made before ADD deleted it kept it across
 *   restarts, and each such route is walked for every multicast packet from a pod (netdev.ts
 *   `finishHostSide`).
 * It never fails a restore: an endpoint whose link is gone is left to `CniAttachments.sweep()`,
 * and what cannot be read or deleted is logged.
 */

import type { Logger } from "../log.ts";
import { linkMacs } from "../sys/links.ts";
import { ifIndex, routeDelMulticast, rtnetlink } from "../sys/rtnetlink.ts";
import type { EndpointRecord } from "./spec.ts";

/**
 * Fills `hostMac` of the CNI endpoints among `records` that have none, in place, and deletes
 * every host side's multicast route; returns the ids of the records it changed (to be stored).
 */
export async function restoreHostSides(
  records: EndpointRecord[],
  log: Logger,
): Promise<Set<number>> {
  const changed = new Set<number>();
  const links: [number, string][] = [];
  for (const r of records) {
    if (r.containerId === undefined || r.ifname === undefined) continue;
    const index = ifIndex(r.ifname); // if_nametoindex: microseconds, no process
    if (index !== undefined) links.push([index, r.ifname]);
  }
  const present = new Set(links.map(([, name]) => name));
  const old = records.filter((r) => !r.hostMac && r.containerId && present.has(r.ifname!));
  if (old.length > 0) {
    try {
      const macs = await linkMacs();
      for (const r of old) {
        const mac = macs.get(r.ifname!);
        if (mac === undefined || !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(mac)) continue;
        r.hostMac = mac;
        changed.add(r.id);
      }
    } catch (err) {
      log.warn("cannot read the host sides' MACs: older endpoints get no router answers", {
        endpoints: old.length,
        error: err,
      });
    }
  }
  let deleted = 0;
  try {
    const errnos = await rtnetlink(links.map(([index, name]) => routeDelMulticast(index, name)));
    deleted = errnos.filter((e) => e === 0).length;
  } catch (err) {
    log.warn("cannot delete the host sides' multicast routes", { error: err });
  }
  if (changed.size > 0 || deleted > 0) {
    log.info("older endpoints' host sides updated", {
      hostMacs: changed.size,
      multicastRoutes: deleted,
    });
  }
  return changed;
}
