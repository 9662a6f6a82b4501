// Map sizes set by the agent's --bpf-*-max flags: the loaded maps have them (bpftool), their fill
// is reported (Datapath.mapFill, the cilia_bpf_map_pressure gauge), a full ipcache or policy map
// is a clear error naming the map, its size and the flag, and a pinned map of another size is
// refused at the next start with what to do.
import { execCommand } from "../../agent/sys/exec.ts";
import { Metrics } from "../../agent/metrics.ts";
import { registerDatapathMetrics } from "../../agent/datapath/kernel_sink.ts";
import { assert, assertEquals, change, entry, nodeLab, openSink } from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const opts = { ...needsRoot(), sanitizeOps: true, sanitizeResources: true };
const SIZES = { ctMax: 2048, policyMax: 16, ipcacheMax: 16 };

async function maxEntries(pinned: string): Promise<number> {
  const res = await execCommand(["bpftool", "-j", "map", "show", "pinned", pinned]);
  assertEquals(res.code, 0, res.stderr);
  return (JSON.parse(res.stdout) as { max_entries: number }).max_entries;
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected a rejection");
}

Deno.test(
  "map sizes: the flags size the maps, fill is reported, a full ipcache or policy map says so",
  opts,
  async () => {
    await using t = await nodeLab({ pods: 1, mapSizes: SIZES });
    const m = t.dp.pins.maps;
    assertEquals(await maxEntries(m.cilia_ipcache), 16);
    assertEquals(await maxEntries(m.cilia_policy), 16);
    assertEquals(await maxEntries(m.cilia_ct), 2048);
    assertEquals(t.dp.mapMax, { cilia_ct: 2048, cilia_policy: 16, cilia_ipcache: 16 });

    // The pod's two addresses are in the ipcache: 2/16.
    const ipcache = t.dp.mapFill(0).find((f) => f.map === "cilia_ipcache")!;
    assertEquals([ipcache.entries, ipcache.max, ipcache.pressure], [2, 16, 0.125]);
    const metrics = new Metrics();
    registerDatapathMetrics(metrics, t.sink);
    const text = await metrics.scrape();
    assert(text.includes(`cilia_bpf_map_pressure{map="cilia_ipcache"} 0.125`), text);
    assert(text.includes(`cilia_bpf_map_pressure{map="cilia_policy"} 0`), text);

    // 14 more fit; the 17th prefix does not.
    const fill = Array.from({ length: 14 }, (_, i) => ({
      prefix: `10.99.0.${i + 1}/32`,
      identity: 2000 + i,
    }));
    await t.dp.updateIpcache(fill, []);
    const full = await rejection(
      t.dp.updateIpcache([{ prefix: "10.99.1.1/32", identity: 3000 }], []),
    );
    assert(full instanceof RangeError, String(full));
    assertEquals(
      full.message,
      `Cannot write to map "cilia_ipcache": it is full (16 entries); raise --bpf-ipcache-max`,
    );
    assertEquals(t.dp.mapFill(0).find((f) => f.map === "cilia_ipcache")!.entries, 16);
    // Rewriting a prefix that is there still works when full.
    await t.dp.updateIpcache([{ prefix: "10.99.0.1/32", identity: 2999 }], []);

    // A policy change larger than the map fails closed for its endpoint and says why.
    const adds = Array.from({ length: 17 }, (_, i) => entry({ portLo: 100 + i, portHi: 100 + i }));
    const err = await rejection(t.sink.applyPolicy(1, change(adds)));
    assert(
      /map "cilia_policy": it is full \(16 entries\); raise --bpf-policy-map-max/.test(
        err.message,
      ),
      err.message,
    );
    assertEquals(t.sink.notReady().map((n) => n.endpoint), [1]);
  },
);

Deno.test(
  "map sizes: a pinned map of another size is refused with what to do, never kept silently",
  opts,
  async () => {
    await using t = await nodeLab({ pods: 0, mapSizes: SIZES });
    const err = await rejection(
      openSink(t.node, { mapSizes: { ...SIZES, ipcacheMax: 32 } }),
    );
    assert(err instanceof RangeError, String(err));
    assert(
      err.message.startsWith(
        `Cannot reuse pinned map "cilia_ipcache": it holds at most 16 entries, but ` +
          `--bpf-ipcache-max is 32; a pinned map is never resized in place. Start with ` +
          `--bpf-ipcache-max=16 to keep it`,
      ),
      err.message,
    );
    // The same sizes reuse the pins.
    const again = await openSink(t.node, { mapSizes: SIZES });
    assertEquals(again.datapath.loaded, false);
    await again.close();
  },
);
