// The CNI plugin's pure parts, in process (no agent, no root): the environment and CNI_ARGS,
// labels, result versions, error objects; the agent's endpoint names for pods; and the kernel
// sink's per-endpoint policy state (shared prefix blocks, full writes, stale keys).
import assert from "node:assert/strict";
import "../../agent/cni/main.ts";
import { convertResult, runPlugin } from "../../agent/cni/plugin.ts";
import { cniResult } from "../../agent/cni/result.ts";
import { labelsOf, parseCniArgs, parseNetworkConfig } from "../../agent/cni/config.ts";
import type { CniResult } from "../../agent/cni/types.ts";
import { endpointName } from "../../agent/endpoint/cni_attachments.ts";
import { EndpointPolicyState } from "../../agent/datapath/policy_state.ts";
import { keyId } from "../../agent/datapath/policy_map.ts";
import type { MapStateEntry } from "../../policy-wasm/mod.ts";
import { buildCniBundle } from "../../scripts/build_cni.ts";

const conf = (o: Record<string, unknown> = {}) =>
  JSON.stringify({ cniVersion: "1.0.0", name: "n", type: "cilia-cni", ...o });

Deno.test("runPlugin(): VERSION, and error objects without reaching an agent", async (t) => {
  await t.step("VERSION echoes a supported version", async () => {
    const r = await runPlugin({ CNI_COMMAND: "VERSION" }, '{"cniVersion":"0.4.0"}');
    assert.deepEqual([r.code, JSON.parse(r.stdout).cniVersion], [0, "0.4.0"]);
  });
  const env = { CNI_COMMAND: "ADD", CNI_CONTAINERID: "c1", CNI_NETNS: "/x", CNI_IFNAME: "eth0" };
  const cases: [string, Record<string, string>, string, number, RegExp][] = [
    ["no command", {}, conf(), 4, /Missing environment variable CNI_COMMAND/],
    ["bad ifname", { ...env, CNI_IFNAME: "a/b" }, conf(), 4, /Invalid CNI_IFNAME "a\/b"/],
    ["relative netns", { ...env, CNI_NETNS: "x" }, conf(), 4, /Invalid CNI_NETNS "x"/],
    ["bad CNI_ARGS", { ...env, CNI_ARGS: "novalue" }, conf(), 4, /"novalue" is not KEY=VALUE/],
    ["not JSON", env, "{", 6, /not JSON/],
    ["bad labels", env, conf({ args: { cni: { labels: [{ key: 1 }] } } }), 7, /args\.cni\.labels/],
    [
      "CHECK on 0.3.1",
      { ...env, CNI_COMMAND: "CHECK" },
      conf({ cniVersion: "0.3.1" }),
      1,
      /0\.4\.0/,
    ],
    ["GC on 1.0.0", { CNI_COMMAND: "GC" }, conf(), 1, /GC needs cniVersion 1\.1\.0/],
  ];
  for (const [name, e, stdin, code, msg] of cases) {
    await t.step(name, async () => {
      const r = await runPlugin(e, stdin);
      const out = JSON.parse(r.stdout);
      assert.equal(r.code, 1);
      assert.equal(out.code, code, r.stdout);
      assert.match(out.msg, msg);
      assert.ok(typeof out.cniVersion === "string");
    });
  }
});

