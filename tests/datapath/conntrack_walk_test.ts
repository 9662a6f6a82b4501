// The conntrack walks the agent runs over the whole table (GC, endpoint removal, the FQDN's live
// flows, fill counting, the API dump) read it in batches: on a standalone LRU map of cilia_ct's
// layout holding more entries than one batch, every walk sees each entry once and decides as the
// entry's bytes say. And the GC waits longer between passes that free almost nothing.
import { assert, assertEquals } from "./_fixture.ts";
import { DIR_SERVICE, encode, LAYOUTS } from "../../agent/datapath/codecs.ts";
import {
  collectConntrack,
  countConntrack,
  dumpConntrack,
  liveFlowPeers,
  nextGcDelay,
} from "../../agent/datapath/conntrack_gc.ts";
import { countEntries } from "../../agent/datapath/map_sizes.ts";
import { closeFd, mapUpdate, monotonicNs, objGet, withLibs } from "../../agent/datapath/ffi.ts";
import { needsRoot } from "../helpers/root.ts";

const SEC = 1_000_000_000n, TCP = 6, UDP = 17, DIR_INGRESS = 1, DIR_EGRESS = 2;

async function run(argv: string[]): Promise<void> {
  const r = await new Deno.Command(argv[0]!, { args: argv.slice(1), stderr: "piped" }).output();
  if (r.code !== 0) {
    throw new Error(`${argv.join(" ")}: ${new TextDecoder().decode(r.stderr).trim()}`);
  }
}

function v4(...b: number[]): Uint8Array {
  const x = new Uint8Array(16);
  x.set(b);
  return x;
}

interface Flow {
  ep: number;
  dir: number;
  family: 4 | 6;
  saddr: Uint8Array;
  daddr: Uint8Array;
  sport: number;
  expires: bigint;
}

function write(path: string, flows: Flow[]): void {
  withLibs(() => {
    const fd = objGet(path);
    try {
      for (const f of flows) {
        const key = encode(LAYOUTS.ctKey, {
          "tuple.saddr": f.saddr,
          "tuple.daddr": f.daddr,
          "tuple.sport": f.sport,
          "tuple.dport": 443,
          "tuple.proto": f.family === 4 ? TCP : UDP,
          "tuple.family": f.family,
          ep_id: f.ep,
          dir: f.dir,
        });
        const value = encode(LAYOUTS.ctEntry, { expires: f.expires, packets: 1n, bytes: 60n });
        assertEquals(mapUpdate(fd, key, value), 0);
      }
    } finally {
      closeFd(fd);
    }
  });
}

Deno.test("conntrack GC waits longer after passes that free almost nothing", () => {
  const o = { intervalMs: 30_000, maxIntervalMs: 300_000 };
  assertEquals(nextGcDelay({ scanned: 1_000_000, deleted: 100_000 }, 500, o), 30_000);
  assertEquals(nextGcDelay({ scanned: 5_000, deleted: 0 }, 500, o), 30_000, "small table");
  assertEquals(nextGcDelay({ scanned: 1_000_000, deleted: 10 }, 100, o), 30_000);
  assertEquals(nextGcDelay({ scanned: 1_000_000, deleted: 10 }, 600, o), 60_000);
  assertEquals(nextGcDelay({ scanned: 1_000_000, deleted: 10 }, 9_000, o), 300_000);
});

