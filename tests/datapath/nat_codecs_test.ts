// The NAT maps of bpf/host.c (bpf/lib/nat.h): their TypeScript layouts are checked against the
// compiled host.o's BTF, and the config entry's encoding is pinned byte for byte. The kernel half
// (real packets) is tests/e2e/nat_test.ts.
import { BpfTool } from "../../agent/datapath/bpftool.ts";
import { buildObject } from "../../agent/datapath/build.ts";
import { type Layout } from "../../agent/datapath/codecs.ts";
import {
  encodeNat6Config,
  encodeNatConfig,
  NAT_LAYOUTS,
} from "../../agent/datapath/netdev_loader.ts";
import { assert, assertEquals } from "./_fixture.ts";
import { needs } from "../helpers/root.ts";

Deno.test(
  "NAT layouts match struct nat_cfg, nat_key and nat_entry in host.o's BTF",
  needs({ binaries: ["clang", "bpftool"] }),
  async (t) => {
    const buildDir = await Deno.makeTempDir({ prefix: "cilia-btf-host-" });
    const obj = await buildObject({ buildDir, name: "host" });
    const btf = await new BpfTool().btfDump(obj.path).finally(() =>
      Deno.remove(buildDir, { recursive: true })
    );
    const structs = new Map(btf.types.filter((x) => x.kind === "STRUCT").map((x) => [x.name, x]));
    for (const [name, l] of Object.entries(NAT_LAYOUTS) as [string, Layout][]) {
      await t.step(`${name} = struct ${l.struct}`, () => {
        const s = structs.get(l.struct);
        assert(s, `struct ${l.struct} in BTF`);
        assertEquals(s.size, l.size, "size");
        const members = (s.members ?? []).map((m) => [m.name, m.bits_offset / 8]);
        assertEquals(l.fields.map((f) => [f.name, f.offset]), members, "members and offsets");
      });
    }
  },
);

Deno.test("encodeNatConfig() writes addresses in network order and masks from prefixes", () => {
  const b = encodeNatConfig({
    nodeIp: "192.0.2.1",
    podCidr: "10.200.1.0/24",
    nativeRoutingCidr: "10.0.0.0/12",
    masquerade: true,
    nodePort: true,
  });
  assertEquals(Array.from(b), [
    ...[192, 0, 2, 1],
    ...[10, 200, 1, 0, 255, 255, 255, 0],
    ...[10, 0, 0, 0, 255, 240, 0, 0],
    ...[3, 0, 0, 0],
  ]);
  const off = encodeNatConfig({ nodeIp: "192.0.2.1", masquerade: false, nodePort: false });
  assertEquals(Array.from(off.subarray(4)), new Array(20).fill(0), "no CIDRs, no flags");
  const tunnel = encodeNatConfig({
    nodeIp: "192.0.2.1",
    masquerade: true,
    nodePort: false,
    tunnelPort: 8472,
  });
  assertEquals(Array.from(tunnel.subarray(20)), [1, 0, 0x21, 0x18], "flags, tunnel port (BE)");
});

Deno.test("encodeNat6Config(): node IPv6 and pod CIDR (nodeport6.h); none is all zero", () => {
  const b = encodeNat6Config({ nodeIp6: "2001:db8:200::1", podCidrV6: "fd00:200:1::/64" });
  assertEquals(Array.from(b), [
    ...[0x20, 0x01, 0x0d, 0xb8, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    ...[0xfd, 0, 0x02, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ...[64, 0, 0, 0],
  ]);
  assertEquals(Array.from(encodeNat6Config({})), new Array(36).fill(0), "IPv6 NodePort off");
  assertEquals(
    Array.from(encodeNat6Config({ podCidrV6: "fd00:200:1::/64" })),
    new Array(36).fill(0),
    "a pod CIDR without a node address: off",
  );
  let err: unknown;
  try {
    encodeNat6Config({ nodeIp6: "192.0.2.1" });
  } catch (e) {
    err = e;
  }
  assert(
    err instanceof RangeError &&
      /Invalid node IPv6 address "192.0.2.1": expected IPv6/.test(err.message),
  );
});
