// An in-place upgrade: the agent starts on the pins an older cilia left. `cilia_proxy_*` pins it
// no longer uses go before loading (dropOldProxyMaps in agent/datapath/loader.ts): a proxy map
// of the old, IPv4-only layout is replaced by one of the current layout, which the re-attached
// programs use, and a proxy pin of a name this version does not have is removed; every other
// pin is reused as it was. A cilia_endpoints pin of the older layout (36-byte values) is
// replaced the same way (dropOldEndpointsMap), and a cilia_metrics pin of the older type (a
// per-CPU hash, now a per-CPU array: dropPinOfOtherType). Pins of a build without
// cilia_lxc_ipv4: the agent pins the new map and fills it with every restored endpoint's entry
// (bpf/lib/endpoint.h). Pins live in the test's own bpffs (the lab's prefix). Needs root.
import { execCommand } from "../../agent/sys/exec.ts";
import { decode, LAYOUTS, num } from "../../agent/datapath/codecs.ts";
import { BpfTool, bytesFromHex } from "../../agent/datapath/bpftool.ts";
import { assert, assertEquals, change, flags, nodeLab, openSink } from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

interface MapInfo {
  id: number;
  bytes_key: number;
  bytes_value: number;
}

async function json<T>(argv: string[], netns?: string): Promise<T> {
  const res = await execCommand(argv, { netns });
  assertEquals(res.code, 0, `${argv.join(" ")}: ${res.stderr}`);
  return JSON.parse(res.stdout) as T;
}

const mapInfo = (pin: string) => json<MapInfo>(["bpftool", "-j", "map", "show", "pinned", pin]);

const exists = (path: string) => Deno.lstat(path).then(() => true, () => false);

/** The program on the first pod's veth at ingress (the one tc runs), with the maps it uses. */
async function podIngressProg(t: Awaited<ReturnType<typeof nodeLab>>) {
  const filters = await json<{ options?: { prog?: { id: number } } }[]>(
    ["tc", "-j", "filter", "show", "dev", t.pods[0]!.ifname, "ingress"],
    t.node.netns,
  );
  const progId = filters.find((f) => f.options?.prog)?.options?.prog?.id;
  assert(progId !== undefined, JSON.stringify(filters));
  const prog = await json<{ map_ids: number[] }>(
    ["bpftool", "-j", "prog", "show", "id", String(progId)],
  );
  return { progId, prog };
}

Deno.test({
  name: "loadPinned() drops cilia_proxy_* pins of an older version and reuses the rest",
  ...needsRoot(),
  sanitizeOps: true,
  sanitizeResources: true,
}, async () => {
  await using t = await nodeLab({ pods: 1 });
  const maps = `${t.node.bpffs}/cilia/maps`;
  const before = {
    ipcache: await mapInfo(`${maps}/cilia_ipcache`),
    cfg: await mapInfo(`${maps}/cilia_proxy_cfg`),
    nat: await mapInfo(`${maps}/cilia_proxy_nat`),
  };
  // What the older version pinned: cilia_proxy_orig with IPv4 addresses (key 8, value 24 bytes)
  // and a proxy map this version does not have, named after the lab.
  const orig = `${maps}/cilia_proxy_orig`;
  const unused = `${maps}/cilia_proxy_${t.lab.prefix}ports`;
  await Deno.remove(orig);
  for (const [pin, key, value, name] of [[orig, 8, 24, "cilia_proxy_ori"], [unused, 4, 4, "old"]]) {
    const res = await execCommand([
      ...["bpftool", "map", "create", String(pin), "type", "hash", "key", String(key)],
      ...["value", String(value), "entries", "64", "name", String(name)],
    ]);
    assertEquals(res.code, 0, res.stderr);
  }
  const old = await mapInfo(orig);
  assertEquals([old.bytes_key, old.bytes_value], [8, 24]);

  const again = await openSink(t.node);
  try {
    assert(!(await exists(unused)), `"${unused}" is removed`);
    const now = await mapInfo(orig);
    assert(now.id !== old.id, "cilia_proxy_orig is a new map");
    assertEquals(
      [now.bytes_key, now.bytes_value],
      [LAYOUTS.proxyOrigKey.size, LAYOUTS.proxyOrigValue.size],
    );
    assertEquals(again.datapath.loaded, true, "the programs were loaded again");
    // Pins of the current layout are kept.
    assertEquals((await mapInfo(`${maps}/cilia_ipcache`)).id, before.ipcache.id);
    assertEquals((await mapInfo(`${maps}/cilia_proxy_cfg`)).id, before.cfg.id);
    assertEquals((await mapInfo(`${maps}/cilia_proxy_nat`)).id, before.nat.id);
    // The pod's veth runs the new programs, which use the new map and not the old one.
    const { progId, prog } = await podIngressProg(t);
    assert(prog.map_ids.includes(now.id), `program ${progId} uses ${now.id}: ${prog.map_ids}`);
    assert(!prog.map_ids.includes(old.id), `program ${progId} does not use ${old.id}`);
  } finally {
    await again.close();
  }
});