Deno.test(
  "conntrack walks read the table in batches and see every entry once",
  { ...needsRoot(["bpftool"]), sanitizeResources: true },
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "cilia-ctwalk-" });
    let mounted = false;
    try {
      await run(["mount", "-t", "bpf", "bpf", dir]);
      mounted = true;
      const map = `${dir}/ct`;
      await run([
        ...["bpftool", "map", "create", map, "type", "lru_hash"],
        ...["key", "44", "value", "32", "entries", "65536", "name", "ctwalk_test"],
      ]);
      const now = monotonicNs();
      const flows: Flow[] = [];
      // 12,000 live flows of endpoint 7 (three batches of 4,096), 300 expired ones of
      // endpoint 8, 40 of endpoint 9, a service entry and an IPv6 flow of endpoint 9.
      for (let i = 0; i < 12_000; i++) {
        flows.push({
          ep: 7,
          dir: DIR_EGRESS,
          family: 4,
          saddr: v4(10, 0, 0, 7),
          daddr: v4(198, 51, 100 + (i >> 8), i & 0xff),
          sport: 1024 + (i % 50_000),
          expires: now + 3600n * SEC,
        });
      }
      for (let i = 0; i < 300; i++) {
        flows.push({
          ep: 8,
          dir: DIR_INGRESS,
          family: 4,
          saddr: v4(203, 0, 113, i & 0xff),
          daddr: v4(10, 0, 0, 8),
          sport: 2000 + i,
          expires: now - SEC,
        });
      }
      for (let i = 0; i < 40; i++) {
        flows.push({
          ep: 9,
          dir: DIR_EGRESS,
          family: 4,
          saddr: v4(10, 0, 0, 9),
          daddr: v4(192, 0, 2, 1),
          sport: 3000 + i,
          expires: now + 60n * SEC,
        });
      }
      const v6a = new Uint8Array(16), v6b = new Uint8Array(16);
      v6a.set([0x20, 0x01, 0x0d, 0xb8], 0), v6a[15] = 9;
      v6b.set([0x20, 0x01, 0x0d, 0xb8], 0), v6b[15] = 0x53;
      flows.push({
        ep: 9,
        dir: DIR_EGRESS,
        family: 6,
        saddr: v6a,
        daddr: v6b,
        sport: 5353,
        expires: now + 60n * SEC,
      });
      flows.push({
        ep: 9,
        dir: DIR_SERVICE,
        family: 4,
        saddr: v4(10, 0, 0, 9),
        daddr: v4(198, 51, 100, 200),
        sport: 4000,
        expires: now + 60n * SEC,
      });
      write(map, flows);
      const total = flows.length;

      assertEquals(countConntrack(map), total);
      assertEquals(countEntries(map, { map: "cilia_ct", max: 65536 }), total);
      assertEquals(countEntries(map, { map: "cilia_ct", max: 100 }), 100, "capped at max");
      const dump = dumpConntrack(map);
      assertEquals(dump.length, total);
      const seen = new Set(dump.map((e) => `${e.key.ep_id}/${e.key["tuple.sport"]}/${e.key.dir}`));
      assertEquals(seen.size, total, "no entry twice");
      const v6 = dump.find((e) => e.key["tuple.family"] === 6)!;
      assertEquals([v6.key.ep_id, v6.value.expires], [9, now + 60n * SEC]);

      const live = liveFlowPeers(map);
      assert(live(7, "198.51.100.5") && live(7, "198.51.146.223") && live(7, "10.0.0.7"));
      assert(live(9, "192.0.2.1") && live(9, "2001:db8::53") && live(9, "2001:db8:0::9"));
      assert(!live(8, "203.0.113.1"), "expired entries are not live");
      assert(!live(9, "198.51.100.200"), "service entries are not flows");
      assert(!live(7, "192.0.2.1") && !live(9, "198.51.100.5"), "per endpoint");
      assert(!live(9, "not an address"));

      // Endpoint 9 removed (its 42 entries) and the 300 expired ones of endpoint 8.
      assertEquals(collectConntrack(map, { epIds: new Set([9]) }), {
        scanned: total,
        deleted: 342,
      });
      assertEquals(countConntrack(map), 12_000);
      assertEquals(collectConntrack(map), { scanned: 12_000, deleted: 0 });
      const r = collectConntrack(map, { now: now + 3601n * SEC });
      assertEquals(r, { scanned: 12_000, deleted: 12_000 });
      assertEquals(countConntrack(map), 0);
      assertEquals(dumpConntrack(map), []);
    } finally {
      if (mounted) await run(["umount", dir]);
      await Deno.remove(dir, { recursive: true });
    }
  },
);
