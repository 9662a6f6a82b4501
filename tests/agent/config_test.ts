// The agent's configuration: defaults, a YAML or JSON file with the flags' keys, flags winning
// over the file, durations, and errors that name the key; the executable's exit codes.

import assert from "node:assert/strict";
import { ConfigError, loadConfig, resolveConfig } from "../../agent/config.ts";
import { root } from "./_fixture.ts";
import { isRoot } from "../helpers/root.ts";

Deno.test("config: defaults follow the issue", () => {
  const c = resolveConfig({ nodeName: "n1" });
  assert.equal(c.stateDir, "/var/lib/cilia");
  assert.equal(c.socket, "/var/run/cilia/cilia.sock");
  assert.equal(c.kvstore, "denokv:///var/lib/cilia/kv.sqlite");
  assert.equal(c.metricsAddr, undefined);
  assert.deepEqual(c.identityRange, { min: 256, max: 65535 });
  assert.equal(c.datapath, "kernel");
  assert.equal(c.bpffsRoot, "/sys/fs/bpf/cilia");
  assert.equal(resolveConfig({}).nodeName, Deno.hostname().toLowerCase());
});

Deno.test("config: --l7-http-io picks who serves HTTP/1.1 redirects (default: the Worker)", async () => {
  assert.equal(resolveConfig({ nodeName: "n1" }).l7HttpIo, "worker");
  const { config } = await loadConfig(["--node-name", "n1", "--l7-http-io", "event-loop"]);
  assert.equal(config!.l7HttpIo, "event-loop");
  assert.throws(
    () => resolveConfig({ nodeName: "n1", l7HttpIo: "threads" as "worker" }),
    /"l7-http-io": Expected "worker" \(an epoll Worker\) or "event-loop"/,
  );
});

Deno.test("config: kernel map sizes from --bpf-*-max flags, with defaults", async () => {
  const d = resolveConfig({ nodeName: "n1" });
  assert.deepEqual([d.bpfCtMax, d.bpfPolicyMapMax, d.bpfIpcacheMax], [262144, 1 << 20, 524288]);
  const { config } = await loadConfig([
    "--node-name",
    "n1",
    "--bpf-ct-max",
    "4096",
    "--bpf-policy-map-max=16",
    "--bpf-ipcache-max",
    "65536",
  ]);
  assert.deepEqual([config!.bpfCtMax, config!.bpfPolicyMapMax, config!.bpfIpcacheMax], [
    4096,
    16,
    65536,
  ]);
});

Deno.test("config: a YAML file with the flags' keys; flags win; durations", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/agent.yaml`,
      `state-dir: ${dir}/state\nnode-name: from-file\npod-cidr: 10.1.0.0/24\nlease-ttl: 500ms\n` +
        `identity-labels: ["app$", "!.*"]\nkvstore: etcd://127.0.0.1:2379,127.0.0.1:2380\n`,
    );
    const { config } = await loadConfig([
      "--config",
      `${dir}/agent.yaml`,
      "--node-name",
      "from-flag",
    ]);
    assert.equal(config!.nodeName, "from-flag");
    assert.equal(config!.podCidr, "10.1.0.0/24");
    assert.equal(config!.leaseTtl, 0.5);
    assert.equal(config!.stateDir, `${dir}/state`);
    assert.deepEqual(config!.identityLabels, ["app$", "!.*"]);
    await Deno.writeTextFile(`${dir}/agent.json`, JSON.stringify({ "pod-cidr-v6": "fd00::/64" }));
    const json = await loadConfig(["--config", `${dir}/agent.json`, "--identity-gc-grace", "2m"]);
    assert.equal(json.config!.podCidrV6, "fd00::/64");
    assert.equal(json.config!.identityGcGrace, 120);
    assert.equal((await loadConfig(["--help"])).help, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config: masquerade, native-routing CIDR and NodePort flags", async () => {
  const d = resolveConfig({ nodeName: "n1" });
  assert.deepEqual(
    [d.enableIpv4Masquerade, d.ipv4NativeRoutingCidr, d.nodePortRange, d.nodePortMode],
    [true, undefined, { min: 30000, max: 32767 }, "snat"],
  );
  const { config } = await loadConfig([
    ...["--node-name", "n1", "--enable-ipv4-masquerade=false"],
    ...["--ipv4-native-routing-cidr", "10.0.0.0/8", "--node-port-range", "31000-31099"],
    ...["--routing-mode", "native", "--node-port-mode", "dsr"],
  ]);
  assert.deepEqual(
    [config!.enableIpv4Masquerade, config!.ipv4NativeRoutingCidr, config!.nodePortRange],
    [false, "10.0.0.0/8", { min: 31000, max: 31099 }],
  );
  assert.equal(config!.nodePortMode, "dsr");
  // The ports just outside the range, and the tunnel port in native mode (no VXLAN), are fine.
  const edge = resolveConfig({ nodePortRange: "4241-8471", clusterHealthPort: 4240 });
  assert.deepEqual([edge.clusterHealthPort, edge.tunnelPort], [4240, 8472]);
  assert.equal(
    resolveConfig({ routingMode: "native", tunnelPort: 31000 }).tunnelPort,
    31000,
  );
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ enableIpv4Masquerade: "no" }, /"enable-ipv4-masquerade": Expected "true" or "false"/],
    [{ ipv4NativeRoutingCidr: "fd00::/8" }, /"ipv4-native-routing-cidr": Expected an IPv4 CIDR/],
    [{ nodePortRange: "32767-30000" }, /"node-port-range": Expected 1 <= min <= max <= 65535/],
    [{ nodePortRange: "30000" }, /"node-port-range": Expected "min-max"/],
    [{ nodePortMode: "hybrid" }, /"node-port-mode": Expected "snat"/],
    [{ nodePortMode: "dsr" }, /"node-port-mode": dsr needs --routing-mode native/],
    // A UDP NodePort could take the health or tunnel port: both values are named.
    [
      { clusterHealthPort: 30500 },
      /"cluster-health-port": 30500 is inside "node-port-range" 30000-32767: a UDP NodePort/,
    ],
    [
      { clusterHealthPort: "4240", nodePortRange: "4000-4999" },
      /"cluster-health-port": 4240 is inside "node-port-range" 4000-4999/,
    ],
    [{ tunnelPort: 31000 }, /"tunnel-port": 31000 is inside "node-port-range" 30000-32767/],
    [
      { tunnelPort: "8472", nodePortRange: "8472-8472" },
      /"tunnel-port": 8472 is inside "node-port-range" 8472-8472/,
    ],
  ];
  for (const [raw, message] of cases) {
    assert.throws(
      () => resolveConfig(raw),
      (e: Error) => e instanceof ConfigError && message.test(e.message),
      String(message),
    );
  }
});

