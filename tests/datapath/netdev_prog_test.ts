// The underlay programs (bpf/host.c) fed single packets with `bpftool prog run`, no netns: garbage
// and truncated packets pass untouched (the underlay carries the node's own traffic), a pod's TCP
// to the outside leaves from the node IP and a NAT port with a correct checksum, a protocol that
// cannot be masqueraded is dropped (168), and a SYN to a NodePort frontend without backends is
// answered with a well-formed ICMP port unreachable (both checksums, the original header inside);
// VXLAN to or from the node on the configured tunnel port passes both hooks without NAT state or
// a frontend (bpf/lib/nodeport.h, 8.); VXLAN read by BPF (vxlan.h, 3.): an unknown outer source
// (172) and a bad VNI (183) are dropped, a valid one for no local endpoint is left to the tunnel
// device unchanged, and nothing is read with NAT_CFG_F_TUNNEL_NETDEV; IPv6 NodePort (nodeport6.h): DNAT to a local backend and
// back with valid checksums, an extension header dropped, ICMPv6 port unreachable without
// backends, other IPv6 untouched; IPv6 DSR (dsr6.h): the SYN to a remote backend gets the
// frontend in a Destination Options header (layout, lengths, checksum), the next packet none, and
// a backend's node learns the reply's source only from a trusted header. The real-packet half is
// tests/e2e/nat_test.ts.
import { hexArgs } from "../../agent/datapath/bpftool.ts";
import { encode, LAYOUTS } from "../../agent/datapath/codecs.ts";
import {
  encodeNat6Config,
  encodeNatConfig,
  NAT_CFG_F_TUNNEL_NETDEV,
} from "../../agent/datapath/netdev_loader.ts";
import { assert, assertEquals } from "./_fixture.ts";
import { csum, MAC, packet, tcpSyn, withHostObject } from "./_host_obj.ts";
import { needsRoot } from "../helpers/root.ts";

const TC_ACT_OK = 0, TC_ACT_SHOT = 2, TC_ACT_REDIRECT = 7;
const NODE = [192, 0, 2, 1], POD = [10, 200, 1, 5], OUT = [203, 0, 113, 1];
const NODE6 = [0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 1];
const CLIENT6 = [0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 0x99];
const POD6 = [0xfd, 0, 0x02, 0, 0, 1, ...Array(9).fill(0), 5];

/** Ethernet + IPv6 (+ extension header bytes, next header first) + TCP or UDP, checksummed. */
function packet6(
  src: number[],
  dst: number[],
  l4: number[],
  ext: number[] = [],
  proto = 6,
): number[] {
  const len = ext.length + l4.length;
  const ip = [0x60, 0, 0, 0, len >> 8, len & 0xff, ext.length ? 0 : proto, 64, ...src, ...dst];
  const body = [...l4], at = proto === 17 ? 6 : 16;
  const t = csum([...src, ...dst, 0, 0, 0, l4.length, 0, 0, 0, proto, ...body]);
  body[at] = t >> 8;
  body[at + 1] = t & 0xff;
  return [...MAC, 0x86, 0xdd, ...ip, ...ext, ...body];
}
const l46Ok = (pkt: number[], proto = 6) => {
  const src = pkt.slice(22, 38), dst = pkt.slice(38, 54), l4 = pkt.slice(54);
  return csum([...src, ...dst, 0, 0, 0, l4.length, 0, 0, 0, proto, ...l4]) === 0;
};

/** An ICMPv6 error [type, code] from src to dst about orig (a whole frame: its IPv6 header, a
 * DSR header if it has one, and 8 bytes of TCP), checksummed; the MTU field 1400. */
function icmp6Error(src: number[], dst: number[], typeCode: number[], orig: number[]): number[] {
  const inner = orig.slice(14, orig[20] === 60 ? 86 : 62);
  const body = [...typeCode, 0, 0, 0, 0, 0x05, 0x78, ...inner];
  const c = csum([...src, ...dst, 0, 0, 0, body.length, 0, 0, 0, 58, ...body]);
  body[2] = c >> 8;
  body[3] = c & 0xff;
  const ip = [0x60, 0, 0, 0, 0, body.length, 58, 64, ...src, ...dst];
  return [...MAC, 0x86, 0xdd, ...ip, ...body];
}
const icmp6Ok = (pkt: number[]) => {
  const body = pkt.slice(54);
  return csum([...pkt.slice(22, 54), 0, 0, 0, body.length, 0, 0, 0, 58, ...body]) === 0;
};

