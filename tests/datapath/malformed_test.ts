// Malformed, truncated and unsupported packets fed to the pinned programs with
// `bpftool prog run`: every one is dropped (TC_ACT_SHOT) with its reason, never passed.
import { BpfTool } from "../../agent/datapath/bpftool.ts";
import { linkIndex } from "../../agent/sys/links.ts";
import { assertEquals, nodeLab, withEvents } from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const opts = { ...needsRoot(), sanitizeOps: true, sanitizeResources: true };
const TC_ACT_OK = 0, TC_ACT_SHOT = 2;

const MAC = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
const eth = (type: number, payload: number[]) => [...MAC, type >> 8, type & 0xff, ...payload];
const ip4 = (
  src: number[],
  opts: { proto?: number; ihl?: number; frag?: number; l4?: number[] },
) => {
  const l4 = opts.l4 ?? [];
  const ihl = opts.ihl ?? 5;
  const len = ihl * 4 + l4.length, frag = opts.frag ?? 0;
  const h = [
    0x40 | ihl,
    0,
    len >> 8,
    len & 0xff,
    0,
    1,
    frag >> 8,
    frag & 0xff,
    64,
    opts.proto ?? 6,
  ];
  return [...h, 0, 0, ...src, 10, 200, 1, 12, ...Array(Math.max(0, ihl - 5) * 4).fill(1), ...l4];
};
const tcpSyn = [0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0];
const ip6 = (nh: number, payload: number[]) => {
  const src = [0xfd, 0, 2, 0, 0, 1, ...Array(9).fill(0), 0x0b];
  const dst = [0xfd, 0, 2, 0, 0, 1, ...Array(9).fill(0), 0x0c];
  const len = payload.length;
  return [0x60, 0, 0, 0, len >> 8, len & 0xff, nh, 64, ...src, ...dst, ...payload];
};

Deno.test("lxc drops malformed and unsupported packets with their reason", opts, async (t) => {
  await using l = await nodeLab({ pods: 1 });
  const [a] = l.pods as [typeof l.pods[0]];
  const pod = [10, 200, 1, 11];
  const bpftool = new BpfTool({ netns: l.node.netns });
  const ifindex = (await linkIndex(a.ifname, l.node.netns))!;
  const ctx = new Uint8Array(44);
  new DataView(ctx.buffer).setUint32(40, ifindex, true); // __sk_buff.ifindex: the pod's veth
  const run = async (bytes: number[], withCtx = true) => {
    const r = await bpftool.progRun(
      l.dp.pins.fromContainer,
      new Uint8Array(bytes),
      withCtx ? { ctx } : {},
    );
    return r.retval;
  };
  const dropsOf = async (reason: number) =>
    (await l.dp.readMetrics()).find((m) => m.reason === reason && m.dir === "egress")?.packets ??
      0n;

  const cases: [string, number[], number, boolean?][] = [
    // The kernel's test runner refuses frames shorter than an IP header, so "cut short" below
    // means options or L4 headers missing from an otherwise present header.
    ["IPv4 version field not 4", eth(0x0800, [0x55, ...ip4(pod, { l4: tcpSyn }).slice(1)]), 134],
    ["IPv4 total length below header length", eth(0x0800, ip4(pod, {}).with(3, 12)), 134],
    ["IPv4 IHL below 5", eth(0x0800, ip4(pod, { ihl: 4 })), 134],
    ["IPv4 options cut short", eth(0x0800, ip4(pod, { ihl: 8 }).slice(0, 26)), 134],
    ["TCP header cut short", eth(0x0800, ip4(pod, { l4: tcpSyn.slice(0, 10) })), 135],
    [
      "TCP data offset below 5",
      eth(0x0800, ip4(pod, { l4: [...tcpSyn.slice(0, 12), 0x40, 2] })),
      135,
    ],
    ["UDP header cut short", eth(0x0800, ip4(pod, { proto: 17, l4: [1, 2] })), 135],
    ["IPv4 first fragment", eth(0x0800, ip4(pod, { l4: tcpSyn, frag: 0x2000 })), 157],
    ["IPv4 later fragment", eth(0x0800, ip4(pod, { l4: tcpSyn, frag: 0x0010 })), 157],
    ["IPv6 version field not 6", eth(0x86dd, [0x40, ...ip6(6, tcpSyn).slice(1)]), 134],
    ["IPv6 routing header cut short", eth(0x86dd, ip6(43, [])), 156],
    ["IPv6 fragment header", eth(0x86dd, ip6(44, [6, 0, 0, 1, 0, 0, 0, 1, ...tcpSyn])), 157],
    [
      "IPv6 TCP cut short after hop-by-hop",
      eth(0x86dd, ip6(0, [6, 0, 1, 4, 0, 0, 0, 0, 1, 2])),
      135,
    ],
    ["spoofed IPv4 source", eth(0x0800, ip4([10, 200, 1, 99], { l4: tcpSyn })), 132],
    [
      "valid TCP on an interface without endpoint",
      eth(0x0800, ip4(pod, { l4: tcpSyn })),
      165,
      false,
    ],
    ["ARP on an interface without endpoint", eth(0x0806, Array(28).fill(0)), 165, false],
  ];
  for (const [name, bytes, reason, withCtx] of cases) {
    await t.step(`${name} → ${reason}`, async () => {
      const before = await dropsOf(reason);
      assertEquals(await run(bytes, withCtx ?? true), TC_ACT_SHOT);
      assertEquals(await dropsOf(reason) - before, 1n);
    });
  }
  await t.step(
    "the drop event of a truncated packet carries reason 134 and the bytes",
    async () => {
      const bytes = eth(0x0800, ip4(pod, { ihl: 8 }).slice(0, 26));
      const events = await withEvents(l.dp, () => run(bytes), { until: (e) => e.type === "drop" });
      const drop = events.find((e) => e.type === "drop")!;
      assertEquals([drop.subtype, drop.epId, drop.ifindex, drop.capLen], [134, 1, ifindex, 40]);
      assertEquals(Array.from(drop.data), bytes);
    },
  );
  await t.step("valid TCP and ARP from the endpoint pass", async () => {
    assertEquals(await run(eth(0x0800, ip4(pod, { l4: tcpSyn }))), TC_ACT_OK);
    assertEquals(await run(eth(0x0806, Array(28).fill(0))), TC_ACT_OK);
  });
  await t.step("IPv6 TCP behind hop-by-hop and destination options headers passes", async () => {
    const hbh = [60, 0, 1, 4, 0, 0, 0, 0], dst = [6, 1, ...Array(14).fill(0)];
    let retval = -1;
    const events = await withEvents(l.dp, async () => {
      retval = await run(eth(0x86dd, ip6(0, [...hbh, ...dst, ...tcpSyn])));
    }, { until: (e) => e.type === "trace" });
    assertEquals(retval, TC_ACT_OK);
    const seen = events.find((e) => e.family === 6);
    assertEquals([seen?.proto, seen?.dport], [6, 80], "ports read after the extension headers");
  });
});
