// The kernel's answer for one endpoint (kernel_lookup.ts, used by `policy trace --verify-kernel`
// and the endpoints bench after every ADD) finds the endpoint's flags in cilia_endpoints by its
// id: on a standalone map of that layout holding more entries than one batch read, every
// endpoint is found with its own flags, and an absent one is not.
import { assertEquals } from "./_fixture.ts";
import { encode, LAYOUTS } from "../../agent/datapath/codecs.ts";
import { closeFd, mapUpdate, objGet, withLibs } from "../../agent/datapath/ffi.ts";
import { endpointFlags } from "../../agent/datapath/kernel_lookup.ts";
import { needsRoot } from "../helpers/root.ts";

async function run(argv: string[]): Promise<void> {
  const r = await new Deno.Command(argv[0]!, { args: argv.slice(1), stderr: "piped" }).output();
  if (r.code !== 0) {
    throw new Error(`${argv.join(" ")}: ${new TextDecoder().decode(r.stderr).trim()}`);
  }
}

Deno.test(
  "endpointFlags finds each endpoint's flags by id in a map larger than one batch",
  { ...needsRoot(["bpftool"]), sanitizeResources: true },
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "cilia-eplookup-" });
    let mounted = false;
    try {
      await run(["mount", "-t", "bpf", "bpf", dir]);
      mounted = true;
      const map = `${dir}/endpoints`;
      await run([
        ...["bpftool", "map", "create", map, "type", "hash"],
        ...["key", String(LAYOUTS.endpointKey.size), "value", String(LAYOUTS.endpointInfo.size)],
        ...["entries", "4096", "name", "eplookup_test"],
      ]);
      // 2,500 endpoints (ifindex 100 + i → endpoint 1 + i, flags from the id); none has id 2,600.
      const flagsOf = (id: number) => (id * 7) & 0xff;
      withLibs(() => {
        const fd = objGet(map);
        try {
          for (let i = 0; i < 2_500; i++) {
            const key = encode(LAYOUTS.endpointKey, { ifindex: 100 + i });
            const value = encode(LAYOUTS.endpointInfo, {
              ep_id: 1 + i,
              flags: flagsOf(1 + i),
              identity: 50_000 + i,
            });
            assertEquals(mapUpdate(fd, key, value), 0);
          }
        } finally {
          closeFd(fd);
        }
      });
      for (const id of [1, 2, 1_024, 1_025, 2_048, 2_499, 2_500]) {
        assertEquals(endpointFlags(map, id), flagsOf(id), `endpoint ${id}`);
      }
      assertEquals(endpointFlags(map, 2_600), undefined);
      assertEquals(endpointFlags(map, 0), undefined);
    } finally {
      if (mounted) await run(["umount", dir]);
      await Deno.remove(dir, { recursive: true });
    }
  },
);
