// The pods' IPv6 router answered by the datapath (bpf/lib/nd.h), packet by packet with
// `bpftool prog run` on the pinned cil_from_container: a well-formed Neighbour Solicitation for
// the agent's IPV6_GATEWAY comes back as the advertisement RFC 4861 asks for (redirected to the
// pod's veth, the host side's MAC from the endpoint entry), a malformed one is not answered (it
// passes as before), and MLD reports and router solicitations from the pod end there without a
// drop event or metric. Needs root.
import { execCommand } from "../../agent/sys/exec.ts";
import { linkIndex } from "../../agent/sys/links.ts";
import { parseIPv6, parseMac } from "../../agent/datapath/_addr.ts";
import { IPV6_GATEWAY, linkLocalFor } from "../../agent/endpoint/netdev.ts";
import { assert, assertEquals, nodeLab, withEvents } from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const opts = { ...needsRoot(), sanitizeOps: true, sanitizeResources: true };
const TC_ACT_OK = 0, TC_ACT_SHOT = 2, TC_ACT_REDIRECT = 7;
const HOST_MAC = "02:aa:bb:cc:dd:01";

const ROUTER = [...parseIPv6(IPV6_GATEWAY)!];
const SOLICITED = [0xff, 2, ...Array(9).fill(0), 1, 0xff, ...ROUTER.slice(13)];

