// The underlay programs (bpf/host.c) fed single packets with `bpftool prog run`, no netns: garbage
// and truncated packets pass untouched (the underlay carries the node's own traffic), a pod's TCP
// to the outside leaves from the node IP and a NAT port with a correct checksum, a protocol that
// cannot be masqueraded is dropped (168), and a SYN to a NodePort frontend without backends is
// answered with a well-formed ICMP port unreachable (both checksums, the original header inside).
// The real-packet half is tests/e2e/nat_test.ts.
import { BpfTool, hexArgs } from "../../agent/datapath/bpftool.ts";
import { buildObject } from "../../agent/datapath/build.ts";
import { encode, LAYOUTS } from "../../agent/datapath/codecs.ts";
import { encodeNatConfig } from "../../agent/datapath/netdev_loader.ts";
import { assert, assertEquals } from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const TC_ACT_OK = 0, TC_ACT_SHOT = 2, TC_ACT_REDIRECT = 7;
const NODE = [192, 0, 2, 1], POD = [10, 200, 1, 5], OUT = [203, 0, 113, 1];
const MAC = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

function sum16(bytes: number[]): number {
  let s = 0;
  for (let i = 0; i < bytes.length; i += 2) s += (bytes[i]! << 8) | (bytes[i + 1] ?? 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}
const csum = (bytes: number[]) => ~sum16(bytes) & 0xffff;

/** Ethernet + IPv4 (checksummed) + L4 with its checksum filled in (TCP/UDP pseudo header). */
function packet(src: number[], dst: number[], proto: number, l4: number[]): number[] {
  const len = 20 + l4.length;
  const ip = [0x45, 0, len >> 8, len & 0xff, 0, 1, 0x40, 0, 64, proto, 0, 0, ...src, ...dst];
  const c = csum(ip);
  ip[10] = c >> 8;
  ip[11] = c & 0xff;
  const body = [...l4];
  if (proto === 6) {
    const pseudo = [...src, ...dst, 0, 6, l4.length >> 8, l4.length & 0xff];
    const t = csum([...pseudo, ...body]);
    body[16] = t >> 8;
    body[17] = t & 0xff;
  }
  return [...MAC, 0x08, 0x00, ...ip, ...body];
}
const tcpSyn = (sport: number, dport: number) => [
  ...[sport >> 8, sport & 0xff, dport >> 8, dport & 0xff, 0, 0, 0, 1, 0, 0, 0, 0],
  ...[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0],
];

Deno.test(
  "host.o: masquerade and NodePort on single packets",
  { ...needsRoot(), sanitizeResources: true },
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "cilia-netdev-" });
    const bpffs = `${dir}/bpf`;
    await Deno.mkdir(bpffs);
    const bpftool = new BpfTool();
    let mounted = false;
    try {
      const obj = await buildObject({ buildDir: `${dir}/build`, name: "host" });
      const m = await new Deno.Command("mount", { args: ["-t", "bpf", "bpf", bpffs] }).output();
      assert(m.success, "mount a private bpffs");
      mounted = true;
      await bpftool.run(["prog", "loadall", obj.path, `${bpffs}/p`, "pinmaps", `${bpffs}/m`]);
      const cfg = encodeNatConfig({
        nodeIp: "192.0.2.1",
        podCidr: "10.200.1.0/24",
        masquerade: true,
        nodePort: true,
      });
      const svcKey = encode(LAYOUTS.lbServiceKey, {
        addr: new Uint8Array([...NODE, ...Array(12).fill(0)]),
        port: 30081,
        proto: 6,
        family: 4,
      });
      const svcValue = encode(LAYOUTS.lbServiceValue, { slots: 0, svc_id: 9, flags: 0x80 });
      await bpftool.batch([
        `map update pinned ${bpffs}/m/cilia_nat_cfg key 0 0 0 0 value hex ${hexArgs(cfg)}`,
        `map update pinned ${bpffs}/m/cilia_lb_services key hex ${hexArgs(svcKey)} value hex ${
          hexArgs(svcValue)
        }`,
      ]);
      const run = async (prog: string, bytes: number[]) => {
        const out = `${dir}/out`;
        const inp = `${dir}/in`;
        await Deno.writeFile(inp, new Uint8Array(bytes));
        await Deno.remove(out).catch(() => {});
        const r = JSON.parse(
          await bpftool.run(["-j", "prog", "run", "pinned", `${bpffs}/p/${prog}`].concat([
            "data_in",
            inp,
            "data_out",
            out,
          ])),
        ) as { retval: number };
        return { retval: r.retval, out: Array.from(await Deno.readFile(out)) };
      };

      await t.step("garbage and truncated packets pass untouched", async () => {
        const ipHdr = (vhl: number, proto: number) => [
          ...[vhl, 0, 0, 20, 0, 0, 0, 0, 64, proto, 0, 0, ...POD, ...OUT],
        ];
        const bad = [
          [...MAC, 0x12, 0x34, 1, 2], // not IP
          [...MAC, 0x08, 0x00, ...ipHdr(0x45, 6)], // TCP without its header
          [...MAC, 0x08, 0x00, ...ipHdr(0x4f, 17)], // options beyond the packet
          [...MAC, 0x08, 0x00, ...ipHdr(0x65, 6)], // version 6 in an IPv4 frame
        ];
        for (const p of bad) {
          for (const prog of ["cil_from_netdev", "cil_to_netdev"]) {
            const r = await run(prog, p);
            assertEquals([r.retval, r.out], [TC_ACT_OK, p], `${prog}: ${p}`);
          }
        }
      });

      await t.step("a pod's TCP leaves from the node IP and a NAT port", async () => {
        const r = await run("cil_to_netdev", packet(POD, OUT, 6, tcpSyn(40000, 80)));
        assertEquals(r.retval, TC_ACT_OK);
        const ip = r.out.slice(14, 34), tcp = r.out.slice(34);
        assertEquals(ip.slice(12, 16), NODE, "source = node IP");
        assertEquals(csum(ip), 0, "IP checksum");
        const port = (tcp[0]! << 8) | tcp[1]!;
        assert(port >= 32768 && port <= 60999, `NAT port ${port}`);
        const pseudo = [...NODE, ...OUT, 0, 6, 0, tcp.length];
        assertEquals(csum([...pseudo, ...tcp]), 0, "TCP checksum");
        const again = await run("cil_to_netdev", packet(POD, OUT, 6, tcpSyn(40000, 80)));
        assertEquals(again.out, r.out, "the same flow keeps its port");
      });

      await t.step("a protocol that cannot be masqueraded is dropped", async () => {
        const r = await run("cil_to_netdev", packet(POD, OUT, 47, [0, 0, 0x08, 0]));
        assertEquals(r.retval, TC_ACT_SHOT);
        const host = await run("cil_to_netdev", packet(NODE, OUT, 47, [0, 0, 0x08, 0]));
        assertEquals(host.retval, TC_ACT_OK, "the node's own GRE is not a pod's");
      });

      await t.step("no backends: ICMP port unreachable back to the client", async () => {
        const syn = packet(OUT, NODE, 6, tcpSyn(40001, 30081));
        const r = await run("cil_from_netdev", syn);
        assertEquals(r.retval, TC_ACT_REDIRECT);
        assertEquals(r.out.length, 70);
        assertEquals(r.out.slice(0, 12), [...MAC.slice(6), ...MAC.slice(0, 6)], "MACs swapped");
        const ip = r.out.slice(14, 34), icmp = r.out.slice(34);
        assertEquals([ip[9], ...ip.slice(12, 20)], [1, ...NODE, ...OUT], "ICMP node → client");
        assertEquals(csum(ip), 0, "IP checksum");
        assertEquals(icmp.slice(0, 2), [3, 3], "port unreachable");
        assertEquals(csum(icmp), 0, "ICMP checksum");
        assertEquals(icmp.slice(8), syn.slice(14, 14 + 28), "the original header and 8 bytes");
        const other = await run("cil_from_netdev", packet(OUT, NODE, 6, tcpSyn(40001, 30082)));
        assertEquals(other.retval, TC_ACT_OK, "no frontend there: the node's own business");
      });
    } finally {
      if (mounted) await new Deno.Command("umount", { args: [bpffs] }).output();
      await Deno.remove(dir, { recursive: true });
    }
  },
);