Deno.test("the plugin's bundle: one module from agent/cni/ alone, importing nothing", async () => {
  const { text, inputs } = await buildCniBundle({ write: false });
  // bin/cilia-cni runs the bundle only while no agent/cni/*.ts is newer: that covers every input.
  assert.deepEqual(inputs.filter((f) => !/^agent\/cni\/[^/]+\.ts$/.test(f)), [], String(inputs));
  assert.ok(inputs.includes("agent/cni/plugin.ts"), String(inputs));
  assert.doesNotMatch(text, /^\s*import\b|\bimport\(/m, "no import left: no npm package, no file");
  const file = await Deno.makeTempFile({ suffix: ".js" });
  try {
    await Deno.writeTextFile(file, text);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--quiet", "-A", "--no-config", file],
      env: { CNI_COMMAND: "VERSION" },
      stdin: "piped",
      stdout: "piped",
    }).spawn();
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode('{"cniVersion":"0.4.0"}'));
    await w.close();
    const out = await child.output();
    assert.equal(out.code, 0);
    assert.equal(JSON.parse(new TextDecoder().decode(out.stdout)).cniVersion, "0.4.0");
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("CNI_ARGS and labels: the conventions' labels, then CILIA_LABELS", () => {
  const args = parseCniArgs("IgnoreUnknown=1;K8S_POD_NAME=web;CILIA_LABELS=app=web,tier=1;X=y");
  assert.equal(args.get("K8S_POD_NAME"), "web");
  assert.throws(() => parseCniArgs("X=y"), /unknown key "X"/);
  const c = parseNetworkConfig(
    conf({ args: { cni: { labels: [{ key: "app", value: "old" }, { key: "env", value: "p" }] } } }),
  );
  assert.deepEqual(labelsOf(c, args), { app: "web", env: "p", tier: "1" });
});

Deno.test("convertResult(): 1.1 as is, 1.0 without mtu, older versions name each IP's family", () => {
  const r: CniResult = {
    cniVersion: "1.0.0",
    interfaces: [{ name: "lxc1", mtu: 1450 }, { name: "eth0", mtu: 1450, sandbox: "/run/netns/p" }],
    ips: [{ address: "10.0.0.2/32", gateway: "10.0.0.1", interface: 1 }, {
      address: "fd00::2/128",
    }],
    routes: [],
    dns: {},
  };
  assert.equal(convertResult(r, "1.1.0").cniVersion, "1.1.0");
  assert.deepEqual(convertResult(r, "1.1.0").interfaces, r.interfaces);
  const made = cniResult({
    hostIfname: "lxc1",
    ifname: "eth0",
    sandbox: "/run/netns/p",
    mtu: 1450,
  });
  assert.deepEqual(made.interfaces, r.interfaces, "cniResult() gives both interfaces the MTU");
  for (const v of ["1.0.0", "0.4.0", "0.3.1"]) {
    assert.deepEqual(convertResult(r, v).interfaces, [{ name: "lxc1" }, {
      name: "eth0",
      sandbox: "/run/netns/p",
    }], `no mtu in a ${v} result`);
  }
  assert.deepEqual(
    (convertResult(r, "0.3.1").ips as { version: string }[]).map((i) => i.version),
    ["4", "6"],
  );
});

Deno.test("endpointName(): DNS-safe pod names, or one from the container id", () => {
  assert.equal(endpointName("Web_Server.1", "x"), "web-server-1");
  assert.equal(endpointName("--", "ABCdef0123456789"), "cni-abcdef012345");
  assert.equal(endpointName(undefined, "c1"), "cni-c1");
});

const entry = (o: Partial<MapStateEntry>): MapStateEntry => ({
  direction: "ingress",
  identity: 1000,
  proto: 6,
  portLo: 80,
  portHi: 80,
  verdict: "allow",
  cookie: 0,
  ...o,
} as MapStateEntry);

Deno.test("EndpointPolicyState: shared blocks stay until their last entry goes", () => {
  const s = new EndpointPolicyState(7);
  const a = entry({ portLo: 80, portHi: 81 }); // block 80/15
  const b = entry({ portLo: 80, portHi: 82 }); // blocks 80/15 and 82/16
  const p1 = s.plan({ adds: [a, b], deletes: [] });
  assert.equal(p1.updates.length, 2);
  p1.commit();
  const p2 = s.plan({ adds: [], deletes: [b] });
  assert.equal(p2.updates.length, 0);
  assert.equal(p2.deletes.length, 1, "only 82/16 goes; 80/15 is still a's");
  p2.commit();
  const stale = s.plan({ adds: [], deletes: [] }, {
    full: true,
    stale: p1.updates.map((u) => u.key),
  });
  assert.deepEqual(stale.updates.map((u) => keyId(u.key)), [keyId(p1.updates[0]!.key)]);
  assert.equal(stale.deletes.length, 1, "the stale 82/16 key is deleted");
  const changed = s.plan({ adds: [{ ...a, verdict: "deny" }], deletes: [] });
  assert.equal(changed.updates.length, 1, "a new verdict rewrites the key");
  assert.equal(changed.deletes.length, 0);
});
