// Same-node delivery past the destination's veth pair (bpf/lib/peer.h): a packet between two pods
// of one node is enforced by the destination's ingress policy at the source's veth and put
// straight into the destination's netns, so the destination's host veth transmits nothing; with
// the tail-call array emptied, the old path (the destination veth's egress program) takes over.
import { execCommand } from "../../agent/sys/exec.ts";
import { PEER_CALLS_MAP } from "../../agent/datapath/loader.ts";
import {
  assert,
  assertEquals,
  assertNot,
  change,
  entry,
  ID,
  nodeLab,
  withEvents,
} from "./_fixture.ts";
import type { Lab } from "../helpers/netns.ts";
import { needsRoot } from "../helpers/root.ts";

const opts = { ...needsRoot(), sanitizeOps: true, sanitizeResources: true };
const PINGS = 10;

/** A link's ifindex and packet counters in a netns. */
async function link(lab: Lab, netns: string, dev: string) {
  const [l] = JSON.parse(await lab.run(netns, ["ip", "-s", "-j", "link", "show", "dev", dev]));
  const s = l.stats64 ?? l.stats;
  return { ifindex: l.ifindex as number, rx: s.rx.packets as number, tx: s.tx.packets as number };
}

/** PINGS echo requests at 20 ms intervals; the replies received. */
async function pings(lab: Lab, netns: string, ip: string): Promise<number> {
  const r = await lab.exec(netns, ["ping", "-c", String(PINGS), "-i", "0.02", "-W", "1", ip]);
  return Number(/(\d+) received/.exec(r.stdout)?.[1] ?? 0);
}

type NodeLab = Awaited<ReturnType<typeof nodeLab>>;
type Pod = NodeLab["pods"][number];

/** A ping from a to b that b's ingress denies: the drop event it makes. */
async function deniedPing(t: NodeLab, a: Pod, b: Pod) {
  const events = await withEvents(
    t.dp,
    () => t.lab.ping(a.netns, b.ipv4, { timeoutSec: 0.3 }),
    { until: (e) => e.type === "drop" },
  );
  const drop = events.find((e) => e.type === "drop");
  assert(drop, "a drop event");
  return drop;
}

/** b (endpoint 2) lets a in on every port. */
function allowFromA(t: NodeLab) {
  return t.sink.applyPolicy(
    2,
    change([entry({ identity: ID.a, proto: 0, portLo: 0, portHi: 65535 })]),
  );
}

Deno.test(
  "lxc puts IPv4 between local pods into the destination's netns after its ingress policy",
  opts,
  async () => {
    await using t = await nodeLab({ pods: 2, ingressDefaultDeny: [false, true] });
    const [a, b] = t.pods as [typeof t.pods[0], typeof t.pods[0]];
    // The first packet (no neighbour entry for b yet) takes the stack, which resolves b's MAC.
    assertNot(await t.lab.ping(a.netns, b.ipv4, { timeoutSec: 0.3 }), "b's default deny");
    const aVeth = await link(t.lab, t.node.netns, a.ifname);
    const drop = await deniedPing(t, a, b);
    // Run at a's veth (the tail call from its cil_from_container), for b (endpoint 2).
    assertEquals(
      [drop.subtype, drop.epId, drop.direction, drop.srcIdentity, drop.dstIdentity, drop.ifindex],
      [133, 2, "ingress", ID.a, ID.b, aVeth.ifindex],
    );

    await allowFromA(t);
    const before = await link(t.lab, t.node.netns, b.ifname);
    const podBefore = await link(t.lab, b.netns, "eth0");
    assertEquals(await pings(t.lab, a.netns, b.ipv4), PINGS, "allowed now");
    const after = await link(t.lab, t.node.netns, b.ifname);
    const podAfter = await link(t.lab, b.netns, "eth0");
    // The old path transmits every request on b's host veth; a stray ARP/ND probe may still.
    assert(after.tx - before.tx <= 2, `b's host veth sent ${after.tx - before.tx} packets`);
    assert(podAfter.rx - podBefore.rx >= PINGS, `b received ${podAfter.rx - podBefore.rx}`);
    // Replies come back the same way (conntrack's reply at a's ingress, on b's veth).
    assert(
      (await link(t.lab, t.node.netns, a.ifname)).tx - aVeth.tx <= 2 + 2,
      "the replies came past a's host veth too",
    );
    await t.lab.peer(b.netns).listen("tcp", 80);
    assert(await t.lab.peer(a.netns).probe("tcp", b.ipv4, 80, 3000), "TCP both ways");
  },
);

Deno.test(
  "lxc without its tail-call array sends local IPv4 to the destination veth's egress program",
  opts,
  async () => {
    await using t = await nodeLab({ pods: 2, ingressDefaultDeny: [false, true] });
    const [a, b] = t.pods as [typeof t.pods[0], typeof t.pods[0]];
    const calls = `${t.dp.pins.progDir}/${PEER_CALLS_MAP}`;
    const del = await execCommand([
      "bpftool",
      "map",
      "delete",
      "pinned",
      calls,
      "key",
      "0",
      "0",
      "0",
      "0",
    ]);
    assertEquals(del.code, 0, del.stderr);
    assertNot(await t.lab.ping(a.netns, b.ipv4, { timeoutSec: 0.3 }), "b's default deny");
    const bVeth = await link(t.lab, t.node.netns, b.ifname);
    const drop = await deniedPing(t, a, b);
    assertEquals([drop.subtype, drop.epId, drop.ifindex], [133, 2, bVeth.ifindex]);
    await allowFromA(t);
    assertEquals(await pings(t.lab, a.netns, b.ipv4), PINGS, "allowed now");
    const after = await link(t.lab, t.node.netns, b.ifname);
    assert(after.tx - bVeth.tx >= PINGS, `b's host veth sent ${after.tx - bVeth.tx} packets`);
  },
);