Deno.test({
  name: "loadPinned() replaces a cilia_endpoints pin of the older, 36-byte layout",
  ...needsRoot(),
  sanitizeOps: true,
  sanitizeResources: true,
}, async () => {
  await using t = await nodeLab({ pods: 1 });
  const pin = `${t.node.bpffs}/cilia/maps/cilia_endpoints`;
  // What the older version pinned: values without the host side's MAC (bpf/lib/endpoint.h).
  await Deno.remove(pin);
  const res = await execCommand([
    ...["bpftool", "map", "create", pin, "type", "hash", "key", "4", "value", "36"],
    ...["entries", "4096", "name", "cilia_endpoints"],
  ]);
  assertEquals(res.code, 0, res.stderr);
  const old = await mapInfo(pin);

  const again = await openSink(t.node);
  try {
    const now = await mapInfo(pin);
    assert(now.id !== old.id, "cilia_endpoints is a new map");
    assertEquals([now.bytes_key, now.bytes_value], [4, LAYOUTS.endpointInfo.size]);
    assertEquals(again.datapath.loaded, true, "the programs were loaded again");
    // Writing the endpoint again points its veth at the new programs, which use the new map.
    await again.attach(t.endpoints[0]!, flags(false, false), { ...change([]), full: true });
    const { progId, prog } = await podIngressProg(t);
    assert(prog.map_ids.includes(now.id), `program ${progId} uses ${now.id}: ${prog.map_ids}`);
  } finally {
    await again.close();
  }
});

Deno.test({
  name: "loadPinned() replaces a cilia_metrics pin of the older type (a per-CPU hash)",
  ...needsRoot(),
  sanitizeOps: true,
  sanitizeResources: true,
}, async () => {
  await using t = await nodeLab({ pods: 1 });
  const pin = `${t.node.bpffs}/cilia/maps/cilia_metrics`;
  await Deno.remove(pin);
  const res = await execCommand([
    ...["bpftool", "map", "create", pin, "type", "percpu_hash", "key", "4", "value", "16"],
    ...["entries", "1024", "name", "cilia_metrics"],
  ]);
  assertEquals(res.code, 0, res.stderr);
  const old = await mapInfo(pin);

  const again = await openSink(t.node);
  try {
    const now = await json<MapInfo & { type: string }>(
      ["bpftool", "-j", "map", "show", "pinned", pin],
    );
    assert(now.id !== old.id, "cilia_metrics is a new map");
    assertEquals(now.type, "percpu_array");
    assertEquals(again.datapath.loaded, true, "the programs were loaded again");
    await again.attach(t.endpoints[0]!, flags(false, false), { ...change([]), full: true });
    const { progId, prog } = await podIngressProg(t);
    assert(prog.map_ids.includes(now.id), `program ${progId} uses ${now.id}: ${prog.map_ids}`);
    assert(!prog.map_ids.includes(old.id), `program ${progId} does not use ${old.id}`);
    // Its rows are the slots counted, as the hash's were.
    const rows = await again.readMetrics();
    assert(rows.every((r) => r.packets > 0n), JSON.stringify(rows, (_, v) => String(v)));
  } finally {
    await again.close();
  }
});

Deno.test({
  name: "an agent over pins without cilia_lxc_ipv4 pins it and fills it from the endpoints",
  ...needsRoot(),
  sanitizeOps: true,
  sanitizeResources: true,
}, async () => {
  await using t = await nodeLab({ pods: 1 });
  const pod = t.pods[0]!;
  const pin = `${t.node.bpffs}/cilia/maps/cilia_lxc_ipv4`;
  const [veth] = await json<{ ifindex: number; address: string }[]>(
    ["ip", "-j", "link", "show", "dev", pod.ifname],
    t.node.netns,
  );
  const ep = { ...t.endpoints[0]!, hostMac: veth!.address };
  const mac = (b: unknown) => [...(b as Uint8Array)].map((x) => x.toString(16).padStart(2, "0"));
  const entry = async () => {
    const dump = await new BpfTool().mapDump(pin);
    const e = dump.find((e) => [...bytesFromHex(e.key)].join(".") === pod.ipv4);
    if (!e?.value) return undefined;
    const v = decode(LAYOUTS.lxcIpv4Info, bytesFromHex(e.value));
    return {
      ifindex: num(v.ifindex),
      mac: mac(v.mac).join(":"),
      hostMac: mac(v.host_mac).join(":"),
    };
  };
  const want = { ifindex: veth!.ifindex, mac: pod.mac, hostMac: veth!.address };
  await t.sink.attach(ep, flags(false, false), { ...change([]), full: true });
  assertEquals(await entry(), want, "written with the endpoint");
  // What an older build left: every pin but this map (and its programs, another object's).
  await t.sink.close();
  await Deno.remove(pin);
  const again = await openSink(t.node);
  try {
    assertEquals(again.datapath.loaded, true, "the programs were loaded again");
    // The restored endpoint needs no write (rule 4): the map is filled from the snapshot.
    let got;
    for (let i = 0; i < 50 && !(got = await entry()); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assertEquals(got, want, "filled on start");
    // Deleting the endpoint deletes its address too.
    await again.datapath.removeEndpoint(pod.ifname, ep.id);
    assertEquals(await entry(), undefined, "deleted with the endpoint");
  } finally {
    await again.close();
  }
});
