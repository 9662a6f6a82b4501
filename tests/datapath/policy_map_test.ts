// Bulk policy map changes through `bpftool batch`, redirect verdicts, and endpoint removal.
import { attachedPrograms } from "../../agent/datapath/loader.ts";
import type { PolicyEntry } from "../../agent/datapath/datapath.ts";
import { assert, assertEquals, ID, nodeLab, withEvents } from "./_fixture.ts";

const opts = { sanitizeOps: true, sanitizeResources: true };

Deno.test(
  "policy map takes 10,000 entries in one change set and dumps them back",
  opts,
  async () => {
    await using t = await nodeLab({ pods: 1 });
    const adds: PolicyEntry[] = [];
    for (let i = 0; i < 10_000; i++) {
      const port = 1 + (i % 1000) * 2;
      adds.push({
        egress: i % 2 === 0,
        identity: 256 + Math.floor(i / 1000),
        proto: 6,
        portLo: port,
        portHi: port,
        verdict: 1,
        cookie: i,
      });
    }
    const started = performance.now();
    await t.dp.applyPolicyChanges(1, { adds, deletes: [] });
    const ms = performance.now() - started;
    console.log(`  10,000 policy entries written in ${ms.toFixed(0)} ms`);
    assertEquals((await t.dp.dumpPolicy(1)).length, 10_000);
    const started2 = performance.now();
    await t.dp.applyPolicyChanges(1, { adds: [], deletes: adds });
    console.log(
      `  10,000 policy entries deleted in ${(performance.now() - started2).toFixed(0)} ms`,
    );
    assertEquals(await t.dp.dumpPolicy(1), []);
    // Deleting entries that are already gone is not an error.
    await t.dp.applyPolicyChanges(1, { adds: [], deletes: adds.slice(0, 3) });
  },
);

Deno.test(
  "a redirect verdict goes to its proxy port; without a proxy port it drops with 178",
  opts,
  async () => {
    await using t = await nodeLab({ pods: 2, ingressDefaultDeny: [false, true] });
    const [a, b] = t.pods as [typeof t.pods[0], typeof t.pods[0]];
    await t.lab.peer(b.netns).listen("tcp", 8080);
    const redirect: PolicyEntry = {
      egress: false,
      identity: ID.a,
      proto: 6,
      portLo: 8080,
      portHi: 8080,
      verdict: 3,
      cookie: 77,
      proxyPort: 15001,
    };
    await t.dp.applyPolicyChanges(2, { adds: [redirect], deletes: [] });
    assertEquals(await t.dp.dumpPolicy(2), [redirect]);
    const isVerdict = (e: { type: string; epId: number }) =>
      e.type === "policy-verdict" && e.epId === 2;
    const events = await withEvents(t.dp, () => t.lab.peer(a.netns).probe("tcp", b.ipv4, 8080), {
      until: isVerdict,
    });
    const v = events.find(isVerdict);
    assertEquals([v?.verdict, v?.cookie], ["redirect", 77]);
    assert(await t.lab.peer(a.netns).probe("tcp", b.ipv4, 8080));

    // The same entry without a proxy port: nothing could enforce its L7 rules, so it fails closed.
    const noProxy: PolicyEntry = { ...redirect, proxyPort: 0, cookie: 78 };
    await t.dp.applyPolicyChanges(2, { adds: [noProxy], deletes: [] });
    const isDrop = (e: { type: string; epId: number }) => e.type === "drop" && e.epId === 2;
    const drops = await withEvents(t.dp, () => t.lab.peer(a.netns).probe("tcp", b.ipv4, 8080), {
      until: isDrop,
    });
    const d = drops.find(isDrop) as { subtype?: number } | undefined;
    assertEquals(d?.subtype, 178);
    assert(!(await t.lab.peer(a.netns).probe("tcp", b.ipv4, 8080)));
  },
);

Deno.test(
  "removeEndpoint() detaches the programs and deletes the endpoint's entries",
  opts,
  async () => {
    await using t = await nodeLab({ pods: 2, ingressDefaultDeny: [true, true] });
    const [a, b] = t.pods as [typeof t.pods[0], typeof t.pods[0]];
    const entry: PolicyEntry = {
      egress: false,
      identity: 0,
      proto: 0,
      portLo: 0,
      portHi: 65535,
      verdict: 1,
      cookie: 0,
    };
    await t.dp.applyPolicyChanges(1, { adds: [entry], deletes: [] });
    await t.dp.applyPolicyChanges(2, { adds: [entry], deletes: [] });
    assert(await t.lab.ping(a.netns, b.ipv4));
    await t.dp.removeEndpoint(b.ifname, 2);
    assertEquals(await attachedPrograms(b.ifname, "ingress", t.node.netns), []);
    assertEquals(await attachedPrograms(b.ifname, "egress", t.node.netns), []);
    assertEquals(await t.dp.dumpPolicy(2), []);
    assertEquals(await t.dp.dumpPolicy(1), [entry], "other endpoints keep theirs");
    assert(await t.lab.ping(a.netns, b.ipv4), "a veth without programs is unmanaged");
  },
);
