/**
 * CNI attachments, the agent's half of the CNI plugin: ADD allocates the pod's addresses, builds
 * its veth with the host side down, creates the endpoint (identity, policy in the kernel,
 * programs attached) and only then brings the host side up, so the pod's first packet already
 * meets its policy; anything that fails is undone. DEL is idempotent (a missing endpoint, veth
 * or netns is success), CHECK verifies the endpoint, interfaces and addresses, GC deletes the
 * attachments a runtime no longer has, and sweep() removes endpoints whose veth vanished while
 * the agent was down. An attachment is found by (container id, interface name).
 */

import type { IdentitySpec } from "@cilia/policy-wasm";
import type { Logger } from "../log.ts";
import type { Ipam } from "../ipam/ipam.ts";
import type {
  CniAddRequest,
  CniAddResponse,
  CniCheckRequest,
  CniDelRequest,
  CniGcRequest,
} from "../cni/types.ts";
import { cniResult } from "../cni/result.ts";
import { checkAttachment } from "./cni_check.ts";
import { linkNames } from "../sys/links.ts";
import { CniAttachmentError } from "./cni_error.ts";
import type { EndpointManager } from "./manager.ts";
import { type EndpointRecord, type EndpointSpec, EndpointSpecSchema } from "./spec.ts";
import {
  createPodInterface,
  deleteHostInterface,
  finishHostSide,
  hostIfnameFor,
  hostInterface,
  IPV6_GATEWAY,
  netnsExists,
  type PodAddressing,
  podTarget,
  randomMac,
} from "./netdev.ts";

export interface CniAttachmentsOptions {
  endpoints: EndpointManager;
  ipam: Ipam;
  log: Logger;
  /** False when the agent runs without the kernel datapath: ADD is refused. */
  kernel: boolean;
  /** The datapath's own check of an attached endpoint (CNI CHECK), e.g. `KernelSink.check`. */
  checkDatapath?: (ep: EndpointRecord) => Promise<string | undefined>;
  /**
   * The MTU of a new pod's veth, both ends, asked at each ADD (the agent knows it once the tunnel
   * is up: underlay − 50 in tunnel mode, the underlay's in native mode); undefined leaves the
   * kernel's 1500. May throw a CniAttachmentError while it cannot be known yet.
   */
  podMtu?: () => number | undefined;
}

const MAX_ENDPOINT_ID = 65535;
/** Linux interface names: 1-15 bytes, no "/", ":" or whitespace. */
const IFNAME = /^[^/:\s]{1,15}$/;
const validIfname = (name: string) => IFNAME.test(name) && name !== "." && name !== "..";

/** A DNS-subdomain endpoint name from a pod name, or one derived from the container id. */
export function endpointName(podName: string | undefined, containerId: string): string {
  const clean = (podName ?? "").toLowerCase().replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "").slice(0, 253).replace(/-+$/, "");
  return clean || `cni-${containerId.toLowerCase().replace(/[^a-z0-9]/g, "").slice(0, 12)}`;
}

const owner = (containerId: string, ifname: string) => `cni:${containerId}/${ifname}`;

/** A promise that resolves to the value or the error (never rejects: awaited later). */
const settle = <T>(p: Promise<T>): Promise<T | Error> =>
  p.catch((err) => err instanceof Error ? err : new Error(String(err)));

function unwrap<T>(r: T | Error): T {
  if (r instanceof Error) throw r;
  return r;
}

export class CniAttachments {
  #o: CniAttachmentsOptions;
  #reserved = new Set<number>();
  /** ADDs under way by (container id, interface): a parallel ADD of the same one waits. */
  #adding = new Map<string, { netns: string; done: Promise<CniAddResponse> }>();

  constructor(opts: CniAttachmentsOptions) {
    this.#o = opts;
  }

  find(containerId: string, ifname: string): EndpointRecord | undefined {
    return this.#o.endpoints.findContainer(containerId, ifname);
  }

