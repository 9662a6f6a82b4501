// cil_from_netdev (bpf/host.c) delivering a natively routed packet to a local pod by its
// cilia_lxc_ipv4 entry (bpf/lib/tunnel.h, 5.): the frame leaves for the pod's veth
// (TC_ACT_REDIRECT) with the pod's MAC as destination, the veth's as source, the TTL one lower
// and the IPv4 checksum updated for it, all in one write (tunnel_fib_apply); nothing else in the
// frame changes. TTLs and checksums are varied so that the ones' complement update meets its
// carries; a TTL of 1 is left to the stack. `bpftool prog run`, no netns (the redirect itself
// is not carried out; the tail call into the pod's ingress enforcement is emptied, so the
// redirect to the veth is what the program returns, peer.h 3.).
import { hexArgs } from "../../agent/datapath/bpftool.ts";
import { encode, LAYOUTS } from "../../agent/datapath/codecs.ts";
import { encodeNatConfig } from "../../agent/datapath/netdev_loader.ts";
import { assertEquals } from "./_fixture.ts";
import { csum, packet, tcpSyn, withHostObject } from "./_host_obj.ts";
import { needsRoot } from "../helpers/root.ts";

const TC_ACT_OK = 0, TC_ACT_REDIRECT = 7;
const REMOTE_POD = [10, 200, 1, 5], POD = [10, 200, 2, 7];
const POD_MAC = [2, 0, 0, 0, 2, 7], VETH_MAC = [2, 0, 0, 0, 2, 0xfe];

/** The TCP SYN frame of packet() with the IPv4 identification and TTL given, checksum redone. */
function frame(id: number, ttl: number, sport: number): number[] {
  const f = packet(REMOTE_POD, POD, 6, tcpSyn(sport, 8080));
  f[18] = id >> 8, f[19] = id & 0xff, f[22] = ttl, f[24] = 0, f[25] = 0;
  const c = csum(f.slice(14, 34));
  f[24] = c >> 8, f[25] = c & 0xff;
  return f;
}

Deno.test(
  "host.o: a natively routed packet for a local pod leaves with its MACs, TTL − 1, a valid checksum",
  { ...needsRoot(), sanitizeResources: true },
  async (t) => {
    await withHostObject("cilia-deliver-", async ({ bpffs, bpftool }) => {
      const cfg = encodeNatConfig({
        nodeIp: "192.0.2.2",
        podCidr: "10.200.2.0/24",
        nativeRoutingCidr: "10.200.0.0/16",
        masquerade: true,
        nodePort: true,
      });
      const lxc = encode(LAYOUTS.lxcIpv4Info, {
        ifindex: 42,
        mac: new Uint8Array(POD_MAC),
        host_mac: new Uint8Array(VETH_MAC),
      });
      await bpftool.batch([
        `map update pinned ${bpffs}/m/cilia_nat_cfg key 0 0 0 0 value hex ${hexArgs(cfg)}`,
        `map update pinned ${bpffs}/m/cilia_lxc_ipv4 key ${POD.join(" ")} value hex ${
          hexArgs(lxc)
        }`,
        // No pod here for the tail call's ingress enforcement: the redirect stands (peer.h, 3.).
        `map delete pinned ${bpffs}/m/cilia_peer_calls key 0 0 0 0`,
      ]);
      const run = async (bytes: number[]) => {
        const r = await bpftool.progRun(`${bpffs}/p/cil_from_netdev`, new Uint8Array(bytes));
        return { retval: r.retval, out: Array.from(r.out) };
      };

      await t.step("MACs, ethertype, TTL and checksum over varied headers", async () => {
        const cases: [number, number][] = [];
        for (const ttl of [64, 255, 2, 128]) {
          for (const id of [0, 1, 0x1234, 0xfeff, 0xffff, 0x8000]) cases.push([id, ttl]);
        }
        for (const [i, [id, ttl]] of cases.entries()) {
          const f = frame(id, ttl, 40000 + i);
          const r = await run(f);
          const what = `id ${id}, TTL ${ttl}`;
          assertEquals(r.retval, TC_ACT_REDIRECT, `${what}: redirected`);
          assertEquals(r.out.slice(0, 14), [...POD_MAC, ...VETH_MAC, 0x08, 0x00], `${what}: L2`);
          assertEquals(r.out[22], ttl - 1, `${what}: TTL`);
          assertEquals(csum(r.out.slice(14, 34)), 0, `${what}: IPv4 checksum`);
          const expect = [...f];
          expect.splice(0, 12, ...POD_MAC, ...VETH_MAC);
          expect[22] = ttl - 1, expect[24] = r.out[24]!, expect[25] = r.out[25]!;
          assertEquals(r.out, expect, `${what}: nothing else changed`);
        }
      });

      await t.step("a TTL of 1 goes up the stack unchanged", async () => {
        const f = frame(7, 1, 41000);
        assertEquals(await run(f), { retval: TC_ACT_OK, out: f });
      });
    });
  },
);
