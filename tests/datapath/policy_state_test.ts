// The one planner of policy-map writes, EndpointPolicyState (what KernelSink runs for the agent,
// the kernel tests and the benches), without a kernel: a change never opens a window with less
// than the old or the new policy (adds are written before deletes, a key an add rewrites is never
// deleted), blocks shared by two entries are reference-counted, a plan is only state once
// committed, and a full write deletes the stale keys of a restart. MapWriter's order is checked
// with a recording bpftool.
import type { BpfTool } from "../../agent/datapath/bpftool.ts";
import {
  decode,
  LAYOUTS,
  POLICY_PREFIX_PROTO,
  VERDICT_DENY,
  VERDICT_REDIRECT,
} from "../../agent/datapath/codecs.ts";
import { MapWriter } from "../../agent/datapath/map_writer.ts";
import { encodePolicyEntry, keyId } from "../../agent/datapath/policy_map.ts";
import { EndpointPolicyState, policyEntryOf } from "../../agent/datapath/policy_state.ts";
import { assertEquals, entry } from "./_fixture.ts";

/** "port/bits" of each key: 80/16 is port 80 alone, 80/15 is 80-81. */
const blocks = (keys: readonly Uint8Array[]) =>
  keys.map((k) => {
    const d = decode(LAYOUTS.policyKey, k);
    return `${d.dport}/${Number(d.prefixlen) - POLICY_PREFIX_PROTO}`;
  }).sort();

Deno.test("EndpointPolicyState.plan() never leaves less than the old or the new policy", async (t) => {
  await t.step("a narrower deny replacing an allow: written first, the old block goes", () => {
    const s = new EndpointPolicyState(1);
    const allow = entry({ identity: 5, portLo: 80, portHi: 81, cookie: 1 });
    s.plan({ adds: [allow], deletes: [] }).commit();
    const deny = entry({ identity: 5, verdict: "deny", cookie: 1 });
    const plan = s.plan({ adds: [deny], deletes: [allow] });
    assertEquals(blocks(plan.updates.map((u) => u.key)), ["80/16"]);
    assertEquals(blocks(plan.deletes), ["80/15"]);
  });
  await t.step("a key an add rewrites is never deleted", () => {
    const s = new EndpointPolicyState(1);
    const allow = entry({ identity: 5 });
    s.plan({ adds: [allow], deletes: [] }).commit();
    const deny = { ...allow, verdict: "deny" as const };
    const same = s.plan({ adds: [deny], deletes: [allow] });
    assertEquals([same.updates.length, same.deletes.length], [1, 0], "the key is rewritten");
    const value = decode(LAYOUTS.policyValue, same.updates[0]!.value);
    assertEquals(Number(value.verdict), VERDICT_DENY);
  });
  await t.step("another entry that needs the same block keeps it", () => {
    const s = new EndpointPolicyState(1);
    const a = entry({ portLo: 80, portHi: 81 }); // 80/15
    s.plan({ adds: [a], deletes: [] }).commit();
    const b = entry({ portLo: 80, portHi: 82 }); // 80/15 and 82/16
    const plan = s.plan({ adds: [b], deletes: [a] });
    assertEquals(blocks(plan.updates.map((u) => u.key)), ["82/16"], "80/15 is unchanged");
    assertEquals(plan.deletes, []);
  });
  await t.step("MapWriter writes every update before the first delete", async () => {
    const batches: string[][] = [];
    const fake = {
      batch: (lines: readonly string[]) => {
        if (lines.length > 0) batches.push([...lines]);
        return Promise.resolve();
      },
      batchUntilError: (lines: readonly string[]) => {
        batches.push([...lines]);
        return Promise.resolve({ done: lines.length, error: undefined });
      },
    } as unknown as BpfTool;
    const s = new EndpointPolicyState(1);
    const allow = entry({ identity: 5, portLo: 80, portHi: 81 });
    s.plan({ adds: [allow], deletes: [] }).commit();
    const plan = s.plan({ adds: [entry({ identity: 5, verdict: "deny" })], deletes: [allow] });
    await new MapWriter(fake).apply("/pinned", plan.updates, plan.deletes);
    assertEquals(batches.map((b) => b.map((l) => l.split(" ")[1])), [["update"], ["delete"]]);
  });
});

Deno.test("EndpointPolicyState reference-counts blocks shared by entries", () => {
  const s = new EndpointPolicyState(7);
  const a = entry({ portLo: 80, portHi: 81 }); // 80/15
  const b = entry({ portLo: 80, portHi: 82 }); // 80/15 and 82/16
  const p1 = s.plan({ adds: [a, b], deletes: [] });
  assertEquals(blocks(p1.updates.map((u) => u.key)), ["80/15", "82/16"]);
  p1.commit();
  const p2 = s.plan({ adds: [], deletes: [b] });
  assertEquals([p2.updates, blocks(p2.deletes)], [[], ["82/16"]], "80/15 is still a's");
  p2.commit();
  const p3 = s.plan({ adds: [], deletes: [a] });
  assertEquals(blocks(p3.deletes), ["80/15"], "the last entry takes the block with it");
  p3.commit();
  assertEquals(s.size, 0);
});