/** The ICMPv6 checksum (RFC 4443 2.3) of msg between src and dst. */
function icmp6Csum(src: number[], dst: number[], msg: number[]): number {
  const words = [...src, ...dst, 0, 0, msg.length >> 8, msg.length & 0xff, 0, 0, 0, 58, ...msg];
  let s = 0;
  for (let i = 0; i < words.length; i += 2) s += (words[i]! << 8) | (words[i + 1] ?? 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

interface Ns {
  src?: number[];
  dst?: number[];
  target?: number[];
  hopLimit?: number;
  code?: number;
  option?: boolean;
  badCsum?: boolean;
  type?: number;
}

/** A Neighbour Solicitation (or another ICMPv6 message of its shape) as the pod sends it. */
function ns(podMac: number[], podLl: number[], o: Ns = {}): number[] {
  const src = o.src ?? podLl, dst = o.dst ?? SOLICITED;
  const msg = [o.type ?? 135, o.code ?? 0, 0, 0, 0, 0, 0, 0, ...(o.target ?? ROUTER)];
  if (o.option ?? true) msg.push(1, 1, ...podMac);
  const c = icmp6Csum(src, dst, msg) ^ (o.badCsum ? 0x1234 : 0);
  msg[2] = c >> 8;
  msg[3] = c & 0xff;
  const ethDst = [0x33, 0x33, ...dst.slice(12)];
  const ip6 = [0x60, 0, 0, 0, msg.length >> 8, msg.length & 0xff, 58, o.hopLimit ?? 255];
  return [...ethDst, ...podMac, 0x86, 0xdd, ...ip6, ...src, ...dst, ...msg];
}

Deno.test("lxc answers a pod's neighbour solicitation for its IPv6 router", opts, async (t) => {
  await using l = await nodeLab({ pods: 1 });
  const [a] = l.pods as [typeof l.pods[0]];
  const ifindex = (await linkIndex(a.ifname, l.node.netns))!;
  const entry = {
    ifname: a.ifname,
    epId: 1,
    identity: 1001,
    ipv4: a.ipv4,
    ipv6: a.ipv6,
    mac: a.mac,
    ingressDefaultDeny: false,
    egressDefaultDeny: false,
  };
  await l.dp.upsertEndpoint({ ...entry, hostMac: HOST_MAC });
  const podMac = [...parseMac(a.mac)], podLl = [...parseIPv6(linkLocalFor(a.mac))!];
  const hostMac = [...parseMac(HOST_MAC)];
  const dir = await Deno.makeTempDir({ prefix: `${l.lab.prefix}nd-` });
  const ctx = new Uint8Array(44);
  new DataView(ctx.buffer).setUint32(40, ifindex, true); // __sk_buff.ifindex: the pod's veth
  await Deno.writeFile(`${dir}/ctx`, ctx);
  let runs = 0;
  const run = async (bytes: number[]) => {
    const n = ++runs;
    await Deno.writeFile(`${dir}/in${n}`, new Uint8Array(bytes));
    const r = await execCommand([
      ...["bpftool", "-j", "prog", "run", "pinned", l.dp.pins.fromContainer],
      ...["data_in", `${dir}/in${n}`, "data_out", `${dir}/out${n}`, "ctx_in", `${dir}/ctx`],
    ]);
    assertEquals(r.code, 0, r.stderr);
    return {
      retval: (JSON.parse(r.stdout) as { retval: number }).retval,
      out: [...await Deno.readFile(`${dir}/out${n}`)],
    };
  };
  const egress = async () =>
    (await l.dp.readMetrics()).filter((m) => m.dir === "egress").map((m) => [m.reason, m.packets])
      .sort((x, y) => Number(x[0]) - Number(y[0]));
  try {
    for (const option of [true, false]) {
      await t.step(`answered: ${option ? "with" : "without"} the source's MAC option`, async () => {
        const r = await run(ns(podMac, podLl, { option }));
        assertEquals(r.retval, TC_ACT_REDIRECT, "redirected back to the pod");
        const na = r.out;
        assertEquals(na.length, 86, "Ethernet + IPv6 + NA with one option");
        assertEquals(na.slice(0, 6), podMac, "to the pod's MAC");
        assertEquals(na.slice(6, 12), hostMac, "from the host side's MAC");
        assertEquals(na.slice(12, 14), [0x86, 0xdd]);
        assertEquals(na.slice(14, 22), [0x60, 0, 0, 0, 0, 32, 58, 255], "IPv6 header, hop 255");
        assertEquals(na.slice(22, 38), ROUTER, "from the agent's IPV6_GATEWAY");
        assertEquals(na.slice(38, 54), podLl, "to the solicitation's source");
        const msg = na.slice(54);
        assertEquals([msg[0], msg[1]], [136, 0], "a Neighbour Advertisement");
        assertEquals(msg.slice(4, 8), [0xe0, 0, 0, 0], "router, solicited, override");
        assertEquals(msg.slice(8, 24), ROUTER, "target");
        assertEquals(msg.slice(24), [2, 1, ...hostMac], "target link-layer address option");
        assertEquals(icmp6Csum(ROUTER, podLl, msg.with(2, 0).with(3, 0)), msg[2]! << 8 | msg[3]!);
      });
    }
    await t.step("answered: a unicast probe to the router itself", async () => {
      const r = await run(ns(podMac, podLl, { dst: ROUTER }));
      assertEquals(r.retval, TC_ACT_REDIRECT);
      assertEquals(r.out[54], 136);
    });

    const good = ns(podMac, podLl);
    const cases: [string, number[]][] = [
      ["cut short (no target)", good.slice(0, 62)],
      ["payload length not 24 or 32", [...good, 3, 0, 0, 0, 0, 0, 0, 0].with(19, 40)],
      ["a bad checksum", ns(podMac, podLl, { badCsum: true })],
      ["hop limit 64", ns(podMac, podLl, { hopLimit: 64 })],
      ["ICMPv6 code 1", ns(podMac, podLl, { code: 1 })],
      ["target fe80::2", ns(podMac, podLl, { target: ROUTER.with(15, 2) })],
      ["a DAD probe (source ::)", ns(podMac, podLl, { src: Array(16).fill(0), option: false })],
      ["to another group", ns(podMac, podLl, { dst: SOLICITED.with(15, 2) })],
      ["an option of length 0", ns(podMac, podLl).with(79, 0)],
    ];
    for (const [what, bytes] of cases) {
      await t.step(`not answered, passed as before: ${what}`, async () => {
        const r = await run(bytes);
        assertEquals(r.retval, TC_ACT_OK, what);
        assertEquals(r.out, bytes, "unchanged");
      });
    }

    await t.step("MLD reports and router solicitations end silently", async () => {
      const before = await egress();
      const events = await withEvents(l.dp, async () => {
        for (const type of [131, 132, 143, 133]) {
          const r = await run(ns(podMac, podLl, { type, dst: [0xff, 2, ...Array(13).fill(0), 2] }));
          assertEquals(r.retval, TC_ACT_SHOT, `ICMPv6 type ${type}`);
        }
      }, { timeoutMs: 3000 });
      assertEquals(events.length, 0, "no event");
      assertEquals(await egress(), before, "no metric");
    });

    await t.step("without the host side's MAC in the entry, nothing is answered", async () => {
      await l.dp.upsertEndpoint(entry);
      const r = await run(good);
      assertEquals(r.retval, TC_ACT_OK);
      assert(r.out.every((b, i) => b === good[i]), "unchanged");
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