Deno.test("config: --devices names one underlay device", async () => {
  assert.equal(resolveConfig({ nodeName: "n1" }).devices, undefined);
  const { config } = await loadConfig(["--node-name", "n1", "--devices", "eth1"]);
  assert.equal(config!.devices, "eth1");
  for (const devices of ["eth0,eth1", "", "a-name-longer-than-15"]) {
    assert.throws(
      () => resolveConfig({ devices }),
      (e: Error) =>
        e instanceof ConfigError &&
        /"devices": Expected one interface name such as eth0/.test(e.message),
      devices,
    );
  }
});

Deno.test("config: --cluster-health-port (default 4240, Cilium's) is a UDP port", async () => {
  assert.equal(resolveConfig({ nodeName: "n1" }).clusterHealthPort, 4240);
  const { config } = await loadConfig(["--node-name", "n1", "--cluster-health-port", "4250"]);
  assert.equal(config!.clusterHealthPort, 4250);
  assert.equal(
    resolveConfig({ clusterHealthPort: 8472, routingMode: "native" }).clusterHealthPort,
    8472,
  );
  const cases: [unknown, RegExp][] = [
    ["abc", /"cluster-health-port": Expected a UDP port from 1 to 65535, not "abc"/],
    [0, /"cluster-health-port": Expected a UDP port from 1 to 65535, not 0/],
    ["65536", /"cluster-health-port": Expected a UDP port .*, not "65536"/],
    [4240.5, /"cluster-health-port": Expected a UDP port/],
    [true, /"cluster-health-port": Expected a UDP port from 1 to 65535/],
    [8472, /"cluster-health-port": 8472 is the tunnel port too/],
  ];
  for (const [clusterHealthPort, message] of cases) {
    assert.throws(
      () => resolveConfig({ clusterHealthPort }),
      (e: Error) => e instanceof ConfigError && message.test(e.message),
      String(message),
    );
  }
});

Deno.test("config: --mtu (0 = the underlay device's) leaves IPv6 pods 1280", async () => {
  assert.equal(resolveConfig({ nodeName: "n1" }).mtu, 0);
  assert.equal((await loadConfig(["--node-name", "n1", "--mtu", "9000"])).config!.mtu, 9000);
  assert.equal(resolveConfig({ routingMode: "native", mtu: 1280 }).mtu, 1280);
  assert.equal(resolveConfig({ mtu: 1330 }).mtu, 1330);
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ mtu: "big" }, /"mtu": .*expected number/],
    [{ mtu: 576 }, /"mtu": Expected 0 \(the underlay device's MTU\) or an MTU from 1280/],
    [{ mtu: 1500.5 }, /"mtu": Expected 0/],
    [{ mtu: 1329 }, /"mtu": 1329 leaves pods 1279 in tunnel mode .* IPv6 needs 1280/],
  ];
  for (const [raw, message] of cases) {
    assert.throws(
      () => resolveConfig(raw),
      (e: Error) => e instanceof ConfigError && message.test(e.message),
      String(message),
    );
  }
});