  /**
   * ADD. Parallel ADDs of the same (container id, interface) are one: the first does the work,
   * the others get its result (or its error); a later ADD is answered from the attachment.
   */
  add(req: CniAddRequest): Promise<CniAddResponse> {
    const key = owner(req.containerId, req.ifname);
    const running = this.#adding.get(key);
    if (running?.netns === req.netns) return running.done;
    if (running) return running.done.catch(() => {}).then(() => this.add(req));
    const done = this.#add(req).finally(() => this.#adding.delete(key));
    this.#adding.set(key, { netns: req.netns, done });
    return done;
  }

  async #add(req: CniAddRequest): Promise<CniAddResponse> {
    if (!this.#o.kernel) {
      throw new CniAttachmentError(
        "cni_unavailable",
        `Cannot add "${req.containerId}": this agent runs with --datapath none, so nothing ` +
          `would enforce policy; start it with --datapath kernel`,
        503,
      );
    }
    const existing = this.find(req.containerId, req.ifname);
    if (existing) {
      if (existing.netns === req.netns && existing.ifname && await hostInterface(existing.ifname)) {
        return await this.#response(existing); // a retried ADD
      }
      throw new CniAttachmentError(
        "cni_conflict",
        `Container "${req.containerId}" already has interface "${req.ifname}" (endpoint ` +
          `${existing.id}) in "${existing.netns}": DEL it first`,
        409,
      );
    }
    if (!(await netnsExists(req.netns))) {
      throw new CniAttachmentError(
        "cni_netns_not_found",
        `Cannot add "${req.containerId}": the network namespace "${req.netns}" does not exist`,
        404,
      );
    }
    const spec = this.#spec(req);
    const mtu = this.#o.podMtu?.();
    // Where an ADD's time goes, logged with it (ms since the start of each step; "identity" is
    // what was still to wait for after the pod's process that overlaps it).
    const t = [performance.now()];
    if (!validIfname(req.ifname)) await this.#checkTarget(req); // throws the caller's error
    const id = this.#reserveId();
    const who = owner(req.containerId, req.ifname);
    const hostIfname = await hostIfnameFor(req.containerId, req.ifname);
    let allocating: Promise<PodAddressing | Error> | undefined;
    let acquiring: Promise<IdentitySpec | Error> | undefined;
    let handed = false, created = false;
    try {
      const hostMac = randomMac(), podMac = randomMac();
      // The kvstore work (addresses, identity) runs while the veth is made: settled promises,
      // awaited in turn below; whatever was taken is given back if a step fails.
      allocating = settle(this.#allocate(who));
      acquiring = settle(this.#o.endpoints.acquireIdentity(spec));
      const addressing = unwrap(await allocating);
      t.push(performance.now());
      const pod = { hostIfname, netns: req.netns, ifname: req.ifname, hostMac, podMac, mtu };
      await this.#createPod(req, { ...pod, addressing });
      t.push(performance.now());
      const identity = unwrap(await acquiring);
      t.push(performance.now());
      const full = EndpointSpecSchema.parse({
        ...spec,
        ...(addressing.ipv4 ? { ipv4: addressing.ipv4 } : {}),
        ...(addressing.ipv6 ? { ipv6: addressing.ipv6 } : {}),
        ifname: hostIfname,
        mac: podMac,
        hostMac,
      });
      handed = true; // put() owns the reference now, and releases it if it fails
      const { endpoint } = await this.#o.endpoints.put(id, full, { identity });
      created = true;
      t.push(performance.now());
      await finishHostSide({ hostIfname, podMac, addressing });
      t.push(performance.now());
      const step = (i: number) => Math.round(t[i + 1]! - t[i]!);
      this.#o.log.info("CNI attachment added", {
        container: req.containerId,
        endpoint: id,
        interface: hostIfname,
        ms: { ipam: step(0), pod: step(1), identity: step(2), endpoint: step(3), up: step(4) },
      });
      return await this.#response(endpoint, { mac: hostMac, ...(mtu ? { mtu } : {}) });
    } catch (err) {
      if (created) await this.#o.endpoints.delete(id).catch(() => {});
      await deleteHostInterface(hostIfname).catch(() => {});
      // Both kvstore steps end first, so that nothing they took is left behind.
      const [, acquired] = await Promise.all([allocating, acquiring]);
      if (!handed && acquired !== undefined && !(acquired instanceof Error)) {
        await this.#o.endpoints.releaseIdentity(acquired).catch(() => {});
      }
      await this.#releaseOwned(who);
      throw err;
    } finally {
      this.#reserved.delete(id);
    }
  }

  async del(req: CniDelRequest): Promise<{ deleted: boolean; endpoint?: number }> {
    const ep = this.find(req.containerId, req.ifname);
    if (ep) await this.#o.endpoints.delete(ep.id);
    await deleteHostInterface(ep?.ifname ?? await hostIfnameFor(req.containerId, req.ifname));
    await this.#releaseOwned(owner(req.containerId, req.ifname));
    if (ep) {
      this.#o.log.info("CNI attachment deleted", { container: req.containerId, endpoint: ep.id });
    }
    return ep ? { deleted: true, endpoint: ep.id } : { deleted: false };
  }

  /** CHECK: the endpoint, its interfaces, programs and addresses are as ADD made them. */
  async check(req: CniCheckRequest): Promise<{ endpoint: number }> {
    const ep = this.find(req.containerId, req.ifname);
    if (!ep || !ep.ifname) {
      throw new CniAttachmentError(
        "cni_unknown_container",
        `No attachment of container "${req.containerId}" with interface "${req.ifname}"`,
        404,
      );
    }
    await checkAttachment(ep, req, this.#o.checkDatapath ?? (() => Promise.resolve(undefined)));
    return { endpoint: ep.id };
  }

  async gc(req: CniGcRequest): Promise<{ deleted: string[] }> {
    const valid = new Set(req.validAttachments.map((a) => owner(a.containerId, a.ifname)));
    const deleted: string[] = [];
    for (const ep of this.#o.endpoints.list()) {
      if (!ep.containerId || (ep.network !== undefined && ep.network !== req.network)) continue;
      const ifname = ep.containerIfname ?? "eth0";
      if (valid.has(owner(ep.containerId, ifname))) continue;
      await this.del({ containerId: ep.containerId, ifname, network: req.network });
      deleted.push(owner(ep.containerId, ifname));
    }
    for (const a of this.#o.ipam.list()) {
      if (a.owner.startsWith("cni:") && !valid.has(a.owner) && !this.#owned(a.owner)) {
        await this.#o.ipam.release(a.ip).catch(() => {});
      }
    }
    return { deleted };
  }

  /** Deletes CNI endpoints whose host interface is gone (their pod went while we were down). */
  async sweep(): Promise<number> {
    let links: Set<string>;
    try {
      links = new Set((await linkNames()).values()); // one `ip` for every endpoint
    } catch (err) {
      this.#o.log.warn("cannot list links: endpoints with a vanished interface stay", {
        error: err,
      });
      return 0;
    }
    let n = 0;
    for (const ep of this.#o.endpoints.list()) {
      if (!ep.containerId || !ep.ifname || links.has(ep.ifname)) continue;
      this.#o.log.warn("endpoint's interface is gone: deleting it", {
        endpoint: ep.id,
        interface: ep.ifname,
      });
      await this.#o.endpoints.delete(ep.id).catch(() => {});
      n++;
    }
    return n;
  }

  /**
   * The veth pair and the pod's end in one process when nothing is in the way (the usual case).
   * When that fails (it deletes the host side, its own or one an interrupted ADD left), one more
   * process finds out why: not a netns, or an interface name invalid or taken in it (the
   * caller's errors, thrown); else it is made again, once.
   */
  async #createPod(
    req: CniAddRequest,
    o: Parameters<typeof createPodInterface>[0],
  ): Promise<void> {
    try {
      await createPodInterface(o);
    } catch {
      await this.#checkTarget(req);
      await createPodInterface(o);
    }
  }

  /** The netns must be one, and the interface name valid and free in it (caller errors). */
  async #checkTarget(req: CniAddRequest): Promise<void> {
    const valid = validIfname(req.ifname);
    // One process answers both questions; an invalid name is only checked after the netns.
    const target = await podTarget(req.netns, valid ? req.ifname : "lo");
    if (target === "not-netns") {
      throw new CniAttachmentError(
        "cni_invalid_netns",
        `Cannot add "${req.containerId}": "${req.netns}" is not a network namespace ` +
          `(CNI_NETNS must name one, e.g. /run/netns/<name> or /proc/<pid>/ns/net)`,
        400,
      );
    }
    if (!valid) {
      throw new CniAttachmentError(
        "cni_invalid_ifname",
        `Cannot add "${req.containerId}": "${req.ifname}" is not a valid interface name ` +
          `(CNI_IFNAME: 1 to 15 characters, no "/", ":" or whitespace)`,
        400,
      );
    }
    if (target === "taken") {
      throw new CniAttachmentError(
        "cni_ifname_taken",
        `Cannot add "${req.containerId}": the network namespace "${req.netns}" already has an ` +
          `interface "${req.ifname}" (CNI_IFNAME must name a new interface)`,
        409,
      );
    }
  }

  #owned(who: string): boolean {
    return this.#o.endpoints.list().some((e) =>
      e.containerId !== undefined && owner(e.containerId, e.containerIfname ?? "eth0") === who
    );
  }

  #spec(req: CniAddRequest): EndpointSpec {
    const r = EndpointSpecSchema.safeParse({
      name: endpointName(req.name, req.containerId),
      ...(req.namespace !== undefined ? { namespace: req.namespace } : {}),
      labels: req.labels,
      netns: req.netns,
      containerId: req.containerId,
      containerIfname: req.ifname,
      network: req.network,
    });
    if (!r.success) {
      const i = r.error.issues[0]!;
      const where = i.path.length > 0 ? `${i.path.join(".")}: ` : "";
      throw new CniAttachmentError(
        "invalid_cni_args",
        `Invalid pod metadata: ${where}${i.message}`,
        400,
      );
    }
    return r.data;
  }

  #reserveId(): number {
    // The lowest free id (map lookups only: no list of every endpoint per ADD).
    for (let id = 1; id <= MAX_ENDPOINT_ID; id++) {
      if (!this.#o.endpoints.has(id) && !this.#reserved.has(id)) {
        this.#reserved.add(id);
        return id;
      }
    }
    throw new RangeError(`Cannot add an endpoint: all ${MAX_ENDPOINT_ID} endpoint ids are in use`);
  }

  async #allocate(who: string): Promise<PodAddressing> {
    const pools = this.#o.ipam.gateways();
    if (pools.length === 0) {
      throw new CniAttachmentError(
        "cni_unavailable",
        "Cannot add a pod: the agent has no pod CIDR (start it with --pod-cidr and/or --pod-cidr-v6)",
        503,
      );
    }
    const out: PodAddressing = {};
    for (const a of await this.#o.ipam.allocateAll(who)) {
      const gateway = pools.find((p) => p.family === a.family)!.gateway;
      if (a.family === 4) [out.ipv4, out.gateway4] = [a.ip, gateway];
      else [out.ipv6, out.gateway6] = [a.ip, gateway];
    }
    return out;
  }

  async #releaseOwned(who: string): Promise<void> {
    for (const a of this.#o.ipam.list()) {
      if (a.owner === who) await this.#o.ipam.release(a.ip).catch(() => {});
    }
  }

  /** The CNI result; the host side's MAC and MTU when the caller knows them, else from the link. */
  async #response(
    ep: EndpointRecord,
    known?: { mac: string; mtu?: number },
  ): Promise<CniAddResponse> {
    const host = known ?? (ep.ifname ? await hostInterface(ep.ifname) : undefined);
    const gateway4 = this.#o.ipam.gateways().find((p) => p.family === 4)?.gateway;
    return {
      result: cniResult({
        hostIfname: ep.ifname!,
        ...(host?.mac ? { hostMac: host.mac } : {}),
        ...(host?.mtu ? { mtu: host.mtu } : {}),
        ifname: ep.containerIfname ?? "eth0",
        ...(ep.mac ? { mac: ep.mac } : {}),
        sandbox: ep.netns!,
        ...(ep.ipv4 ? { ipv4: ep.ipv4 } : {}),
        ...(ep.ipv6 ? { ipv6: ep.ipv6 } : {}),
        ...(gateway4 ? { gateway4 } : {}),
        gateway6: IPV6_GATEWAY,
      }),
      endpoint: { id: ep.id, identity: ep.identity, name: ep.name, namespace: ep.namespace },
    };
  }
}
