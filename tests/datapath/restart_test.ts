// The datapath survives an agent restart: the agent's KernelSink runs inside the node netns (as
// the agent does, with the node's bpffs bind-mounted at /sys/fs/bpf), exits, and opens again;
// pins are reused, programs stay attached, maps keep their entries, the restarted sink rewrites
// the same policy and reconciles, and established connections keep working. A changed object is
// loaded and swapped in without losing maps or connections.
import { BpfTool, ProgShowSchema } from "../../agent/datapath/bpftool.ts";
import {
  attachedProgramIds,
  attachedPrograms,
  detachEndpoint,
  runsProgram,
} from "../../agent/datapath/loader.ts";
import { Datapath, type PolicyEntry } from "../../agent/datapath/datapath.ts";
import { policyEntryOf } from "../../agent/datapath/policy_state.ts";
import { type Lab, type Node } from "../helpers/netns.ts";
import {
  assert,
  assertEquals,
  assertNot,
  BUILD_DIR,
  entry,
  flags,
  ID,
  nodeLab,
} from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const opts = { ...needsRoot(), sanitizeOps: true, sanitizeResources: true };
const REPO = new URL("../../", import.meta.url);
/** A timeout for an exchange that must succeed: generous, as a loaded machine is slow. */
const OK_MS = 3000;

/**
 * A minimal agent: opens the agent's KernelSink at the default root, writes cfg's ipcache and
 * attaches its endpoints with their policy (what a restarted agent does with its restored state),
 * optionally reconciles, and prints a summary.
 */
const AGENT = `
import { KernelSink } from "${new URL("agent/datapath/kernel_sink.ts", REPO).href}";
import { MAP_OPS } from "${new URL("agent/datapath/map_writer.ts", REPO).href}";
import { Logger } from "${new URL("agent/log.ts", REPO).href}";
const cfg = JSON.parse(Deno.args[0]);
const sink = await KernelSink.open({
  bpffsRoot: "/sys/fs/bpf/cilia",
  buildDir: cfg.buildDir,
  log: new Logger({ level: "error" }),
});
await sink.updateIpcache(cfg.ipcache ?? [], []);
for (const [ep, flags, adds] of cfg.endpoints ?? []) {
  await sink.attach(ep, flags, { adds, deletes: [], revision: 1, full: true });
}
const reconciled = cfg.reconcile ? await sink.reconcile() : undefined;
const dp = sink.datapath;
const ops = Object.fromEntries(MAP_OPS);
console.log(JSON.stringify({ loaded: dp.loaded, root: dp.pins.root, policy: await dp.dumpPolicy(2), reconciled, ops }));
await sink.close();
`;

/**
 * One filter at each hook of `ifname`, running the endpoint programs: the agent in the node
 * attaches them in process (libbpf names a filter `<kernel name>:[<id>]`).
 */
async function assertRuns(ifname: string, netns: string): Promise<void> {
  for (const [hook, prog] of [["ingress", "cil_from_container"], ["egress", "cil_to_container"]]) {
    const names = await attachedPrograms(ifname, hook as "ingress" | "egress", netns);
    assertEquals(names.length, 1, `one filter at ${hook} of "${ifname}": ${names}`);
    assert(runsProgram(names[0]!, prog!), `"${names[0]}" at ${hook} runs ${prog}`);
  }
}

