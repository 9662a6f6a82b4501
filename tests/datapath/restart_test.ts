// The datapath survives an agent restart: the Datapath runs inside the node netns (as the agent
// will, with the node's bpffs bind-mounted at /sys/fs/bpf), exits, and opens again; pins are
// reused, programs stay attached, maps keep their entries and established connections keep
// working. A changed object is loaded and swapped in without losing maps or connections.
import { BpfTool, ProgShowSchema } from "../../agent/datapath/bpftool.ts";
import { attachedPrograms } from "../../agent/datapath/loader.ts";
import { Datapath, type PolicyEntry } from "../../agent/datapath/datapath.ts";
import { type Lab, type Node } from "../helpers/netns.ts";
import { assert, assertEquals, assertNot, BUILD_DIR, ID, nodeLab } from "./_fixture.ts";

const opts = { sanitizeOps: true, sanitizeResources: true };
const REPO = new URL("../../", import.meta.url);

/** A minimal agent: opens the Datapath at its default root, applies cfg, prints a summary. */
const AGENT = `
import { Datapath } from "${new URL("agent/datapath/datapath.ts", REPO).href}";
const cfg = JSON.parse(Deno.args[0]);
const dp = await Datapath.open({ buildDir: cfg.buildDir });
for (const ep of cfg.endpoints ?? []) await dp.upsertEndpoint(ep);
await dp.updateIpcache(cfg.ipcache ?? [], []);
for (const [epId, adds] of cfg.policy ?? []) await dp.applyPolicyChanges(epId, { adds, deletes: [] });
console.log(JSON.stringify({ loaded: dp.loaded, root: dp.pins.root, policy: await dp.dumpPolicy(2) }));
await dp.close();
`;

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
  return JSON.parse(r.stdout) as { loaded: boolean; root: string; policy: PolicyEntry[] };
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
    // The fixture's in-process Datapath pinned under <bpffs>/cilia, which is /sys/fs/bpf/cilia
    // inside the node: the in-node agent finds the same pins.
    const allow: PolicyEntry = {
      egress: false,
      identity: ID.a,
      proto: 6,
      portLo: 80,
      portHi: 80,
      verdict: 1,
      cookie: 11,
    };
    const endpoint = {
      ifname: b.ifname,
      epId: 2,
      identity: ID.b,
      ipv4: b.ipv4,
      ipv6: b.ipv6,
      ingressDefaultDeny: true,
      egressDefaultDeny: false,
    };

    await t.step("an agent inside the node applies endpoint and policy", async () => {
      const out = await runAgent(l.lab, l.node, { endpoints: [endpoint], policy: [[2, [allow]]] });
      assertEquals([out.loaded, out.root, out.policy], [false, "/sys/fs/bpf/cilia", [allow]]);
      assert(await pa.open("c", b.ipv4, 80));
      assert(await pa.send("c", "before"));
      assertNot(await pa.probe("tcp", b.ipv4, 81, 300));
    });
    await t.step("a restarted agent reuses everything", async () => {
      const out = await runAgent(l.lab, l.node, {});
      assertEquals([out.loaded, out.policy], [false, [allow]]);
      assertEquals(await attachedPrograms(b.ifname, "ingress", l.node.netns), [
        "cil_from_container:[*fsobj]",
      ]);
      assertEquals(await attachedPrograms(b.ifname, "egress", l.node.netns), [
        "cil_to_container:[*fsobj]",
      ]);
      assert(await pa.send("c", "after restart"));
      assert(await pa.probe("tcp", b.ipv4, 80));
      assertNot(await pa.probe("tcp", b.ipv4, 81, 300));
    });
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
        assertEquals(await dp.dumpPolicy(2), [allow]);
        assert(await pa.send("c", "after upgrade"), "conntrack survived the swap");
        assertNot(await pa.probe("tcp", b.ipv4, 81, 300), "policy still enforced");
      } finally {
        await dp.close();
      }
    });
  },
);
