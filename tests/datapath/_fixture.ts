// Shared setup for the datapath tests: a lab node with pods, and the agent's own write path into
// it: a KernelSink opened on the node's bpffs from the test process (tc/ip/bpftool through
// nsenter). Every endpoint, policy and ipcache write goes through the sink, with the engine's
// map-state entries; the Datapath under it (`dp`) is only read (events, dumps, metrics).
import type { Datapath, DatapathEvent, MapSizes } from "../../agent/datapath/datapath.ts";
import type { PacketEvent } from "../../agent/datapath/events.ts";
import { KernelSink } from "../../agent/datapath/kernel_sink.ts";
import type {
  DatapathEndpoint,
  EndpointFlags,
  PolicyChange,
  SinkEntry,
} from "../../agent/endpoint/datapath_sink.ts";
import type { MapStateEntry } from "../../policy-wasm/mod.ts";
import { Logger } from "../../agent/log.ts";
import { type External, Lab, type Node, type Pod } from "../helpers/netns.ts";

export const BUILD_DIR = new URL("../../bpf/build", import.meta.url).pathname;
/** Identities used by the tests (CIDR identities are node-local: bit 24 set). */
export const ID = { a: 1001, b: 1002, c: 1003, cidr: 16777217 } as const;

/** Opens the agent's sink on a lab node, from outside it. */
export function openSink(
  node: Node,
  o: { buildDir?: string; mapSizes?: MapSizes } = {},
): Promise<KernelSink> {
  return KernelSink.open({
    bpffsRoot: `${node.bpffs}/cilia`,
    buildDir: o.buildDir ?? BUILD_DIR,
    log: new Logger({ level: "error" }),
    netns: node.netns,
    ...(o.mapSizes ? { mapSizes: o.mapSizes } : {}),
  });
}

/** A map-state entry as the engine writes it: ingress, any identity, TCP 80, allow, cookie 0. */
export function entry(o: Partial<SinkEntry> = {}): SinkEntry {
  return {
    direction: "ingress",
    identity: 0,
    proto: 6,
    portLo: 80,
    portHi: 80,
    verdict: "allow",
    cookie: 0,
    ...o,
  };
}

let revision = 0;
/** A policy change as the regenerator sends it. */
export function change(adds: SinkEntry[], deletes: MapStateEntry[] = []): PolicyChange {
  return { adds, deletes, revision: ++revision, full: false };
}

export function flags(ingress: boolean, egress: boolean, enforcement = true): EndpointFlags {
  return { defaultDeny: { ingress, egress }, enforcement };
}

export interface NodeLab {
  lab: Lab;
  node: Node;
  pods: Pod[];
  ext: External | undefined;
  sink: KernelSink;
  /** The sink's datapath, for reading back. */
  dp: Datapath;
  /** Endpoint i + 1 is pod i. */
  endpoints: DatapathEndpoint[];
  [Symbol.asyncDispose](): Promise<void>;
}

/** A lab with one node, pods a, b, … (identities 1001, 1002, …) and optionally an external host. */
export async function nodeLab(
  opts: {
    pods: number;
    external?: boolean;
    ingressDefaultDeny?: boolean[];
    egressDefaultDeny?: boolean[];
    /** max_entries of conntrack, policy and ipcache (compile-time; default the headers'). */
    mapSizes?: MapSizes;
  },
): Promise<NodeLab> {
  const lab = await Lab.create();
  try {
    const node = await lab.addNode("node");
    const pods: Pod[] = [];
    for (let i = 0; i < opts.pods; i++) pods.push(await lab.addPod(node, `p${i}`));
    const ext = opts.external ? await lab.addExternal(node, "ext") : undefined;
    const sink = await openSink(node, opts.mapSizes ? { mapSizes: opts.mapSizes } : {});
    try {
      await sink.updateIpcache(
        pods.flatMap((p, i) => [
          { prefix: p.ipv4, identity: 1001 + i },
          { prefix: p.ipv6, identity: 1001 + i },
        ]),
        [],
      );
      const endpoints = pods.map((p, i): DatapathEndpoint => ({
        id: i + 1,
        identity: 1001 + i,
        name: p.name,
        namespace: "lab",
        ips: [p.ipv4, p.ipv6],
        ifname: p.ifname,
        mac: p.mac,
      }));
      for (const [i, ep] of endpoints.entries()) {
        const f = flags(
          opts.ingressDefaultDeny?.[i] ?? false,
          opts.egressDefaultDeny?.[i] ?? false,
        );
        await sink.attach(ep, f, { ...change([]), full: true });
      }
      return {
        lab,
        node,
        pods,
        ext,
        sink,
        dp: sink.datapath,
        endpoints,
        async [Symbol.asyncDispose]() {
          await sink.close();
          await lab.close();
        },
      };
    } catch (e) {
      await sink.close();
      throw e;
    }
  } catch (e) {
    await lab.close();
    throw e;
  }
}

/** Runs action while reading events; returns the packet events seen until `until` or timeout. */
export async function withEvents(
  dp: Datapath,
  action: () => Promise<unknown>,
  opts: { until?: (e: PacketEvent) => boolean; timeoutMs?: number } = {},
): Promise<PacketEvent[]> {
  const ac = new AbortController();
  const it = dp.events(ac.signal)[Symbol.asyncIterator]();
  const seen: PacketEvent[] = [];
  let first: Promise<IteratorResult<DatapathEvent>> | undefined = it.next(); // opens the buffer
  // Generous (every caller stops at `until`): a loaded machine delivers events late.
  const timer = setTimeout(() => ac.abort(), opts.timeoutMs ?? 5000);
  try {
    await action();
    for (;;) {
      const r = await (first ?? it.next());
      first = undefined;
      if (r.done) break;
      if (r.value.type === "lost") continue;
      seen.push(r.value);
      if (opts.until?.(r.value)) break;
    }
  } finally {
    clearTimeout(timer);
    ac.abort();
    await it.return?.(undefined);
  }
  return seen;
}

// Minimal assertions comparing JSON renderings (bigints and byte arrays included).
function show(v: unknown): string {
  return JSON.stringify(
    v,
    (_k, x) => typeof x === "bigint" ? `${x}n` : x instanceof Uint8Array ? Array.from(x) : x,
  );
}

export function assert(v: unknown, msg = "assertion failed"): asserts v {
  if (!v) throw new Error(msg);
}

export function assertNot(v: unknown, msg = "expected a falsy value"): void {
  if (v) throw new Error(msg);
}

export function assertEquals(actual: unknown, expected: unknown, msg?: string): void {
  const a = show(actual), e = show(expected);
  if (a !== e) {
    throw new Error(`${msg ? msg + ": " : ""}values differ\n  actual:   ${a}\n  expected: ${e}`);
  }
}
