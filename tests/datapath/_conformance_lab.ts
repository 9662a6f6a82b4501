// The reusable lab of the kernel conformance consumer: one node netns with the agent's KernelSink
// on it, a pool of pod netns (veth host side in the node, routed /32 and /128), one "outside"
// netns that holds every non-pod address of a case (CIDR peers, reserved entities, a world
// address) behind the node's default route, and a probe helper in each. apply() turns the lab
// into one case's cluster (addresses, routes, ipcache, endpoints, the engine's map-state) the way
// the agent moves from one policy to the next: through the sink, new endpoints attached with
// their whole policy, kept ones updated and given the diff, gone ones removed. probe() sends real
// packets (_conformance_probes.ts). It computes no policy (entries come from the engine) and
// writes nothing into the kernel's maps itself. The topology (addresses, netns) is
// _conformance_netns.ts.
import { collectConntrack } from "../../agent/datapath/conntrack_gc.ts";
import type { PacketEvent } from "../../agent/datapath/events.ts";
import type { KernelSink } from "../../agent/datapath/kernel_sink.ts";
import type { DatapathEndpoint, EndpointFlags } from "../../agent/endpoint/datapath_sink.ts";
import { diffEntries, indexEntries } from "../../agent/endpoint/mapstate_diff.ts";
import type { IpcacheEntry, MapStateEntry } from "../../policy-wasm/mod.ts";
import { Lab, type Node } from "../helpers/netns.ts";
import {
  addOutside,
  addPodNetns,
  addrAdd,
  ENTITY_IDS,
  entityAddrs,
  HOST,
  ip,
  type Place,
  plen,
  POD_ROUTES,
} from "./_conformance_netns.ts";
import { openSink } from "./_fixture.ts";
import { Prober } from "./_prober_client.ts";
import { LabProbes, type Probe } from "./_conformance_probes.ts";

export type { Probe } from "./_conformance_probes.ts";

export interface LabEndpoint {
  epId: number;
  identity: number;
  ipv4?: string;
  ipv6?: string;
  ingressDefaultDeny: boolean;
  egressDefaultDeny: boolean;
  enforcement: boolean;
  /** The engine's map-state entries. */
  policy: MapStateEntry[];
}

export interface LabCase {
  /** Endpoint i lives in pod i of the pool. */
  endpoints: LabEndpoint[];
  /** Endpoint IPs and CIDR identities' prefixes (the lab adds host and entity entries). */
  ipcache: IpcacheEntry[];
  /** Addresses the outside netns must own. */
  outside: string[];
}

interface Pod {
  netns: string;
  ifname: string;
  mac: string;
  prober: Prober;
}

/** What the sink holds for an endpoint (as the agent's regenerator remembers it). */
interface Attached {
  ep: DatapathEndpoint;
  flags: EndpointFlags;
  policy: MapStateEntry[];
}

/** An endpoint's addresses. */
const addrsOf = (e: LabEndpoint) => [e.ipv4, e.ipv6].filter((a): a is string => !!a);

export class KernelLab {
  readonly #lab: Lab;
  readonly #node: Node;
  readonly #outside: string;
  readonly #sink: KernelSink;
  readonly #nodeProber: Prober;
  readonly #outsideProber: Prober;
  readonly #pods: Pod[] = [];
  readonly #attached = new Map<number, Attached>();
  #revision = 0;
  readonly #probes: LabProbes;
  #prev: LabCase = { endpoints: [], ipcache: [], outside: [] };