Deno.test("config: errors name the key and what was expected", async () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ podCidr: "10.0.0.0" }, /"pod-cidr": Expected an IPv4 CIDR such as 10.200.0.0\/24/],
    [{ podCidr: "fd00::/64" }, /"pod-cidr": Expected an IPv4 CIDR/],
    [{ podCidrV6: "10.0.0.0/8" }, /"pod-cidr-v6": Expected an IPv6 CIDR/],
    [{ podCidr: "10.0.0.0/31" }, /longer than \/30/],
    [{ kvstore: "redis://x" }, /"kvstore": Expected "denokv:/],
    [{ metricsAddr: "9962" }, /"metrics-addr": Expected "host:port"/],
    [{ leaseTtl: "soon" }, /"lease-ttl": Expected a duration/],
    [{ logLevel: "loud" }, /"log-level"/],
    [{ nodeName: "Node_1" }, /"node-name": Expected a lower-case DNS name/],
    [{ colour: "red" }, /Unknown key "colour"/],
    [{ datapath: "ebpf" }, /"datapath": Expected "kernel" \(the eBPF datapath\) or "none"/],
    [{ bpffsRoot: "bpf" }, /"bpffs-root": Expected an absolute path on a bpffs/],
    [{ bpfCtMax: "100" }, /"bpf-ct-max": .*1024/],
    [{ bpfIpcacheMax: "lots" }, /"bpf-ipcache-max"/],
    [{ bpfPolicyMapMax: 2 ** 30 }, /"bpf-policy-map-max"/],
  ];
  for (const [raw, message] of cases) {
    assert.throws(
      () => resolveConfig(raw),
      (e: Error) => e instanceof ConfigError && message.test(e.message),
    );
  }
  await assert.rejects(() => loadConfig(["--bogus"]), /Unknown option '--bogus'/);
  await assert.rejects(
    () => loadConfig(["--config", "/nonexistent.yaml"]),
    /Cannot read config file "\/nonexistent.yaml"/,
  );
});

Deno.test("cilia-agent: bad flags exit 2 naming the problem; --help exits 0", async () => {
  const run = (args: string[]) =>
    new Deno.Command(`${root}bin/cilia-agent`, { args, env: { CILIA_DENO: Deno.execPath() } })
      .output();
  const [bad, help] = await Promise.all([run(["--pod-cidr", "nope"]), run(["--help"])]);
  assert.equal(bad.code, 2);
  assert.match(
    new TextDecoder().decode(bad.stderr),
    /cilia-agent: Invalid agent configuration: "pod-cidr"/,
  );
  assert.equal(help.code, 0);
  assert.match(new TextDecoder().decode(help.stdout), /--pod-cidr CIDR/);
  assert.match(new TextDecoder().decode(help.stdout), /--cluster-health-port N .*default 4240/s);
});

Deno.test("cilia-agent: the kernel datapath without a bpffs is a clear startup error", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cilia-nobpffs-" });
  try {
    const o = await new Deno.Command(`${root}bin/cilia-agent`, {
      args: ["--state-dir", `${dir}/state`, "--socket", `${dir}/s.sock`, "--node-name", "n1"]
        .concat(["--datapath", "kernel", "--bpffs-root", `${dir}/bpf`]),
      env: { CILIA_DENO: Deno.execPath() },
    }).output();
    assert.equal(o.code, 1);
    const log = new TextDecoder().decode(o.stderr);
    assert.match(
      log,
      isRoot()
        ? /Cannot load the kernel datapath: \\"[^"]*\/bpf\\" is not on a bpffs\\nhint: mount one/
        : /Cannot load the kernel datapath: the agent lacks CAP_BPF/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config: --bpf-lb-sock and --cgroup-root", async () => {
  const d = resolveConfig({ nodeName: "n1" });
  assert.deepEqual([d.bpfLbSock, d.cgroupRoot], [false, undefined]);
  const { config } = await loadConfig([
    ...["--node-name", "n1", "--bpf-lb-sock", "true"],
    ...["--cgroup-root", "/sys/fs/cgroup/unified/"],
  ]);
  assert.deepEqual([config!.bpfLbSock, config!.cgroupRoot], [true, "/sys/fs/cgroup/unified"]);
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ bpfLbSock: "yes" }, /"bpf-lb-sock": Expected "true" or "false"/],
    [{ cgroupRoot: "sys/fs/cgroup" }, /"cgroup-root": Expected an absolute path to a cgroup v2/],
    [{ cgroupRoot: "" }, /"cgroup-root": Expected an absolute path/],
  ];
  for (const [raw, re] of cases) assert.throws(() => resolveConfig(raw), re);
});
