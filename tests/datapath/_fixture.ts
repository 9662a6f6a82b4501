// Shared setup for the datapath tests: a lab node with pods, the Datapath opened on the node's
// bpffs from the test process (tc/ip/bpftool through nsenter), and helpers to collect events.
import { Datapath, type DatapathEvent } from "../../agent/datapath/datapath.ts";
import type { PacketEvent } from "../../agent/datapath/events.ts";
import { type External, Lab, type Node, type Pod } from "../helpers/netns.ts";

export const BUILD_DIR = new URL("../../bpf/build", import.meta.url).pathname;
/** Identities used by the tests (CIDR identities are node-local: bit 24 set). */
export const ID = { a: 1001, b: 1002, c: 1003, cidr: 16777217 } as const;

export interface NodeLab {
  lab: Lab;
  node: Node;
  pods: Pod[];
  ext: External | undefined;
  dp: Datapath;
  [Symbol.asyncDispose](): Promise<void>;
}

/** A lab with one node, pods a, b, … (identities 1001, 1002, …) and optionally an external host. */
export async function nodeLab(
  opts: {
    pods: number;
    external?: boolean;
    ingressDefaultDeny?: boolean[];
    egressDefaultDeny?: boolean[];
  },
): Promise<NodeLab> {
  const lab = await Lab.create();
  try {
    const node = await lab.addNode("node");
    const pods: Pod[] = [];
    for (let i = 0; i < opts.pods; i++) pods.push(await lab.addPod(node, `p${i}`));
    const ext = opts.external ? await lab.addExternal(node, "ext") : undefined;
    const dp = await Datapath.open({
      bpffsRoot: `${node.bpffs}/cilia`,
      buildDir: BUILD_DIR,
      netns: node.netns,
    });
    await dp.updateIpcache(
      pods.flatMap((p, i) => [
        { prefix: p.ipv4, identity: 1001 + i },
        { prefix: p.ipv6, identity: 1001 + i },
      ]),
      [],
    );
    for (const [i, p] of pods.entries()) {
      await dp.upsertEndpoint({
        ifname: p.ifname,
        epId: i + 1,
        identity: 1001 + i,
        ipv4: p.ipv4,
        ipv6: p.ipv6,
        mac: p.mac,
        ingressDefaultDeny: opts.ingressDefaultDeny?.[i] ?? false,
        egressDefaultDeny: opts.egressDefaultDeny?.[i] ?? false,
      });
    }
    return {
      lab,
      node,
      pods,
      ext,
      dp,
      async [Symbol.asyncDispose]() {
        await dp.close();
        await lab.close();
      },
    };
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
  const timer = setTimeout(() => ac.abort(), opts.timeoutMs ?? 1500);
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