  private constructor(
    o: { lab: Lab; node: Node; outside: string; sink: KernelSink; nodeP: Prober; outP: Prober },
  ) {
    this.#lab = o.lab;
    this.#node = o.node;
    this.#outside = o.outside;
    this.#sink = o.sink;
    this.#nodeProber = o.nodeP;
    this.#outsideProber = o.outP;
    this.#probes = new LabProbes(
      (p) => this.#prober(p),
      o.sink.datapath.pins.maps.cilia_events,
    );
  }

  static async create(): Promise<KernelLab> {
    const lab = await Lab.create();
    const probers: Prober[] = [];
    let sink: KernelSink | undefined;
    try {
      const node = await lab.addNode("node");
      const outside = await addOutside(lab, node);
      sink = await openSink(node);
      await sink.updateIpcache(
        [
          { prefix: HOST.v4, identity: 1 },
          { prefix: HOST.v6, identity: 1 },
          ...ENTITY_IDS.flatMap((id) => [
            { prefix: entityAddrs(id).v4, identity: id },
            { prefix: entityAddrs(id).v6, identity: id },
          ]),
        ],
        [],
      );
      const nodeP = await Prober.start(node.netns);
      probers.push(nodeP);
      const outP = await Prober.start(outside);
      probers.push(outP);
      return new KernelLab({ lab, node, outside, sink, nodeP, outP });
    } catch (e) {
      for (const p of probers) await p.close().catch(() => {});
      await sink?.close();
      await lab.close();
      throw e;
    }
  }

  async #addPod(i: number): Promise<Pod> {
    const pod = await addPodNetns(this.#lab, this.#node, i);
    return { ...pod, prober: await Prober.start(pod.netns) };
  }

  async #ensurePods(n: number): Promise<void> {
    const start = this.#pods.length;
    if (n <= start) return;
    const added = await Promise.allSettled(
      Array.from({ length: n - start }, (_, k) => this.#addPod(start + k)),
    );
    for (const r of added) if (r.status === "fulfilled") this.#pods.push(r.value);
    const failed = added.find((r) => r.status === "rejected");
    if (failed) throw failed.reason; // the pods made so far stay in the pool (closed by close())
  }

  /** Undoes the previous case and sets up this one. */
  async apply(c: LabCase): Promise<void> {
    await this.#ensurePods(c.endpoints.length);
    await this.#clear(c);
    const prev = this.#prev;
    this.#prev = c; // from here on, the next apply() undoes whatever of c got written
    await Promise.all(c.endpoints.map((e, i) =>
      ip(
        this.#pods[i]!.netns,
        // Removing a device's last IPv4 address removed its IPv4 routes: add them back.
        [...addrsOf(e).map(addrAdd), ...POD_ROUTES],
      )
    ));
    await ip(
      this.#node.netns,
      c.endpoints.flatMap((e, i) =>
        addrsOf(e).map((a) =>
          `route replace ${a}/${plen(a)} dev ${this.#pods[i]!.ifname} src ${
            a.includes(":") ? HOST.v6 : HOST.v4
          }`
        )
      ),
    );
    await ip(
      this.#outside,
      c.outside.map(addrAdd),
    );
    await this.#sink.updateIpcache(c.ipcache, prev.ipcache);
    for (const [i, e] of c.endpoints.entries()) await this.#write(this.#pods[i]!, e);
  }

  /** One endpoint of a case, written as the agent's regenerator writes it. */
  async #write(pod: Pod, e: LabEndpoint): Promise<void> {
    const ep: DatapathEndpoint = {
      id: e.epId,
      identity: e.identity,
      name: `pod${e.epId}`,
      namespace: "lab",
      ips: addrsOf(e),
      ifname: pod.ifname,
      mac: pod.mac,
    };
    const flags: EndpointFlags = {
      defaultDeny: { ingress: e.ingressDefaultDeny, egress: e.egressDefaultDeny },
      enforcement: e.enforcement,
    };
    const revision = ++this.#revision;
    const cur = this.#attached.get(e.epId);
    if (cur === undefined) {
      await this.#sink.attach(ep, flags, { adds: e.policy, deletes: [], revision, full: true });
    } else {
      if (JSON.stringify([cur.ep, cur.flags]) !== JSON.stringify([ep, flags])) {
        await this.#sink.updateEndpoint(ep, flags);
      }
      const diff = diffEntries(indexEntries(cur.policy), e.policy);
      await this.#sink.applyPolicy(e.epId, { ...diff, revision, full: true });
    }
    this.#attached.set(e.epId, { ep, flags, policy: e.policy });
  }

  async #clear(next: LabCase): Promise<void> {
    const prev = this.#prev;
    for (const [id, a] of this.#attached) {
      if (id > next.endpoints.length) {
        await this.#sink.removeEndpoint(a.ep);
        this.#attached.delete(id);
      }
    }
    await ip(
      this.#node.netns,
      prev.endpoints.flatMap((e, i) =>
        addrsOf(e).map((a) => `route del ${a}/${plen(a)} dev ${this.#pods[i]!.ifname}`)
      ),
      true,
    );
    await Promise.all(
      prev.endpoints.map((_, i) =>
        ip(this.#pods[i]!.netns, ["addr flush dev eth0 scope global"], true)
      ),
    );
    await ip(this.#outside, prev.outside.map((a) => `addr del ${a}/${plen(a)} dev eth0`), true);
    this.flushConntrack();
  }

  /** Deletes every conntrack entry (between probes that could share a tuple). */
  flushConntrack(): void {
    collectConntrack(this.#sink.datapath.pins.maps.cilia_ct, { remove: () => true });
  }

  #prober(p: Place): Prober {
    if (p.kind === "host") return this.#nodeProber;
    if (p.kind === "outside") return this.#outsideProber;
    return this.#pods[p.index]!.prober;
  }

  /** Starts the listeners the probes need at their destinations. */
  listen(probes: readonly Probe[]): Promise<void> {
    return this.#probes.listen(probes);
  }

  /**
   * The policy-verdict events with verdict AUDIT since the last call (the lab is the one reader
   * of its node's events; the first call starts reading; it also forgets the drop events probe()
   * looked at). Lost events make the answer unreliable: they throw.
   */
  takeAudits(): PacketEvent[] {
    return this.#probes.takeAudits();
  }

  /**
   * The observed outcome of a probe; a timeout is retried once before it counts as a drop, unless
   * `isDrop` (given the drop events since the last takeAudits()) says the datapath reported
   * dropping this probe: the packet is then known lost, not late. The verdict is still the
   * packet's fate (no reply); the event only spares the retry.
   */
  probe(
    p: Probe,
    isDrop?: (drops: readonly PacketEvent[]) => boolean,
  ): Promise<{ allowed: boolean; attempts: string[] }> {
    return this.#probes.probe(p, isDrop);
  }

  async close(): Promise<void> {
    const probers = [this.#nodeProber, this.#outsideProber, ...this.#pods.map((p) => p.prober)];
    await Promise.all(probers.map((p) => p.close().catch(() => {})));
    this.#probes.close();
    await this.#sink.close();
    await this.#lab.close();
  }
}