Deno.test("EndpointPolicyState records a plan only when it is committed", () => {
  const s = new EndpointPolicyState(1);
  const e = entry();
  const failed = s.plan({ adds: [e], deletes: [] }); // the write failed: never committed
  const again = s.plan({ adds: [e], deletes: [] });
  assertEquals(again.updates.map((u) => keyId(u.key)), failed.updates.map((u) => keyId(u.key)));
  assertEquals(s.size, 0);
  again.commit();
  assertEquals(s.size, 1);
  assertEquals(s.plan({ adds: [e], deletes: [] }).updates, [], "an unchanged value is not written");
});

Deno.test("EndpointPolicyState full plans rewrite everything and delete stale keys", () => {
  const s = new EndpointPolicyState(7);
  const a = entry({ portLo: 80, portHi: 81 });
  const old = s.plan({ adds: [a, entry({ portLo: 443, portHi: 443 })], deletes: [] });
  old.commit();
  // A restart: the kernel holds old's keys; the new agent's state only has a.
  const fresh = new EndpointPolicyState(7);
  const plan = fresh.plan({ adds: [a], deletes: [] }, {
    full: true,
    stale: old.updates.map((u) => u.key),
  });
  assertEquals(blocks(plan.updates.map((u) => u.key)), ["80/15"]);
  assertEquals(blocks(plan.deletes), ["443/16"]);
});

Deno.test("policyEntryOf() maps the engine's entry 1:1, proxy port included", () => {
  const e = entry({ direction: "egress", verdict: "redirect", cookie: 9, proxyPort: 15001 });
  assertEquals(policyEntryOf(e), {
    egress: true,
    identity: 0,
    proto: 6,
    portLo: 80,
    portHi: 80,
    verdict: VERDICT_REDIRECT,
    cookie: 9,
    proxyPort: 15001,
  });
  const { proxyPort: _, ...plain } = e;
  assertEquals("proxyPort" in policyEntryOf(plain), false);
});

Deno.test("EndpointPolicyState: diff after diff, the kernel ends as one full write of the result (seeded)", () => {
  let seed = 15;
  const rnd = (n: number) => { // mulberry32
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) % n;
  };
  const verdicts = ["allow", "deny", "redirect", "audit"] as const;
  // Values follow from the peer, so entries whose blocks overlap agree on them (which of two
  // different values a shared block holds depends on the order of writes).
  const randomEntry = () => {
    const lo = [0, 80, 443, 8080][rnd(4)]!, identity = rnd(12);
    return entry({
      direction: rnd(2) ? "ingress" : "egress",
      identity,
      portLo: lo,
      portHi: lo === 0 ? 0 : lo + rnd(3),
      verdict: verdicts[identity % 4]!,
      cookie: identity % 3,
    });
  };
  const key = (e: ReturnType<typeof entry>) =>
    `${e.direction}/${e.identity}/${e.proto}/${e.portLo}-${e.portHi}`;
  const s = new EndpointPolicyState(3);
  const kernel = new Map<string, Uint8Array>();
  const current = new Map<string, ReturnType<typeof entry>>();
  let kinds = { updates: 0, deletes: 0, shared: 0 };
  for (let round = 0; round < 300; round++) {
    const adds = Array.from({ length: rnd(4) }, randomEntry);
    const deletes = [...current.values()].filter(() => rnd(6) === 0);
    const plan = s.plan({ adds, deletes });
    if (rnd(5) === 0) continue; // a write that failed: never committed, the kernel unchanged
    for (const u of plan.updates) kernel.set(keyId(u.key), u.value);
    for (const d of plan.deletes) kernel.delete(keyId(d));
    plan.commit();
    for (const e of deletes) current.delete(key(e));
    for (const e of adds) current.set(key(e), e);
    kinds = {
      updates: kinds.updates + plan.updates.length,
      deletes: kinds.deletes + plan.deletes.length,
      // A deleted entry's block that stays: another entry still needs it.
      shared: kinds.shared + deletes.filter((e) =>
        !current.has(key(e)) &&
        encodePolicyEntry(3, policyEntryOf(e)).some((k) => kernel.has(keyId(k.key)))
      ).length,
    };
    const full = new EndpointPolicyState(3).plan({ adds: [...current.values()], deletes: [] }, {
      full: true,
    });
    const want = new Map(full.updates.map((u) => [keyId(u.key), u.value]));
    assertEquals(
      [...kernel].sort(([a], [b]) => a < b ? -1 : 1),
      [...want].sort(([a], [b]) => a < b ? -1 : 1),
      `round ${round}`,
    );
    assertEquals(
      new Set(s.keys().map(keyId)),
      new Set(want.keys()),
      `recorded keys, round ${round}`,
    );
  }
  // Guard: the walk exercised writes, deletes and keys shared between entries.
  assertEquals([kinds.updates > 100, kinds.deletes > 30, kinds.shared > 0], [true, true, true]);
});