async function runAgent(lab: Lab, node: Node, cfg: Record<string, unknown>) {
  const script = `${lab.dir}/agent.ts`;
  await Deno.writeTextFile(script, AGENT);
  const argv = ["env", "DENO_NO_UPDATE_CHECK=1", Deno.execPath(), "run", "-A", "--config"];
  const r = await lab.execInNode(node, [
    ...argv,
    new URL("deno.json", REPO).pathname,
    script,
    JSON.stringify({ buildDir: BUILD_DIR, ...cfg }),
  ]);
  if (r.code !== 0) throw new Error(`The agent failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as {
    loaded: boolean;
    root: string;
    policy: PolicyEntry[];
    reconciled?: { endpoints: number; policyKeys: number; prefixes: number };
    /** Entries written by map/op/outcome (map_writer.ts). */
    ops: Record<string, number>;
  };
}

Deno.test(
  "datapath restart keeps pins, attachments, map entries and connections",
  opts,
  async (t) => {
    await using l = await nodeLab({ pods: 2 });
    const [a, b] = l.pods as [typeof l.pods[0], typeof l.pods[0]];
    const pa = l.lab.peer(a.netns);
    await l.lab.peer(b.netns).listen("tcp", 80);
    await l.lab.peer(b.netns).listen("tcp", 81);
    // The fixture's in-process sink pinned under <bpffs>/cilia, which is /sys/fs/bpf/cilia
    // inside the node: the in-node agent finds the same pins.
    const allow = entry({ identity: ID.a, cookie: 11 });
    const written = [policyEntryOf(allow)];
    const endpointB = [l.endpoints[1], flags(true, false), [allow]];
    const endpointA = [l.endpoints[0], flags(false, false), []];

    await t.step("an agent inside the node applies endpoint and policy", async () => {
      const out = await runAgent(l.lab, l.node, { endpoints: [endpointB] });
      assertEquals([out.loaded, out.root, out.policy], [false, "/sys/fs/bpf/cilia", written]);
      assert(await pa.open("c", b.ipv4, 80));
      assert(await pa.send("c", "before", OK_MS));
      assertNot(await pa.probe("tcp", b.ipv4, 81, 300));
    });
    await t.step(
      "a restarted agent reuses everything, rewrites its state and reconciles",
      async () => {
        const ipcache = [a, b].flatMap((p, i) =>
          [p.ipv4, p.ipv6].map((prefix) => ({ prefix, identity: ID.a + i }))
        );
        const out = await runAgent(l.lab, l.node, {
          ipcache,
          endpoints: [endpointA, endpointB],
          reconcile: true,
        });
        assertEquals([out.loaded, out.policy], [false, written]);
        assertEquals(out.reconciled, { endpoints: 0, policyKeys: 0, prefixes: 0 });
        await assertRuns(b.ifname, l.node.netns);
        assert(await pa.send("c", "after restart", OK_MS));
        assert(await pa.probe("tcp", b.ipv4, 80, OK_MS));
        assertNot(await pa.probe("tcp", b.ipv4, 81, 300));
      },
    );
    await t.step("a restart that finds its state in place writes only what differs", async () => {
      const ipcache = [a, b].flatMap((p, i) =>
        [p.ipv4, p.ipv6].map((prefix) => ({ prefix, identity: ID.a + i }))
      );
      const same = await runAgent(l.lab, l.node, {
        ipcache,
        endpoints: [endpointA, endpointB],
        reconcile: true,
      });
      assertEquals(same.ops, {}, "nothing written: entries, programs, policy, ipcache in place");
      assert(await pa.send("c", "after a restart without writes", OK_MS));
      assertNot(await pa.probe("tcp", b.ipv4, 81, 300));
      // B's policy value (its cookie) and A's flags differ from the kernel's: both are written.
      const changed = entry({ identity: ID.a, cookie: 12 });
      const out = await runAgent(l.lab, l.node, {
        ipcache,
        endpoints: [[l.endpoints[0], flags(true, false), []], [
          l.endpoints[1],
          flags(true, false),
          [changed],
        ]],
        reconcile: true,
      });
      assertEquals(out.policy, [policyEntryOf(changed)]);
      assertEquals(out.ops["cilia_policy/update/success"], 1);
      assertEquals(out.ops["cilia_endpoints/update/success"], 1, "only A's entry is written");
      assertEquals(out.ops["cilia_ipcache/update/success"], undefined);
      const back = await runAgent(l.lab, l.node, { endpoints: [endpointA, endpointB] });
      assertEquals(back.policy, written);
      assert(await pa.send("c", "after the changes", OK_MS));
    });
    await t.step(
      "a restart attaches programs that were detached meanwhile, and only those",
      async () => {
        await detachEndpoint(b.ifname, l.node.netns);
        assertEquals(await attachedPrograms(b.ifname, "egress", l.node.netns), []);
        const out = await runAgent(l.lab, l.node, {
          ipcache: [a, b].flatMap((p, i) =>
            [p.ipv4, p.ipv6].map((prefix) => ({ prefix, identity: ID.a + i }))
          ),
          endpoints: [endpointA, endpointB],
          reconcile: true,
        });
        assertEquals(
          out.ops,
          { "cilia_endpoints/update/success": 1 },
          "B's entry and programs only",
        );
        await assertRuns(b.ifname, l.node.netns);
        assert(await pa.probe("tcp", b.ipv4, 80, OK_MS));
        assertNot(await pa.probe("tcp", b.ipv4, 81, 300));
        // One tc process for many links: it stops at a link that is gone, the rest is unknown.
        const seen = await attachedProgramIds([a.ifname, "cilia-gone0", b.ifname], l.node.netns);
        assertEquals([...seen.keys()], [a.ifname]);
      },
    );
    await t.step("a changed object is loaded, swapped in, and keeps the maps", async () => {
      const src = `${l.lab.dir}/bpf/`;
      await Deno.mkdir(`${src}lib`, { recursive: true });
      for (
        const f of [
          "lxc.c",
          ...[...Deno.readDirSync(new URL("bpf/lib", REPO))].map((e) => `lib/${e.name}`),
        ]
      ) {
        await Deno.copyFile(new URL(`bpf/${f}`, REPO), src + f);
      }
      await Deno.writeTextFile(`${src}lxc.c`, "/* next version */\n", { append: true });
      const before = l.dp.pins.progDir;
      const dp = await Datapath.open({
        bpffsRoot: `${l.node.bpffs}/cilia`,
        buildDir: `${l.lab.dir}/build`,
        sourceDir: src,
        netns: l.node.netns,
      });
      try {
        assert(dp.loaded && dp.pins.progDir !== before, "new programs");
        assertNot(Deno.statSync(dp.pins.progDir).isFile);
        let oldGone = false;
        try {
          Deno.statSync(before);
        } catch {
          oldGone = true;
        }
        assert(oldGone, "the old programs' pins are removed");
        const shown = await l.lab.run(l.node.netns, [
          "tc",
          "-j",
          "filter",
          "show",
          "dev",
          b.ifname,
          "ingress",
        ]);
        const attached = (JSON.parse(shown) as { options?: { prog?: { id: number } } }[])
          .flatMap((f) => f.options?.prog ? [f.options.prog.id] : []);
        const pinned = await new BpfTool().json(
          ["prog", "show", "pinned", dp.pins.fromContainer],
          ProgShowSchema,
        );
        assertEquals(attached, [pinned.id], "tc runs the new program");
        assertEquals(await dp.dumpPolicy(2), written);
        assert(await pa.send("c", "after upgrade", OK_MS), "conntrack survived the swap");
        assertNot(await pa.probe("tcp", b.ipv4, 81, 300), "policy still enforced");
      } finally {
        await dp.close();
      }
    });
  },
);
