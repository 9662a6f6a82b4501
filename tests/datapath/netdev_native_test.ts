// cil_to_netdev (bpf/host.c) on a pod's packet that an lxc program sent natively to another
// node's pod (bpf/lib/nodeport.h, 10.): with MARK_MAGIC_NATIVE only cilia_snat is consulted. The
// ipcache of this lone object knows no other node, so the whole pipeline masquerades a packet to
// 10.200.2.7 (nat.h, 2.): the marked one leaves untouched, which shows the pipeline was skipped;
// an egress entry (a local NodePort backend's reply, NP_LOCAL) still translates a marked packet;
// ICMP takes the whole pipeline; the mark is cleared every time. `bpftool prog run`, no netns.
import { hexArgs } from "../../agent/datapath/bpftool.ts";
import { encode } from "../../agent/datapath/codecs.ts";
import { encodeNatConfig, NAT_LAYOUTS } from "../../agent/datapath/netdev_loader.ts";
import { MARK_MAGIC_NATIVE } from "../../policy-wasm/src/constants.generated.ts";
import { assertEquals } from "./_fixture.ts";
import { csum, packet, tcpSyn, withHostObject } from "./_host_obj.ts";
import { needsRoot } from "../helpers/root.ts";

const TC_ACT_OK = 0;
const NODE = [192, 0, 2, 1], POD = [10, 200, 1, 5], REMOTE = [10, 200, 2, 7];
const NAT_K_NP_LOCAL = 5, NAT_DIR_EGRESS = 1;

/** Ethernet + IPv4 + a TCP SYN (or an ICMP echo request), both checksummed. */
const frame = (src: number[], dst: number[], sport: number, dport: number, icmp = false) =>
  icmp ? packet(src, dst, 1, [8, 0, 0, 0, 0, 7, 0, 1]) : packet(src, dst, 6, tcpSyn(sport, dport));

Deno.test(
  "host.o: a natively sent pod packet (MARK_MAGIC_NATIVE) is checked against cilia_snat only",
  { ...needsRoot(), sanitizeResources: true },
  async (t) => {
    await withHostObject("cilia-native-", async ({ dir, bpffs, bpftool }) => {
      const cfg = encodeNatConfig({
        nodeIp: "192.0.2.1",
        podCidr: "10.200.1.0/24",
        masquerade: true,
        nodePort: true,
      });
      await bpftool.batch([
        `map update pinned ${bpffs}/m/cilia_nat_cfg key 0 0 0 0 value hex ${hexArgs(cfg)}`,
      ]);
      // One run of cil_to_netdev; the __sk_buff's mark (offset 8) in and out.
      const run = async (bytes: number[], mark: number) => {
        const ctx = new Uint8Array(44);
        new DataView(ctx.buffer).setUint32(8, mark, true);
        await Deno.writeFile(`${dir}/in`, new Uint8Array(bytes));
        await Deno.writeFile(`${dir}/ctx`, ctx);
        for (const f of ["out", "ctx_out"]) await Deno.remove(`${dir}/${f}`).catch(() => {});
        const r = JSON.parse(
          await bpftool.run(["-j", "prog", "run", "pinned", `${bpffs}/p/cil_to_netdev`].concat([
            ...["data_in", `${dir}/in`, "data_out", `${dir}/out`],
            ...["ctx_in", `${dir}/ctx`, "ctx_out", `${dir}/ctx_out`],
          ])),
        ) as { retval: number };
        const out = Array.from(await Deno.readFile(`${dir}/out`));
        const ctxOut = await Deno.readFile(`${dir}/ctx_out`);
        return { retval: r.retval, out, mark: new DataView(ctxOut.buffer).getUint32(8, true) };
      };
      const source = (out: number[]) => [...out.slice(26, 30), (out[34]! << 8) | out[35]!];

      await t.step(
        "unmarked, the pipeline masquerades a destination it does not know",
        async () => {
          const r = await run(frame(POD, REMOTE, 40010, 80), 0);
          assertEquals(r.retval, TC_ACT_OK);
          assertEquals(r.out.slice(26, 30), NODE, "source = node IP");
        },
      );

      await t.step(
        "marked TCP without an egress entry leaves untouched, mark cleared",
        async () => {
          const p = frame(POD, REMOTE, 40011, 80);
          const r = await run(p, MARK_MAGIC_NATIVE);
          assertEquals([r.retval, r.out, r.mark], [TC_ACT_OK, p, 0]);
          const other = await run(p, MARK_MAGIC_NATIVE | 0x10000);
          assertEquals(other.out.slice(26, 30), NODE, "another mark: the pipeline");
        },
      );

      await t.step("a marked NodePort reply (NP_LOCAL) still gets its frontend", async () => {
        const key = encode(NAT_LAYOUTS.natKey, {
          saddr: new Uint8Array(POD),
          daddr: new Uint8Array(REMOTE),
          sport: 8080,
          dport: 40012,
          proto: 6,
          dir: NAT_DIR_EGRESS,
          pad: 0,
        });
        const entry = encode(NAT_LAYOUTS.natEntry, {
          daddr: new Uint8Array(4),
          saddr: new Uint8Array(NODE),
          dport: 0,
          sport: 30080,
          backend_id: 0,
          kind: NAT_K_NP_LOCAL,
          flags: 0,
          pad: 0,
        });
        await bpftool.batch([
          `map update pinned ${bpffs}/m/cilia_snat key hex ${hexArgs(key)} value hex ${
            hexArgs(entry)
          }`,
        ]);
        const r = await run(frame(POD, REMOTE, 8080, 40012), MARK_MAGIC_NATIVE);
        assertEquals([r.retval, r.mark], [TC_ACT_OK, 0]);
        assertEquals(source(r.out), [...NODE, 30080], "source = the frontend");
        const ip = r.out.slice(14, 34), tcp = r.out.slice(34);
        assertEquals(csum(ip), 0, "IP checksum");
        assertEquals(csum([...NODE, ...REMOTE, 0, 6, 0, tcp.length, ...tcp]), 0, "TCP checksum");
      });

      await t.step("marked ICMP takes the whole pipeline", async () => {
        const r = await run(frame(POD, REMOTE, 0, 0, true), MARK_MAGIC_NATIVE);
        assertEquals([r.retval, r.mark], [TC_ACT_OK, 0]);
        assertEquals(r.out.slice(26, 30), NODE, "masqueraded as unmarked");
      });
    });
  },
);
