// The TypeScript codecs mirror bpf/lib/*.h: their layouts are checked against the BTF of the
// compiled object, and the pure helpers (port blocks, key round trips, addresses) are
// unit-tested. Change plans are tested in policy_state_test.ts.
import { BpfTool } from "../../agent/datapath/bpftool.ts";
import { buildObject } from "../../agent/datapath/build.ts";
import { decode, encode, type Layout, LAYOUTS } from "../../agent/datapath/codecs.ts";
import { formatIP, parsePrefix } from "../../agent/datapath/_addr.ts";
import {
  decodePolicyEntry,
  encodePolicyEntry,
  mergePolicyEntries,
  type PolicyEntry,
  portBlocks,
} from "../../agent/datapath/policy_map.ts";
import { assert, assertEquals } from "./_fixture.ts";
import { needs } from "../helpers/root.ts";

/** A fresh compile in a temp dir: no root needed, and nothing written into the source tree. */
const btfTest = needs({ binaries: ["clang", "bpftool"] });

Deno.test("codecs match the struct layouts in the object's BTF", btfTest, async (t) => {
  const buildDir = await Deno.makeTempDir({ prefix: "cilia-btf-" });
  const obj = await buildObject({ buildDir });
  const btf = await new BpfTool().btfDump(obj.path).finally(() =>
    Deno.remove(buildDir, { recursive: true })
  );
  const structs = new Map(btf.types.filter((x) => x.kind === "STRUCT").map((x) => [x.name, x]));
  for (const [name, l] of Object.entries(LAYOUTS) as [string, Layout][]) {
    await t.step(`${name} = struct ${l.struct}`, () => {
      const s = structs.get(l.struct);
      assert(s, `struct ${l.struct} in BTF`);
      assertEquals(s.size, l.size, "size");
      const top = new Map<string, number>();
      for (const f of l.fields) {
        const member = f.name.split(".")[0]!;
        top.set(member, Math.min(top.get(member) ?? Infinity, f.offset));
      }
      const members = (s.members ?? []).map((m) => [m.name, m.bits_offset / 8]);
      assertEquals([...top.entries()], members, "members and offsets");
    });
  }
});

Deno.test("portBlocks() splits ranges into aligned prefix blocks that cover them exactly", () => {
  const cases: [number, number, number][] = [[80, 80, 1], [0, 65535, 1], [8000, 8080, 3], [
    1,
    65534,
    30,
  ]];
  for (const [lo, hi, n] of cases) {
    const blocks = portBlocks(lo, hi);
    assertEquals(blocks.length, n, `${lo}-${hi}`);
    let next = lo;
    for (const b of blocks) {
      const size = 1 << (16 - b.bits);
      assertEquals([b.port, b.port % size], [next, 0], `block at ${next}`);
      next += size;
    }
    assertEquals(next, hi + 1);
  }
});

Deno.test("policy entries round-trip through map keys and merge back into ranges", () => {
  const e: PolicyEntry = {
    egress: true,
    identity: 16777217,
    proto: 6,
    portLo: 8000,
    portHi: 8080,
    verdict: 3,
    cookie: 0xfeedbeef,
    proxyPort: 15001,
  };
  const rows = encodePolicyEntry(7, e).map(({ key, value }) => decodePolicyEntry(key, value));
  assertEquals(rows.every(([ep]) => ep === 7), true);
  assertEquals(mergePolicyEntries(rows.map(([, x]) => x)), [e]);
  const [l3] = encodePolicyEntry(7, { ...e, proto: 0, portLo: 0, portHi: 65535 });
  assertEquals(decode(LAYOUTS.policyKey, l3!.key).prefixlen, 64);
  assertEquals(Array.from(l3!.key.subarray(14)), [0, 0], "ports are not part of an L3 key");
});

Deno.test("parsePrefix() normalises IPv4 and IPv6 prefixes", () => {
  const p = parsePrefix("203.0.113.77/24");
  assertEquals([p.family, p.prefixLen, formatIP(4, p.addr)], [4, 24, "203.0.113.0"]);
  const q = parsePrefix("2001:db8::ffff:1/64");
  assertEquals([q.family, q.prefixLen, formatIP(6, q.addr)], [6, 64, "2001:db8::"]);
  assertEquals(formatIP(6, parsePrefix("::ffff:192.0.2.1").addr), "::ffff:c000:201");
  const key = encode(LAYOUTS.ipcacheKey, { prefixlen: 32 + 24, family: 4, addr: p.addr });
  assertEquals(Array.from(key.subarray(0, 12)), [56, 0, 0, 0, 4, 0, 0, 0, 203, 0, 113, 0]);
  for (const bad of ["10.0.0.256", "10.0.0.0/33", "2001:db8:::1", "fe80::1/129"]) {
    let threw = false;
    try {
      parsePrefix(bad);
    } catch {
      threw = true;
    }
    assert(threw, `"${bad}" is rejected`);
  }
});
