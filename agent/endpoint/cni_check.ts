/**
 * CNI CHECK on the agent's side: an attachment is as ADD left it when its host interface is up,
 * the datapath sink finds its entry and programs in place with its policy written, its pod
 * interface is up in the network namespace with the endpoint's addresses, and the runtime's
 * prevResult names no other address. Reads only.
 */

import type { CniCheckRequest } from "../cni/types.ts";
import { CniAttachmentError } from "./cni_error.ts";
import { hostInterface, netnsExists, podInterface } from "./netdev.ts";
import type { EndpointRecord } from "./spec.ts";

const fail = (msg: string) => new CniAttachmentError("cni_check_failed", msg, 409);

/** Throws CniAttachmentError naming the first thing that is not as ADD made it. */
export async function checkAttachment(
  ep: EndpointRecord,
  req: CniCheckRequest,
  datapath: (ep: EndpointRecord) => Promise<string | undefined>,
): Promise<void> {
  const host = await hostInterface(ep.ifname!);
  if (!host?.up) throw fail(`The host interface "${ep.ifname}" is ${host ? "down" : "missing"}`);
  const problem = await datapath(ep);
  if (problem !== undefined) throw fail(problem);
  if (!(await netnsExists(req.netns))) {
    throw new CniAttachmentError(
      "cni_unknown_container",
      `The network namespace "${req.netns}" does not exist`,
      404,
    );
  }
  const pod = await podInterface(req.netns, req.ifname);
  if (!pod?.up) throw fail(`The interface "${req.ifname}" in "${req.netns}" is missing or down`);
  const want = [ep.ipv4, ep.ipv6].filter((a): a is string => a !== undefined);
  const missing = want.filter((a) => !pod.addresses.includes(a));
  if (missing.length > 0) {
    throw fail(
      `"${req.ifname}" lacks its address${missing.length > 1 ? "es" : ""} ${missing.join(", ")}`,
    );
  }
  const prev = (req.prevResult as { ips?: { address?: string }[] } | undefined)?.ips ?? [];
  const strange = prev.map((i) => String(i.address ?? "").replace(/\/\d+$/, ""))
    .filter((a) => !want.includes(a));
  if (strange.length > 0) {
    throw fail(`prevResult names ${strange.join(", ")}, but the endpoint has ${want.join(", ")}`);
  }
}
