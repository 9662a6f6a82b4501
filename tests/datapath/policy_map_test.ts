// Bulk policy map changes through the agent's KernelSink (`bpftool batch` under it), redirect
// verdicts with and without a proxy port, and endpoint removal.
import { attachedPrograms } from "../../agent/datapath/loader.ts";
import { policyEntryOf } from "../../agent/datapath/policy_state.ts";
import type { SinkEntry } from "../../agent/endpoint/datapath_sink.ts";
import { assert, assertEquals, change, entry, ID, nodeLab, withEvents } from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const opts = { ...needsRoot(), sanitizeOps: true, sanitizeResources: true };

Deno.test(
  "policy map takes 10,000 entries in one change set and dumps them back",
  opts,
  async () => {
    await using t = await nodeLab({ pods: 1 });
    const adds: SinkEntry[] = [];
    for (let i = 0; i < 10_000; i++) {
      const port = 1 + (i % 1000) * 2;
      adds.push(entry({
        direction: i % 2 === 0 ? "egress" : "ingress",
        identity: 256 + Math.floor(i / 1000),
        portLo: port,
        portHi: port,
        cookie: i,
      }));
    }
    const started = performance.now();
    await t.sink.applyPolicy(1, change(adds));
    const ms = performance.now() - started;
    console.log(`  10,000 policy entries written in ${ms.toFixed(0)} ms`);
    assertEquals((await t.dp.dumpPolicy(1)).length, 10_000);
    const started2 = performance.now();
    await t.sink.applyPolicy(1, change([], adds));
    console.log(
      `  10,000 policy entries deleted in ${(performance.now() - started2).toFixed(0)} ms`,
    );
    assertEquals(await t.dp.dumpPolicy(1), []);
    // Deleting entries that are already gone is not an error (and writes nothing).
    await t.sink.applyPolicy(1, change([], adds.slice(0, 3)));
    assertEquals(t.sink.notReady(), []);
  },
);

Deno.test(
  "a redirect verdict names its proxy port; with no proxy listening, or no port, it drops with 178",
  opts,
  async () => {
    await using t = await nodeLab({ pods: 2, ingressDefaultDeny: [false, true] });
    const [a, b] = t.pods as [typeof t.pods[0], typeof t.pods[0]];
    await t.lab.peer(b.netns).listen("tcp", 8080);
    const redirect = entry({
      identity: ID.a,
      portLo: 8080,
      portHi: 8080,
      verdict: "redirect",
      cookie: 77,
      proxyPort: 15001,
    });
    await t.sink.applyPolicy(2, change([redirect]));
    assertEquals(await t.dp.dumpPolicy(2), [policyEntryOf(redirect)]);
    assertEquals((await t.dp.dumpPolicy(2))[0]?.proxyPort, 15001);
    const isVerdict = (e: { type: string; epId: number }) =>
      e.type === "policy-verdict" && e.epId === 2;
    const events = await withEvents(t.dp, () => t.lab.peer(a.netns).probe("tcp", b.ipv4, 8080), {
      until: isVerdict,
    });
    const v = events.find(isVerdict);
    assertEquals([v?.verdict, v?.cookie], ["redirect", 77]);
    // No proxy listens on 15001 in this lab (tests/e2e/l7_http_test.ts runs the real one): the
    // kernel's socket lookup fails and the connection is dropped, never passed unchecked.
    const down = await withEvents(t.dp, () => t.lab.peer(a.netns).probe("tcp", b.ipv4, 8080), {
      until: (e) => e.type === "drop" && e.epId === 2,
    });
    assertEquals(
      (down.find((e) => e.type === "drop" && e.epId === 2) as { subtype?: number })?.subtype,
      178,
    );

    // The same entry without a proxy port: nothing could enforce its L7 rules, so it fails closed.
    const { proxyPort: _, ...noProxy } = { ...redirect, cookie: 78 };
    await t.sink.applyPolicy(2, change([noProxy]));
    assertEquals(await t.dp.dumpPolicy(2), [policyEntryOf(noProxy)]);
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
    const any = entry({ proto: 0, portLo: 0, portHi: 65535 });
    await t.sink.applyPolicy(1, change([any]));
    await t.sink.applyPolicy(2, change([any]));
    assert(await t.lab.ping(a.netns, b.ipv4));
    await t.sink.removeEndpoint(t.endpoints[1]!);
    assertEquals(await attachedPrograms(b.ifname, "ingress", t.node.netns), []);
    assertEquals(await attachedPrograms(b.ifname, "egress", t.node.netns), []);
    assertEquals(await t.dp.dumpPolicy(2), []);
    assertEquals(await t.dp.dumpPolicy(1), [policyEntryOf(any)], "other endpoints keep theirs");
    assert(await t.lab.ping(a.netns, b.ipv4), "a veth without programs is unmanaged");
  },
);