Deno.test(
  "host.o: masquerade and NodePort on single packets",
  { ...needsRoot(), sanitizeResources: true },
  async (t) => {
    await withHostObject("cilia-netdev-", async ({ dir, bpffs, bpftool }) => {
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

      await t.step("VXLAN to the tunnel port passes both hooks without NAT state", async () => {
        const tunnelCfg = encodeNatConfig({
          nodeIp: "192.0.2.1",
          podCidr: "10.200.1.0/24",
          masquerade: true,
          nodePort: true,
          tunnelPort: 30081, // the NodePort's port: a VXLAN packet must not reach the frontend
        });
        const udpSvc = encode(LAYOUTS.lbServiceKey, {
          addr: new Uint8Array([...NODE, ...Array(12).fill(0)]),
          port: 30081,
          proto: 17,
          family: 4,
        });
        await bpftool.batch([
          `map update pinned ${bpffs}/m/cilia_nat_cfg key 0 0 0 0 value hex ${hexArgs(tunnelCfg)}`,
          `map update pinned ${bpffs}/m/cilia_lb_services key hex ${hexArgs(udpSvc)} value hex ${
            hexArgs(svcValue)
          }`,
        ]);
        const entries = async () =>
          (JSON.parse(
            await bpftool.run(["-j", "map", "dump", "pinned", `${bpffs}/m/cilia_snat`]),
          ) as unknown[]).length;
        const udp = (sport: number, dport: number) => [
          ...[sport >> 8, sport & 0xff, dport >> 8, dport & 0xff, 0, 12, 0, 0, 1, 2, 3, 4],
        ];
        const before = await entries();
        const out = packet(NODE, OUT, 17, udp(40100, 30081));
        assertEquals((await run("cil_to_netdev", out)).retval, TC_ACT_OK);
        const into = packet(OUT, NODE, 17, udp(40101, 30081));
        const r = await run("cil_from_netdev", into);
        assertEquals([r.retval, r.out], [TC_ACT_OK, into], "not the NodePort frontend's");
        assertEquals(await entries(), before, "no NAT entry for either");
        await bpftool.run(["map", "update", "pinned", `${bpffs}/m/cilia_nat_cfg`].concat(
          ["key", "0", "0", "0", "0", "value", "hex", ...hexArgs(cfg).split(" ")],
        ));
        const np = await run("cil_from_netdev", into);
        assertEquals(np.retval, TC_ACT_REDIRECT, "without a tunnel port the frontend answers");
        await run("cil_to_netdev", packet(NODE, OUT, 17, udp(40100, 30082)));
        assertEquals(await entries(), before + 1, "another port: the node's flow is tracked");
      });

      await t.step("VXLAN read by BPF: only a known node's valid VNI (vxlan.h, 3.)", async () => {
        const vxCfg = (netdevOnly: boolean) => {
          const b = encodeNatConfig({
            nodeIp: "192.0.2.1",
            podCidr: "10.200.1.0/24",
            masquerade: true,
            nodePort: true,
            tunnelPort: 8472,
          });
          if (netdevOnly) b[20] = b[20]! | NAT_CFG_F_TUNNEL_NETDEV;
          return `map update pinned ${bpffs}/m/cilia_nat_cfg key 0 0 0 0 value hex ${hexArgs(b)}`;
        };
        const PEER = [192, 0, 2, 2];
        await bpftool.batch([
          vxCfg(false),
          `map update pinned ${bpffs}/m/cilia_ipcache key hex ${
            hexArgs(new Uint8Array([64, 0, 0, 0, 4, 0, 0, 0, ...PEER, ...Array(12).fill(0)]))
          } value hex ${hexArgs(new Uint8Array([6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))}`,
        ]);
        // An inner TCP SYN to a pod this "node" has no endpoint for (the FIB finds no veth).
        const inner = packet(OUT, POD, 6, tcpSyn(40000, 80));
        const vxlan = (src: number[], vni: number) => {
          const body = [0x08, 0, 0, 0, (vni >> 16) & 0xff, (vni >> 8) & 0xff, vni & 0xff, 0];
          const l4 = [0x9c, 0x40, 0x21, 0x18, 0, 0, 0, 0, ...body, ...inner];
          l4[4] = l4.length >> 8;
          l4[5] = l4.length & 0xff;
          return packet(src, NODE, 17, l4);
        };
        const cases: [string, number[], number, number][] = [
          ["an outer source that is no node: 172", vxlan(OUT, 4242), TC_ACT_SHOT, 0],
          ["VNI 0 from a node: 183", vxlan(PEER, 0), TC_ACT_SHOT, 0],
          ["VNI 1 (host) from a node: 183", vxlan(PEER, 1), TC_ACT_SHOT, 0],
          ["VNI above the cluster range: 183", vxlan(PEER, 0xffffff), TC_ACT_SHOT, 0],
          ["a valid VNI, no local endpoint: the device's, unchanged", vxlan(PEER, 4242), 0, 1],
        ];
        for (const [what, pkt, want, unchanged] of cases) {
          const r = await run("cil_from_netdev", pkt);
          assertEquals(r.retval, want, what);
          if (unchanged) assertEquals(r.out, pkt, what);
        }
        await bpftool.batch([vxCfg(true)]);
        const off = await run("cil_from_netdev", vxlan(OUT, 4242));
        assertEquals(off.retval, TC_ACT_OK, "device only: the tunnel device's programs decide");
        await bpftool.batch([vxCfg(false)]);
      });

      await t.step(
        "IPv6 NodePort (nodeport6.h): DNAT, reply, ext headers, no backends",
        async () => {
          const svc6 = (port: number) =>
            encode(LAYOUTS.lbServiceKey, {
              addr: new Uint8Array(NODE6),
              port,
              proto: 6,
              family: 6,
            });
          const hex = (b: Uint8Array) => `hex ${hexArgs(b)}`;
          const backend = encode(LAYOUTS.lbBackend, {
            addr: new Uint8Array(POD6),
            port: 8080,
            proto: 6,
            family: 6,
            flags: 0,
            pad: new Uint8Array(3),
          });
          const cfg6 = encodeNat6Config({ nodeIp6: "2001:db8::1", podCidrV6: "fd00:200:1::/64" });
          const one = encode(LAYOUTS.lbServiceValue, { slots: 1, svc_id: 10, flags: 0x80 });
          const none = encode(LAYOUTS.lbServiceValue, { slots: 0, svc_id: 11, flags: 0x80 });
          const slot = encode(LAYOUTS.lbSlotKey, { svc_id: 10, slot: 0 });
          const m = `map update pinned ${bpffs}/m`;
          const syn = packet6(CLIENT6, NODE6, tcpSyn(40000, 30086));
          // Before the config: IPv6 passes untouched (no IPv6 node address).
          assertEquals(await run("cil_from_netdev", syn), { retval: TC_ACT_OK, out: syn });
          await bpftool.batch([
            `${m}/cilia_nat6_cfg key 0 0 0 0 value ${hex(cfg6)}`,
            `${m}/cilia_lb_services key ${hex(svc6(30086))} value ${hex(one)}`,
            `${m}/cilia_lb_services key ${hex(svc6(30087))} value ${hex(none)}`,
            `${m}/cilia_lb_slots key ${hex(slot)} value 77 0 0 0`,
            `${m}/cilia_lb_backends key 77 0 0 0 value ${hex(backend)}`,
          ]);
          const r = await run("cil_from_netdev", syn);
          assertEquals(r.retval, TC_ACT_OK, "a local backend: the stack routes it");
          assertEquals(r.out.slice(22, 38), CLIENT6, "the backend sees the client");
          assertEquals(r.out.slice(38, 54), POD6, "destination = the backend");
          assertEquals(r.out.slice(56, 58), [0x1f, 0x90], "port 8080");
          assert(l46Ok(r.out), "TCP checksum after DNAT");
          const reply = packet6(POD6, CLIENT6, tcpSyn(8080, 40000));
          const back = await run("cil_to_netdev", reply);
          assertEquals(back.retval, TC_ACT_OK);
          assertEquals(back.out.slice(22, 38), NODE6, "the reply comes from the node address");
          assertEquals(back.out.slice(54, 56), [0x75, 0x86], "and the nodePort 30086");
          assert(l46Ok(back.out), "TCP checksum after the reverse translation");
          // UDP: the same translation, its checksum (mandatory in IPv6) fixed too.
          const udpSvc = encode(LAYOUTS.lbServiceKey, {
            addr: new Uint8Array(NODE6),
            port: 30086,
            proto: 17,
            family: 6,
          });
          await bpftool.run(
            ["map", "update", "pinned", `${bpffs}/m/cilia_lb_services`, "key", "hex"]
              .concat(hexArgs(udpSvc).split(" "), ["value", "hex"], hexArgs(one).split(" ")),
          );
          const dgram = [0x9c, 0x41, 0x75, 0x86, 0, 12, 0, 0, 1, 2, 3, 4];
          const u6 = await run("cil_from_netdev", packet6(CLIENT6, NODE6, dgram, [], 17));
          assertEquals(u6.retval, TC_ACT_OK);
          assertEquals(u6.out.slice(38, 54), POD6, "UDP: destination = the backend");
          assert(l46Ok(u6.out, 17), "UDP checksum after DNAT");
          // A hop-by-hop header before TCP: never passed untranslated (156).
          const hbh = [6, 0, 1, 4, 0, 0, 0, 0];
          const ext = packet6(CLIENT6, NODE6, tcpSyn(40002, 30086), hbh);
          assertEquals((await run("cil_from_netdev", ext)).retval, TC_ACT_SHOT);
          // No backends: ICMPv6 port unreachable from the node address, back out.
          const u = await run("cil_from_netdev", packet6(CLIENT6, NODE6, tcpSyn(40003, 30087)));
          assertEquals(u.retval, TC_ACT_REDIRECT);
          assertEquals(u.out.length, 14 + 40 + 8 + 48);
          assertEquals([u.out[20], ...u.out.slice(22, 54)], [58, ...NODE6, ...CLIENT6]);
          assertEquals(u.out.slice(54, 56), [1, 4], "destination unreachable, port");
          const icmp = u.out.slice(54);
          assertEquals(
            csum([...NODE6, ...CLIENT6, 0, 0, 0, icmp.length, 0, 0, 0, 58, ...icmp]),
            0,
            "ICMPv6 checksum",
          );
          // Not this file's: another port, ICMPv6 echo, TCP cut off: passed unchanged.
          for (
            const p of [
              packet6(CLIENT6, NODE6, tcpSyn(40004, 30088)),
              [
                ...MAC,
                0x86,
                0xdd,
                0x60,
                0,
                0,
                8,
                58,
                64,
                ...CLIENT6,
                ...NODE6,
                128,
                0,
                0,
                0,
                0,
                1,
                0,
                1,
              ],
              [...MAC, 0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, 6, 64, ...CLIENT6, ...NODE6], // TCP cut off
            ]
          ) {
            assertEquals(await run("cil_from_netdev", p), { retval: TC_ACT_OK, out: p });
          }
        },
      );

      await t.step(
        "IPv6 DSR (dsr6.h): the frontend in a Destination Options header, learnt at the backend",
        async () => {
          const hex = (b: Uint8Array) => `hex ${hexArgs(b)}`;
          const m = `map update pinned ${bpffs}/m`;
          const REMOTE6 = [0xfd, 0, 0x02, 0, 0, 2, ...Array(9).fill(0), 7];
          const dsrCfg = encodeNatConfig({
            nodeIp: "192.0.2.1",
            podCidr: "10.200.1.0/24",
            masquerade: true,
            nodePort: true,
            dsr: true,
          });
          await bpftool.batch([
            `${m}/cilia_nat_cfg key 0 0 0 0 value ${hex(dsrCfg)}`,
            `${m}/cilia_lb_services key ${
              hex(encode(LAYOUTS.lbServiceKey, {
                addr: new Uint8Array(NODE6),
                port: 30089,
                proto: 6,
                family: 6,
              }))
            } value ${hex(encode(LAYOUTS.lbServiceValue, { slots: 1, svc_id: 12, flags: 0x80 }))}`,
            `${m}/cilia_lb_slots key ${
              hex(encode(LAYOUTS.lbSlotKey, { svc_id: 12, slot: 0 }))
            } value 78 0 0 0`,
            `${m}/cilia_lb_backends key 78 0 0 0 value ${
              hex(encode(LAYOUTS.lbBackend, {
                addr: new Uint8Array(REMOTE6),
                port: 8080,
                proto: 6,
                family: 6,
                flags: 0,
                pad: new Uint8Array(3),
              }))
            }`,
          ]);
          // The header dsr6.h writes for [NODE6]:port before a TCP header.
          const ext = (fe: number[], port: number) => [
            ...[6, 2, 0x1b, 20, ...fe, port >> 8, port & 0xff, 0, 0],
          ];
          const tcpOk = (pkt: number[]) => {
            const l4 = pkt.slice(78);
            const pseudo = [...pkt.slice(22, 54), 0, 0, 0, l4.length, 0, 0, 0, 6];
            return csum([...pseudo, ...l4]) === 0;
          };
          // The SYN to a remote backend: DNAT only, the header inserted (the FIB may or may not
          // route fd00:200:2::/64 on this host: the verdict is not the point here).
          const syn = await run("cil_from_netdev", packet6(CLIENT6, NODE6, tcpSyn(40010, 30089)));
          const out = syn.out;
          assertEquals(out.length, 14 + 40 + 24 + 20, "24 bytes longer");
          assertEquals([out[18], out[19], out[20]], [0, 44, 60], "payload length, next header");
          assertEquals(out.slice(22, 38), CLIENT6, "no SNAT: the backend sees the client");
          assertEquals(out.slice(38, 54), REMOTE6, "destination = the remote backend");
          assertEquals(out.slice(54, 78), ext(NODE6, 30089), "the frontend in the header");
          assertEquals(out.slice(80, 82), [0x1f, 0x90], "port 8080");
          assert(tcpOk(out), "TCP checksum after DNAT and the header");
          // The next packet of that connection (an ACK): DNAT only, no header.
          const ack = tcpSyn(40010, 30089);
          ack[13] = 0x10;
          const next = await run("cil_from_netdev", packet6(CLIENT6, NODE6, ack));
          assertEquals([next.out.length, next.out[20]], [14 + 40 + 20, 6]);
          assertEquals(next.out.slice(38, 54), REMOTE6);
          assert(l46Ok(next.out), "TCP checksum after DNAT");
          // At the backend's node: a trusted header (one of its external frontends) leaves the
          // egress entry that gives the pod's reply the frontend as source.
          const withExt = (fe: number[], sport: number) => {
            const p = packet6(CLIENT6, POD6, tcpSyn(sport, 8080), ext(fe, 30086));
            p[20] = 60;
            return p;
          };
          const learn = withExt(NODE6, 40011);
          assertEquals(await run("cil_from_netdev", learn), { retval: TC_ACT_OK, out: learn });
          const reply = await run("cil_to_netdev", packet6(POD6, CLIENT6, tcpSyn(8080, 40011)));
          assertEquals(reply.out.slice(22, 38), NODE6, "the reply leaves from the frontend");
          assertEquals(reply.out.slice(54, 56), [0x75, 0x86], "and its port");
          assert(l46Ok(reply.out), "TCP checksum of the reply");
          // An untrusted frontend (no node, no frontend of ours) teaches nothing.
          const liar = [0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 0x77];
          await run("cil_from_netdev", withExt(liar, 40012));
          const plain = packet6(POD6, CLIENT6, tcpSyn(8080, 40012));
          assertEquals(await run("cil_to_netdev", plain), { retval: TC_ACT_OK, out: plain });
          // ICMPv6 errors about those flows (nat_icmp6.h): the backend's port unreachable about
          // {client:40011 → pod:8080} leaves from the frontend, about {client → frontend}.
          const err = await run("cil_to_netdev", icmp6Error(POD6, CLIENT6, [1, 4], learn));
          assertEquals(err.retval, TC_ACT_OK);
          assertEquals(err.out.slice(22, 38), NODE6, "outer source: the frontend");
          assertEquals(err.out.slice(38, 54), CLIENT6);
          assertEquals(err.out.slice(70, 86), CLIENT6, "embedded source: the client");
          assertEquals(err.out.slice(86, 102), NODE6, "embedded destination: the frontend");
          assertEquals(
            err.out.slice(126, 130),
            [0x9c, 0x4b, 0x75, 0x86],
            "ports after the DSR header",
          );
          assert(icmp6Ok(err.out), "ICMPv6 checksum");
          // SNAT to the remote backend, then its Packet Too Big to the node: to the client,
          // about the client's own packet to the frontend.
          await bpftool.batch([`${m}/cilia_nat_cfg key 0 0 0 0 value ${hex(cfg)}`]);
          const snat = await run("cil_from_netdev", packet6(CLIENT6, NODE6, tcpSyn(40020, 30089)));
          assertEquals(snat.out.slice(22, 38), NODE6, "SNAT mode: from the node");
          const toBackend = snat.out.slice(0, 14 + 40 + 20);
          const ptb = await run("cil_from_netdev", icmp6Error(REMOTE6, NODE6, [2, 0], toBackend));
          assertEquals(ptb.out.slice(22, 38), NODE6, "outer source: the frontend");
          assertEquals(ptb.out.slice(38, 54), CLIENT6, "outer destination: the client");
          assertEquals(ptb.out.slice(70, 86), CLIENT6);
          assertEquals(ptb.out.slice(86, 102), NODE6);
          assertEquals(ptb.out.slice(102, 106), [0x9c, 0x54, 0x75, 0x89], "ports 40020 → 30089");
          assert(icmp6Ok(ptb.out), "ICMPv6 checksum");
          // An error about no flow of ours passes unchanged.
          const stray = icmp6Error(POD6, CLIENT6, [1, 4], withExt(NODE6, 40099));
          assertEquals(await run("cil_to_netdev", stray), { retval: TC_ACT_OK, out: stray });
        },
      );
    });
  },
);
