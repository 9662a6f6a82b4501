// Connection tracking in the lxc programs: replies and related ICMP errors pass without policy,
// the original direction is checked on every packet, and the garbage collector frees entries.
import { monotonicNs } from "../../agent/datapath/ffi.ts";
import { dumpConntrack } from "../../agent/datapath/conntrack_gc.ts";
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
import { VERDICT_DENY } from "../../agent/datapath/codecs.ts";
import { needsRoot } from "../helpers/root.ts";

const opts = { ...needsRoot(), sanitizeOps: true, sanitizeResources: true };
const TCP = 6, UDP = 17, ICMP = 1;
const SEC = 1_000_000_000n;
/** A timeout for an exchange that must succeed: generous, as a loaded machine is slow. */
const OK_MS = 3000;

Deno.test(
  "conntrack passes replies and related ICMP errors when the reverse direction is default deny",
  opts,
  async () => {
    // a: ingress default deny; b: ingress and egress default deny, admits a on TCP 80, UDP 53-54, echo.
    await using t = await nodeLab({
      pods: 2,
      ingressDefaultDeny: [true, true],
      egressDefaultDeny: [false, true],
    });
    const [a, b] = t.pods as [typeof t.pods[0], typeof t.pods[0]];
    const pa = t.lab.peer(a.netns), pb = t.lab.peer(b.netns);
    await pb.listen("tcp", 80);
    await pb.listen("udp", 53);
    await t.sink.applyPolicy(
      2,
      change([
        entry({ identity: ID.a, proto: TCP, portLo: 80, portHi: 80 }),
        entry({ identity: ID.a, proto: UDP, portLo: 53, portHi: 54 }),
        entry({ identity: ID.a, proto: ICMP, portLo: 8, portHi: 8 }),
      ]),
    );
    assert(await pa.probe("tcp", b.ipv4, 80, OK_MS), "TCP replies pass b's egress and a's ingress");
    assert(await pa.probe("udp", b.ipv4, 53, OK_MS), "UDP replies pass");
    assert(await t.lab.ping(a.netns, b.ipv4), "echo replies pass");
    assertNot(
      await t.lab.ping(b.netns, a.ipv4, { timeoutSec: 0.3 }),
      "b's own egress stays closed",
    );
    // UDP to a closed port: b answers with an ICMP port unreachable, related to a's flow.
    const events = await withEvents(t.dp, () => pa.probe("udp", b.ipv4, 54, 300), {
      until: (e) => e.proto === ICMP && e.epId === 1,
    });
    const mine = events.filter((e) => e.type === "drop" && (e.proto === ICMP || e.dport === 54));
    assertEquals(mine.map((e) => [e.proto, e.subtype]), []);
    const related = events.filter((e) => e.type === "trace" && e.proto === ICMP && e.ctState === 3);
    assertEquals(related.map((e) => [e.epId, e.direction, e.dport]), [[2, "egress", 3], [
      1,
      "ingress",
      3,
    ]]);
    const entries = dumpConntrack(t.dp.pins.maps.cilia_ct);
    const tcp = entries.find((e) => e.key["tuple.proto"] === TCP && e.key.ep_id === 2);
    assert(tcp, "b's ingress TCP entry");
    assertEquals(tcp.key.dir, 1);
    assert(Number(tcp.value.flags) & 1, "seen reply");
  },
);

Deno.test(
  "conntrack rechecks policy on established flows: removing an allow or adding a deny cuts them",
  opts,
  async (s) => {
    await using t = await nodeLab({ pods: 2, ingressDefaultDeny: [false, true] });
    const [a, b] = t.pods as [typeof t.pods[0], typeof t.pods[0]];
    const pa = t.lab.peer(a.netns);
    await t.lab.peer(b.netns).listen("tcp", 80);
    const allow = entry({ identity: ID.a, proto: TCP, cookie: 3 });
    const deny = { ...allow, verdict: "deny" as const };
    await t.sink.applyPolicy(2, change([allow]));

    await s.step("removed allow", async () => {
      assert(await pa.open("c1", b.ipv4, 80));
      assert(await pa.send("c1", "hello", OK_MS));
      await t.sink.applyPolicy(2, change([], [allow]));
      const events = await withEvents(t.dp, () => pa.send("c1", "again", 300), {
        until: (e) => e.type === "drop",
      });
      assertEquals(events.find((e) => e.type === "drop")?.subtype, 133);
    });
    await s.step("new deny", async () => {
      await t.sink.applyPolicy(2, change([allow]));
      assert(await pa.open("c2", b.ipv4, 80));
      assert(await pa.send("c2", "hello", OK_MS));
      await t.sink.applyPolicy(2, change([deny])); // a new value for the key: an add, as diffs say
      assertEquals((await t.dp.dumpPolicy(2)).map((e) => e.verdict), [VERDICT_DENY]);
      const events = await withEvents(t.dp, () => pa.send("c2", "again", 300), {
        until: (e) => e.type === "drop",
      });
      assertEquals(events.find((e) => e.type === "drop")?.subtype, 181);
    });
  },
);

Deno.test(
  "a flow's first reply is traced with the peer's identity at both hooks",
  opts,
  async () => {
    await using t = await nodeLab({ pods: 2 });
    const [a, b] = t.pods as [typeof t.pods[0], typeof t.pods[0]];
    await t.lab.peer(b.netns).listen("tcp", 80);
    const isReply = (e: { type: string; ctState: number; dport: number }) =>
      e.type === "trace" && e.ctState === 2 && e.dport !== 80;
    const events = await withEvents(
      t.dp,
      () => t.lab.peer(a.netns).probe("tcp", b.ipv4, 80, OK_MS),
      {
        until: (e) => isReply(e) && e.epId === 1,
      },
    );
    const replies = events.filter(isReply).map((
      e,
    ) => [e.epId, e.direction, e.srcIdentity, e.dstIdentity]);
    // b's egress and a's ingress: the identity looked up for the reply, not the endpoint's own.
    assertEquals(replies, [[2, "egress", ID.b, ID.a], [1, "ingress", ID.b, ID.a]]);
  },
);

Deno.test("conntrack garbage collector deletes expired entries only", opts, async () => {
  await using t = await nodeLab({ pods: 2 });
  const [a, b] = t.pods as [typeof t.pods[0], typeof t.pods[0]];
  const pa = t.lab.peer(a.netns);
  await t.lab.peer(b.netns).listen("tcp", 80);
  await t.lab.peer(b.netns).listen("udp", 53);
  assert(await pa.open("keep", b.ipv4, 80));
  assert(await pa.send("keep", "x", OK_MS));
  assert(await pa.probe("udp", b.ipv4, 53, OK_MS));
  const map = t.dp.pins.maps.cilia_ct;
  const count = (proto: number) =>
    dumpConntrack(map).filter((e) => e.key["tuple.proto"] === proto).length;
  assertEquals([count(TCP) >= 2, count(UDP)], [true, 2], "egress of a + ingress of b");
  assertEquals(t.dp.collectConntrack().deleted, 0);
  const now = monotonicNs();
  const r = t.dp.collectConntrack(now + 61n * SEC);
  assert(r.deleted >= 2, `UDP entries expired after 60 s (deleted ${r.deleted})`);
  assertEquals(count(UDP), 0);
  assert(count(TCP) >= 2, "established TCP lives 6 h");
  t.dp.collectConntrack(now + 7n * 3600n * SEC);
  assertEquals(dumpConntrack(map).length, 0);
});
