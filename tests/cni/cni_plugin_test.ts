// `bin/cilia-cni` driven by a CNI runtime harness exactly as the spec says (a netns per pod, the
// CNI_* environment, the network configuration on stdin) against a real agent with the kernel
// datapath in a lab node: VERSION, ADD (result, addresses, routes, the endpoint, policy in force
// before ADD returns), CHECK, DEL (idempotent, also after the netns is gone), GC and STATUS
// (1.1), old result versions, and the spec's error object for every kind of failure. Needs root.
import assert from "node:assert/strict";
import { CiliaNode, dropText, execCni, NETWORK } from "./_fixture.ts";
import { needsRoot } from "../helpers/root.ts";
import { hostIfnameFor, linkLocalFor } from "../../agent/endpoint/netdev.ts";

const DB_POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`;

const sh = async (argv: string[]) => {
  const o = await new Deno.Command(argv[0]!, { args: argv.slice(1), stderr: "piped" }).output();
  return { code: o.code, out: new TextDecoder().decode(o.stdout) };
};

function assertErrorObject(
  r: { code: number; json: Record<string, unknown>; stdout: string },
  code: number,
  msg: RegExp,
) {
  assert.equal(r.code, 1, `exit code: ${r.stdout}`);
  assert.equal(r.json.code, code, r.stdout);
  assert.equal(typeof r.json.cniVersion, "string");
  assert.match(String(r.json.msg), msg);
}

Deno.test({
  name: "cilia-cni: a spec runtime harness against the agent in a lab node",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  await using n = await CiliaNode.create();

  await t.step("VERSION answers the supported versions", async () => {
    const r = await n.cni("VERSION", { config: { cniVersion: "1.0.0" } });
    assert.equal(r.code, 0);
    assert.deepEqual(r.json, {
      cniVersion: "1.0.0",
      supportedVersions: ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    });
  });

  await t.step("ADD: result, addresses and routes in the pod, the endpoint", async () => {
    const pod = await n.addPod("client", { app: "client", tier: "web" });
    const r = pod.result;
    assert.equal(r.cniVersion, "1.0.0");
    assert.match(r.interfaces[0].name, /^lxc[0-9a-f]{11}$/);
    assert.match(r.interfaces[0].mac, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    assert.deepEqual(
      { name: r.interfaces[1].name, sandbox: r.interfaces[1].sandbox },
      { name: "eth0", sandbox: `/run/netns/${pod.netns}` },
    );
    assert.deepEqual(r.ips, [
      { address: `${pod.ipv4}/32`, gateway: "10.200.0.1", interface: 1 },
      { address: `${pod.ipv6}/128`, gateway: "fe80::1", interface: 1 },
    ]);
    assert.deepEqual(r.routes, [{ dst: "0.0.0.0/0", gw: "10.200.0.1" }, {
      dst: "::/0",
      gw: "fe80::1",
    }]);
    assert.deepEqual(r.dns, {});
    const addrs = JSON.parse(await n.lab.run(pod.netns, ["ip", "-j", "addr", "show", "eth0"]));
    const local = addrs[0].addr_info.map((a: { local: string }) => a.local);
    assert.ok(local.includes(pod.ipv4) && local.includes(pod.ipv6), JSON.stringify(local));
    assert.equal(addrs[0].address, r.interfaces[1].mac);
    // The pod's link-local address is the kernel's (from the MAC) and usable at once (no DAD).
    const ll = addrs[0].addr_info.filter((a: { scope: string }) => a.scope === "link").map((
      a: { local: string; tentative?: boolean; dadfailed?: boolean },
    ) => ({ local: a.local, tentative: a.tentative ?? a.dadfailed ?? false }));
    assert.deepEqual(ll, [{ local: linkLocalFor(r.interfaces[1].mac), tentative: false }]);
    const routes = await n.lab.run(pod.netns, ["ip", "route"]);
    assert.match(routes, /default via 10\.200\.0\.1 dev eth0/);
    assert.match(await n.lab.run(pod.netns, ["ip", "-6", "route"]), /default via fe80::1 dev eth0/);
    const ep = (await n.call("GET", "/v1/endpoint/default/client")).body;
    assert.equal(ep.containerId, pod.containerId);
    assert.equal(ep.ifname, r.interfaces[0].name);
    assert.equal(ep.network, NETWORK);
    assert.deepEqual(ep.labels, { app: "client", tier: "web" });
    assert.equal(ep.state, "ready");
    assert.ok(await n.ping(pod.netns, "10.200.0.1"), "the pod reaches its gateway");
    // IPv6 without neighbour discovery: the host side has no IPv6 address (its only IPv6 route
    // is the pod's /128: the link's multicast one is deleted); both ends know each other's MAC.
    const host = r.interfaces[0];
    const node = (argv: string[]) => n.lab.run(n.node.netns, argv);
    const hostAddrs = JSON.parse(await node(["ip", "-j", "-6", "addr", "show", "dev", host.name]));
    assert.deepEqual(hostAddrs[0]?.addr_info ?? [], [], "no IPv6 address on the host side");
    // The kernel may make the multicast route only after the link-up batch (its link watch):
    // the agent then deletes it from _late_multicast.ts, 100 ms later and on with backoff.
    const routesOf = async () => {
      const text = await node(["ip", "-6", "route", "show", "table", "all", "dev", host.name]);
      return {
        text,
        routes: text.trim().split("\n").map((l) => l.replace(/ (src|proto|table|metric) .*/, "")),
      };
    };
    let hostRoutes = await routesOf();
    for (let t = 0; t < 50 && hostRoutes.routes.length > 1; t++) {
      await new Promise((r) => setTimeout(r, 100));
      hostRoutes = await routesOf();
    }
    assert.deepEqual(hostRoutes.routes, [pod.ipv6], hostRoutes.text);
    const neigh = async (run: (a: string[]) => Promise<string>, dev: string) =>
      JSON.parse(await run(["ip", "-j", "-6", "neigh", "show", "dev", dev])).map((
        e: { dst: string; lladdr: string; state: string[] },
      ) => [e.dst, e.lladdr, e.state.join()]);
    assert.deepEqual(
      (await neigh(node, host.name)).filter((e: string[]) => e[0] === pod.ipv6),
      [[pod.ipv6, r.interfaces[1].mac, "PERMANENT"]],
    );
    const inPod = (argv: string[]) => n.lab.run(pod.netns, argv);
    assert.deepEqual(
      (await neigh(inPod, "eth0")).filter((e: string[]) => e[0] === "fe80::1"),
      [["fe80::1", host.mac, "PERMANENT"]],
    );
    assert.ok(await n.ping(pod.netns, "fd00:200::1"), "the pod reaches the IPv6 gateway");
    assert.ok(await n.ping(n.node.netns, pod.ipv6), "the node reaches the pod over IPv6");
    const again = await n.cni("ADD", {
      containerId: pod.containerId,
      netns: `/run/netns/${pod.netns}`,
      args: "K8S_POD_NAME=client",
    });
    assert.equal(again.code, 0, again.stdout);
    assert.deepEqual(again.json.ips, r.ips, "a retried ADD returns the same attachment");
    const elsewhere = await n.cni("ADD", {
      containerId: pod.containerId,
      netns: `/run/netns/${n.node.netns}`,
    });
    assert.equal(elsewhere.json.code, 999);
    assert.match(elsewhere.json.msg, /already has interface "eth0".*DEL it first/);
  });

  await t.step("policy is in force before ADD returns", async () => {
    await n.policy(DB_POLICY);
    const db = await n.addPod("db", { app: "db" });
    const client = (await n.call("GET", "/v1/endpoint/default/client")).body;
    const dbEp = (await n.call("GET", "/v1/endpoint/default/db")).body;
    // The very first packets after ADD: a ping that no rule allows is dropped (reason 133).
    const { result: pinged, events } = await n.withEvents(
      () => n.ping(`${n.lab.prefix}client`, db.ipv4, 0.5),
      { until: (e) => e.type === "drop" },
    );
    assert.equal(pinged, false, "ICMP to db is denied");
    const drop = events.find((e) => e.type === "drop");
    assert.ok(drop, `a drop event: ${events.map(dropText).join("; ")}`);
    assert.deepEqual(
      [drop.subtype, drop.direction, drop.srcIdentity, drop.dstIdentity, drop.epId],
      [133, "ingress", client.identity, dbEp.identity, dbEp.id],
      dropText(drop),
    );
    await n.peer(db.netns).listen("tcp", 5432);
    assert.ok(await n.peer(`${n.lab.prefix}client`).probe("tcp", db.ipv4, 5432, 3000));
    assert.ok(await n.ping(n.node.netns, db.ipv4), "the node itself is allowed (allow-localhost)");
  });

  await t.step(
    "CHECK: ok, then errors for a missing address and an unknown container",
    async () => {
      const ep = (await n.call("GET", "/v1/endpoint/default/db")).body;
      const call = {
        containerId: ep.containerId,
        netns: ep.netns,
        config: {
          cniVersion: "1.0.0",
          name: NETWORK,
          type: "cilia-cni",
          agentSocket: n.socket,
          prevResult: { cniVersion: "1.0.0", ips: [{ address: `${ep.ipv4}/32` }] },
        },
      };
      const ok = await n.cni("CHECK", call);
      assert.equal(ok.code, 0, ok.stdout);
      assert.equal(ok.stdout, "");
      const unknown = await n.cni("CHECK", { ...call, containerId: "nope" });
      assertErrorObject(unknown, 3, /No attachment of container "nope"/);
      await n.lab.run(`${n.lab.prefix}db`, ["ip", "addr", "del", `${ep.ipv4}/32`, "dev", "eth0"]);
      const bad = await n.cni("CHECK", call);
      assertErrorObject(
        bad,
        999,
        new RegExp(`lacks its address ${ep.ipv4.replaceAll(".", "\\.")}`),
      );
    },
  );

  await t.step("DEL is idempotent: twice, and after the netns is gone", async () => {
    const ep = (await n.call("GET", "/v1/endpoint/default/db")).body;
    const call = { containerId: ep.containerId, netns: ep.netns };
    for (let i = 0; i < 2; i++) {
      const r = await n.cni("DEL", call);
      assert.equal(r.code, 0, r.stdout);
      assert.equal(r.stdout, "");
    }
    assert.equal((await n.call("GET", "/v1/endpoint/default/db")).status, 404);
    assert.equal((await n.lab.exec(n.node.netns, ["ip", "link", "show", ep.ifname])).code, 1);
    const ipam = (await n.call("GET", "/v1/ipam")).body;
    assert.ok(!ipam.allocations.some((a: { ip: string }) => a.ip === ep.ipv4), "IPv4 released");

    const gone = await n.addPod("gone", { app: "gone" });
    await sh(["ip", "netns", "del", gone.netns]);
    const r = await n.cni("DEL", {
      containerId: gone.containerId,
      netns: `/run/netns/${gone.netns}`,
    });
    assert.equal(r.code, 0, r.stdout);
    assert.equal((await n.call("GET", "/v1/endpoint/default/gone")).status, 404);
    const never = await n.cni("DEL", { containerId: "never-added", netns: "" });
    assert.equal(never.code, 0, never.stdout);
  });

  await t.step("ADD replaces a host side an interrupted ADD left behind", async () => {
    const netns = `${n.lab.prefix}left`;
    await sh(["ip", "netns", "add", netns]);
    const containerId = "left-1";
    const host = await hostIfnameFor(containerId, "eth0");
    // What an ADD cut short after `ip link add` leaves: the host side, its peer in the node.
    await n.lab.run(n.node.netns, [
      "ip",
      "link",
      "add",
      host,
      "type",
      "veth",
      "peer",
      "name",
      "qa15left",
    ]);
    const r = await n.cni("ADD", { containerId, netns: `/run/netns/${netns}` });
    assert.equal(r.code, 0, r.stdout);
    assert.equal(r.json.interfaces[0].name, host);
    assert.equal((await n.lab.exec(n.node.netns, ["ip", "link", "show", "qa15left"])).code, 1);
    assert.equal((await n.cni("DEL", { containerId, netns: `/run/netns/${netns}` })).code, 0);
  });

  await t.step("CNI_ARGS namespace and a pod name made DNS-safe; a 0.4.0 result", async () => {
    await sh(["ip", "netns", "add", `${n.lab.prefix}legacy`]);
    const r = await n.cni("ADD", {
      containerId: "legacy-1",
      netns: `/run/netns/${n.lab.prefix}legacy`,
      args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=Web_Server.1",
      config: { cniVersion: "0.4.0", name: NETWORK, type: "cilia-cni", agentSocket: n.socket },
    });
    assert.equal(r.code, 0, r.stdout);
    assert.equal(r.json.cniVersion, "0.4.0");
    assert.deepEqual(r.json.ips.map((i: { version: string }) => i.version), ["4", "6"]);
    const ep = (await n.call("GET", "/v1/endpoint/prod/web-server-1")).body;
    assert.equal(ep.namespace, "prod");
    assert.ok(ep.identityLabels.includes("k8s:io.kubernetes.pod.namespace=prod"));
  });

  await t.step("GC (1.1.0) deletes the attachments that are not valid; STATUS", async () => {
    const keep = await n.addPod("keep", { app: "keep" });
    const v11 = { cniVersion: "1.1.0", name: NETWORK, type: "cilia-cni", agentSocket: n.socket };
    const gc = await n.cni("GC", {
      config: {
        ...v11,
        "cni.dev/valid-attachments": [
          { containerID: keep.containerId, ifname: "eth0" },
          {
            containerID: (await n.call("GET", "/v1/endpoint/default/client")).body.containerId,
            ifname: "eth0",
          },
        ],
      },
    });
    assert.equal(gc.code, 0, gc.stdout);
    const names = ((await n.call("GET", "/v1/endpoint")).body as { name: string }[])
      .map((e) => e.name).sort();
    assert.deepEqual(names, ["client", "keep"]);
    const status = await n.cni("STATUS", { config: v11 });
    assert.equal(status.code, 0, status.stdout);
  });

  await t.step("parallel ADDs get distinct endpoints, addresses and interfaces", async () => {
    const pods = await Promise.all(["p1", "p2", "p3", "p4"].map((p) => n.addPod(p, { app: p })));
    assert.equal(new Set(pods.map((p) => p.ipv4)).size, 4);
    assert.equal(new Set(pods.map((p) => p.result.interfaces[0].name)).size, 4);
    for (const p of pods) assert.ok(await n.ping(p.netns, "10.200.0.1"), `${p.name} is wired`);
    await Promise.all(pods.map((p) => n.delPod(p)));
  });

  await t.step("parallel ADDs of the same container are one: same result for all", async () => {
    const netns = `${n.lab.prefix}same`;
    assert.equal((await sh(["ip", "netns", "add", netns])).code, 0);
    const call = {
      containerId: "same-1",
      netns: `/run/netns/${netns}`,
      args: "CILIA_LABELS=app=same",
    };
    const runs = await Promise.all([1, 2, 3, 4].map(() => n.cni("ADD", call)));
    for (const r of runs) assert.equal(r.code, 0, `every ADD succeeds: ${r.stdout}${r.stderr}`);
    assert.equal(new Set(runs.map((r) => JSON.stringify(r.json.ips))).size, 1, "one result");
    const eps = ((await n.call("GET", "/v1/endpoint")).body as { containerId?: string }[])
      .filter((e) => e.containerId === "same-1");
    assert.equal(eps.length, 1, "one endpoint");
    assert.equal((await n.cni("DEL", call)).code, 0);
  });

  await t.step("errors: the spec's error object and code", async () => {
    const cfg = { cniVersion: "1.0.0", name: NETWORK, type: "cilia-cni", agentSocket: n.socket };
    const add = { containerId: "e1", netns: `/run/netns/${n.lab.prefix}client` };
    assertErrorObject(await n.cni("ADD", { ...add, config: "{not json" }), 6, /not JSON/);
    assertErrorObject(await n.cni("ADD", { ...add, config: "" }), 6, /stdin is empty/);
    assertErrorObject(
      await n.cni("ADD", { ...add, config: { ...cfg, cniVersion: "9.9.9" } }),
      1,
      /Incompatible CNI version "9\.9\.9"/,
    );
    assertErrorObject(
      await n.cni("ADD", { ...add, config: { ...cfg, ipam: { type: "host-local" } } }),
      2,
      /Unsupported field "ipam"/,
    );
    assertErrorObject(
      await n.cni("ADD", { ...add, config: { cniVersion: "1.0.0", type: "cilia-cni" } }),
      7,
      /Invalid network configuration: missing field "name"/,
    );
    assertErrorObject(
      await n.cni("ADD", {
        config: cfg,
        env: { CNI_COMMAND: "ADD", CNI_NETNS: add.netns, CNI_IFNAME: "eth0" },
      }),
      4,
      /Missing environment variable CNI_CONTAINERID/,
    );
    assertErrorObject(
      await n.cni("ADD", { config: cfg, env: { CNI_COMMAND: "FLY" } }),
      4,
      /Invalid CNI_COMMAND "FLY"/,
    );
    assertErrorObject(
      await n.cni("ADD", { ...add, args: "K8S_POD_NAME=x;COLOUR=red" }),
      4,
      /unknown key "COLOUR"/,
    );
    assertErrorObject(
      await n.cni("ADD", { ...add, containerId: "e2", netns: "/run/netns/does-not-exist" }),
      3,
      /"\/run\/netns\/does-not-exist" does not exist/,
    );
    assertErrorObject(
      await n.cni("ADD", { ...add, containerId: "e3", args: "CILIA_LABELS=app=a b" }),
      7,
      /Invalid pod metadata: labels/,
    );
    const file = `${n.dir}/not-a-netns`;
    await Deno.writeTextFile(file, "");
    assertErrorObject(
      await n.cni("ADD", { ...add, containerId: "e4", netns: file }),
      4,
      /is not a network namespace/,
    );
    assertErrorObject(
      await n.cni("ADD", { ...add, containerId: "e5", ifname: "lo" }),
      4,
      /already has an interface "lo"/,
    );
    assertErrorObject(
      await n.cni("ADD", { ...add, containerId: "e6" }),
      4,
      /already has an interface "eth0"/,
    );
    assertErrorObject(
      await n.cni("ADD", { ...add, containerId: "e7", ifname: "a/b" }),
      4,
      /Invalid CNI_IFNAME "a\/b"/,
    );
    const down = `${n.dir}/nobody.sock`;
    assertErrorObject(
      await execCni("ADD", add, down),
      11,
      /Cannot reach the cilia agent at unix:\/\/.*nobody\.sock: no such socket/,
    );
    const status = await execCni("STATUS", {
      config: { cniVersion: "1.1.0", name: NETWORK, type: "cilia-cni", agentSocket: down },
    }, down);
    assertErrorObject(status, 50, /Cannot reach the cilia agent/);
    const eps = ((await n.call("GET", "/v1/endpoint")).body as { name: string }[]).length;
    assert.equal(eps, 2, "failed ADDs left no endpoint behind");
  });
});

Deno.test({
  name: "cilia-cni: a DEL while the agent is down is queued and replayed when it starts",
  ...needsRoot(),
  sanitizeResources: false,
}, async () => {
  await using n = await CiliaNode.create();
  const pod = await n.addPod("queued", { app: "queued" });
  const before = (await n.call("GET", "/v1/endpoint")).body as { name: string }[];
  assert.deepEqual(before.map((e) => e.name), ["queued"]);
  assert.equal(await n.stopAgent(), 0);

  const del = await n.delPod(pod);
  assert.equal(del.code, 0, `DEL with the agent down succeeds: ${del.stdout}`);
  const queue = `${n.dir}/cni-delete-queue`;
  const files = [...Deno.readDirSync(queue)].map((e) => e.name);
  assert.equal(files.length, 1, `one queued DEL: ${files}`);
  // A second DEL of the same attachment replaces the queued one.
  assert.equal((await n.delPod(pod)).code, 0);
  assert.equal([...Deno.readDirSync(queue)].length, 1);

  await n.startAgent();
  const after = (await n.call("GET", "/v1/endpoint")).body as unknown[];
  assert.deepEqual(after, [], "the queued DEL removed the endpoint");
  assert.deepEqual([...Deno.readDirSync(queue)], [], "the queue is drained");
  assert.match(n.log, /"msg":"replayed a queued CNI DEL"/);
  const link = await new Deno.Command("ip", {
    args: ["-n", n.node.netns, "-o", "link", "show", pod.result.interfaces[0].name],
    stderr: "null",
    stdout: "piped",
  }).output();
  assert.notEqual(link.code, 0, "the host-side veth is gone");
});

Deno.test("linkLocalFor: the modified EUI-64 address of a MAC; a clear error for a bad one", () => {
  assert.equal(linkLocalFor("02:11:22:33:44:55"), "fe80::11:22ff:fe33:4455");
  assert.equal(linkLocalFor("aa:bb:cc:dd:ee:ff"), "fe80::a8bb:ccff:fedd:eeff");
  assert.throws(() => linkLocalFor("02:11:22:33:44"), /"02:11:22:33:44": not a MAC address/);
  assert.throws(() => linkLocalFor("02:11:22:33:44:zz"), /not a MAC address/);
});
