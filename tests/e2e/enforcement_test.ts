// Enforcement with real packets between pods that got their network from the CNI plugin, and an
// external host on 203.0.113.0/24: the agent runs with the kernel datapath in a lab node, policies
// go in through the live API (and `bin/cilia policy import` once), and every verdict is a TCP
// connect, a UDP exchange or a ping. Label-based L3, default deny once selected, ingress and
// egress, ports, port ranges and protocols, CIDR allow/deny with except, deny precedence,
// entities, namespaces, IPv6, and policy changes on an established connection; drops carry
// reason 133/181 and both identities, and /v1/metrics counts them. Needs root.
import assert from "node:assert/strict";
import type { PacketEvent } from "../../agent/datapath/events.ts";
import { CiliaNode, dropText, root, type TestPod } from "../cni/_fixture.ts";
import { needsRoot } from "../helpers/root.ts";

const OK_MS = 3000, DENY_MS = 400; // OK_MS bounds connections that must pass: generous

const cnp = (name: string, spec: string, ns = "default") =>
  `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}, namespace: ${ns}}
spec:
${spec.replace(/^/gm, "  ")}
`;

Deno.test({
  name: "enforcement: real packets between CNI pods and an external host",
  ...needsRoot(),
  sanitizeResources: false,
}, async (t) => {
  await using n = await CiliaNode.create({ external: true });
  const ext = n.ext!;
  // A second external address, inside 203.0.113.128/25 (for except and deny ranges).
  await n.lab.run(ext.netns, ["ip", "addr", "add", "203.0.113.200/24", "dev", "eth0"]);
  const web = await n.addPod("web", { app: "web" });
  const api = await n.addPod("api", { app: "api" });
  const db = await n.addPod("db", { app: "db" });
  const other = await n.addPod("other", { app: "web" }, { namespace: "dev" });
  const id = async (p: TestPod) =>
    (await n.call("GET", `/v1/endpoint/${p.name === "other" ? "dev" : "default"}/${p.name}`))
      .body as { id: number; identity: number };
  const [webEp, apiEp, dbEp] = [await id(web), await id(api), await id(db)];

  for (const p of [web, api, db, other]) {
    for (const port of [8080, 8081, 9005, 9011]) await n.peer(p.netns).listen("tcp", port);
    for (const port of [5353, 5354]) await n.peer(p.netns).listen("udp", port);
  }
  await n.peer(ext.netns).listen("tcp", 80);
  await n.peer(n.node.netns).listen("tcp", 7000);

  const probe =
    (from: { netns: string }, proto: "tcp" | "udp", host: string, port: number) =>
    (allowed: boolean) => n.peer(from.netns).probe(proto, host, port, allowed ? OK_MS : DENY_MS);
  async function expect(
    what: string,
    from: { netns: string },
    proto: "tcp" | "udp",
    to: string,
    port: number,
    allowed: boolean,
  ) {
    assert.equal(await probe(from, proto, to, port)(allowed), allowed, what);
  }
  async function expectPing(what: string, from: { netns: string }, to: string, allowed: boolean) {
    assert.equal(await n.ping(from.netns, to, allowed ? 1 : 0.4), allowed, what);
  }
  async function expectDrop(
    what: string,
    action: () => Promise<boolean>,
    want: Partial<PacketEvent>,
  ) {
    const { result, events } = await n.withEvents(action, {
      until: (e) => e.type === "drop" && e.subtype === want.subtype,
    });
    assert.equal(result, false, `${what}: denied`);
    const drop = events.find((e) => e.type === "drop" && e.subtype === want.subtype);
    assert.ok(drop, `${what}: drop event with reason ${want.subtype}: ${events.map(dropText)}`);
    for (const [k, v] of Object.entries(want)) {
      assert.equal(drop[k as keyof PacketEvent], v, `${what}: ${k} in ${dropText(drop)}`);
    }
  }
  const reset = () => n.clearPolicies();

  await t.step("no policy: everything flows", async () => {
    await expect("web -> api", web, "tcp", api.ipv4, 8080, true);
    await expect("db -> api", db, "tcp", api.ipv4, 8080, true);
    await expectPing("web -> ext", web, ext.ipv4, true);
  });

  await t.step("label-based L3 ingress; default deny once selected (133)", async () => {
    await n.policy(cnp(
      "api-l3",
      `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]`,
    ));
    await expect("web -> api:8080", web, "tcp", api.ipv4, 8080, true);
    await expect("web -> api:8081 (L3 rule: any port)", web, "tcp", api.ipv4, 8081, true);
    await expect("web -> api udp", web, "udp", api.ipv4, 5353, true);
    await expectPing("web -> api ping (L3 rule: ICMP too)", web, api.ipv4, true);
    await expectDrop("db -> api", () => probe(db, "tcp", api.ipv4, 8080)(false), {
      subtype: 133,
      direction: "ingress",
      epId: apiEp.id,
      srcIdentity: dbEp.identity,
      dstIdentity: apiEp.identity,
      dport: 8080,
    });
    await expect("api -> db (egress not selected)", api, "tcp", db.ipv4, 8080, true);
    await reset();
  });

  await t.step("egress with bin/cilia policy import; unselected ingress stays open", async () => {
    const file = `${n.dir}/web-egress.yaml`;
    await Deno.writeTextFile(
      file,
      cnp(
        "web-egress",
        `endpointSelector: {matchLabels: {app: web}}
egress:
  - toEndpoints: [{matchLabels: {app: api}}]`,
      ),
    );
    const cli = await new Deno.Command(`${root}bin/cilia`, {
      args: ["policy", "import", file, "-H", `unix://${n.socket}`],
      env: { CILIA_DENO: Deno.execPath(), NO_COLOR: "1" },
    }).output();
    assert.equal(cli.code, 0, new TextDecoder().decode(cli.stderr));
    assert.match(new TextDecoder().decode(cli.stdout), /Imported 1 policy/);
    await expect("web -> api", web, "tcp", api.ipv4, 8080, true);
    await expectDrop("web -> db", () => probe(web, "tcp", db.ipv4, 8080)(false), {
      subtype: 133,
      direction: "egress",
      epId: webEp.id,
      srcIdentity: webEp.identity,
      dstIdentity: dbEp.identity,
    });
    await expect("db -> web (ingress not selected)", db, "tcp", web.ipv4, 8080, true);
    await reset();
  });

  await t.step("ports, port ranges and protocols (TCP, UDP, ICMP)", async () => {
    await n.policy(cnp(
      "api-l4",
      `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
      - ports:
          - {port: "8080", protocol: TCP}
          - {port: "9000", endPort: 9010, protocol: TCP}
          - {port: "5353", protocol: UDP}`,
    ));
    await expect("TCP 8080", web, "tcp", api.ipv4, 8080, true);
    await expect("TCP 9005 (in 9000-9010)", web, "tcp", api.ipv4, 9005, true);
    await expect("TCP 9011 (past the range)", web, "tcp", api.ipv4, 9011, false);
    await expect("TCP 8081", web, "tcp", api.ipv4, 8081, false);
    await expect("UDP 5353", web, "udp", api.ipv4, 5353, true);
    await expect("UDP 5354", web, "udp", api.ipv4, 5354, false);
    await expect("UDP 8080 (TCP only)", web, "udp", api.ipv4, 8080, false);
    await expectPing("ping: only L4 rules, so ICMP is dropped", web, api.ipv4, false);
    await n.policy(cnp(
      "api-icmp",
      `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    icmps: [{fields: [{family: IPv4, type: 8}]}]`,
    ));
    await expectPing("ping allowed by an ICMP rule", web, api.ipv4, true);
    await expectPing("ping from db: not allowed", db, api.ipv4, false);
    await reset();
  });

  await t.step("CIDR allow with except; deny with except; deny precedence (181)", async () => {
    await n.policy(cnp(
      "web-cidr",
      `endpointSelector: {matchLabels: {app: web}}
egress:
  - toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]`,
    ));
    await expectPing("web -> 203.0.113.10 (allowed)", web, ext.ipv4, true);
    await expect("web -> 203.0.113.10:80", web, "tcp", ext.ipv4, 80, true);
    await expectDrop(
      "web -> 203.0.113.200 (in except)",
      () => n.ping(web.netns, "203.0.113.200", 0.4),
      {
        subtype: 133,
        direction: "egress",
        srcIdentity: webEp.identity,
      },
    );
    await expect("web -> api (not a CIDR peer)", web, "tcp", api.ipv4, 8080, false);
    await reset();
    await n.policy(cnp(
      "web-cidr-deny",
      `endpointSelector: {matchLabels: {app: web}}
egress:
  - toCIDR: [203.0.113.0/24]
egressDeny:
  - toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.0/25]}]`,
    ));
    await expectPing("web -> .10 (the deny's except)", web, ext.ipv4, true);
    await expectDrop("web -> .200 (denied)", () => n.ping(web.netns, "203.0.113.200", 0.4), {
      subtype: 181,
      direction: "egress",
      srcIdentity: webEp.identity,
    });
    await reset();
    await n.policy(cnp(
      "api-from-cidr",
      `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromCIDR: [203.0.113.0/28]`,
    ));
    const from = async (src: string) =>
      (await n.lab.exec(ext.netns, ["ping", "-c1", "-W0.5", "-I", src, api.ipv4])).code === 0;
    assert.ok(await from("203.0.113.10"), "ext .10 -> api (in 203.0.113.0/28)");
    assert.ok(!(await from("203.0.113.200")), "ext .200 -> api (outside)");
    await reset();
  });

  await t.step("deny beats allow, however specific the allow", async () => {
    await n.policy(cnp(
      "api-deny",
      `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromEndpoints: [{}]
  - fromEndpoints: [{matchLabels: {app: db}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
ingressDeny:
  - fromEndpoints: [{matchLabels: {app: db}}]`,
    ));
    await expect("web -> api", web, "tcp", api.ipv4, 8080, true);
    await expectDrop("db -> api:8080", () => probe(db, "tcp", api.ipv4, 8080)(false), {
      subtype: 181,
      direction: "ingress",
      srcIdentity: dbEp.identity,
      dstIdentity: apiEp.identity,
    });
    await reset();
  });

  await t.step("entities: host and world", async () => {
    await n.policy(cnp(
      "web-host",
      `endpointSelector: {matchLabels: {app: web}}
egress:
  - toEntities: [host]`,
    ));
    await expect("web -> node (host)", web, "tcp", "10.200.0.1", 7000, true);
    await expectPing("web -> ext (world)", web, ext.ipv4, false);
    await expect("web -> api", web, "tcp", api.ipv4, 8080, false);
    await n.policy(cnp(
      "web-host",
      `endpointSelector: {matchLabels: {app: web}}
egress:
  - toEntities: [world]`,
    ));
    await expect("web -> ext (world)", web, "tcp", ext.ipv4, 80, true);
    await expect("web -> node (host is not world)", web, "tcp", "10.200.0.1", 7000, false);
    await expect("web -> api (pods are not world)", web, "tcp", api.ipv4, 8080, false);
    await n.policy(cnp(
      "api-world",
      `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromEntities: [world]`,
    ));
    assert.ok(await n.ping(ext.netns, api.ipv4, 1), "ext -> api (world)");
    await expect("db -> api", db, "tcp", api.ipv4, 8080, false);
    await expect(
      "node -> api (allow-localhost)",
      { netns: n.node.netns },
      "tcp",
      api.ipv4,
      8080,
      true,
    );
    await reset();
  });

  await t.step("namespaces: CNP selectors are namespace-local unless they name one", async () => {
    await n.policy(cnp(
      "api-ns",
      `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]`,
    ));
    await expect("default/web -> api", web, "tcp", api.ipv4, 8080, true);
    await expect("dev/other (app=web) -> api", other, "tcp", api.ipv4, 8080, false);
    await n.policy(cnp(
      "api-ns",
      `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromEndpoints: [{matchLabels: {app: web, k8s:io.kubernetes.pod.namespace: dev}}]`,
    ));
    await expect("dev/other -> api", other, "tcp", api.ipv4, 8080, true);
    await expect("default/web -> api", web, "tcp", api.ipv4, 8080, false);
    await reset();
  });

  await t.step("IPv6: pod to pod and to an IPv6 CIDR", async () => {
    await n.policy(cnp(
      "api-v6",
      `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]`,
    ));
    await expect("web -> [api]:8080", web, "tcp", api.ipv6, 8080, true);
    await expect("web -> [api]:8081", web, "tcp", api.ipv6, 8081, false);
    await expectDrop("db -> [api]:8080", () => probe(db, "tcp", api.ipv6, 8080)(false), {
      subtype: 133,
      family: 6,
      srcIdentity: dbEp.identity,
      dstIdentity: apiEp.identity,
    });
    await n.policy(cnp(
      "web-v6",
      `endpointSelector: {matchLabels: {app: web}}
egress:
  - toCIDR: [2001:db8:113::/64]`,
    ));
    await expectPing("web -> ext over IPv6 (allowed CIDR)", web, ext.ipv6, true);
    await expectPing("web -> ext over IPv4 (not in the CIDR)", web, ext.ipv4, false);
    await reset();
  });

  await t.step(
    "policy changes on established connections: a deny cuts, an allow admits",
    async () => {
      const peer = n.peer(web.netns);
      assert.ok(await peer.open("c1", api.ipv4, 8080), "connection opened");
      assert.ok(await peer.send("c1", "before", OK_MS), "echo before the deny");
      await n.policy(cnp(
        "cut",
        `endpointSelector: {matchLabels: {app: api}}
ingressDeny:
  - fromEndpoints: [{matchLabels: {app: web}}]
enableDefaultDeny: {ingress: false}`,
      ));
      assert.equal(await peer.send("c1", "after", DENY_MS), false, "the deny cuts the connection");
      await reset();
      await n.policy(cnp(
        "only-db",
        `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromEndpoints: [{matchLabels: {app: db}}]`,
      ));
      await expect("web -> api before the allow", web, "tcp", api.ipv4, 8080, false);
      await n.policy(cnp(
        "and-web",
        `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]`,
      ));
      await expect("web -> api after the allow", web, "tcp", api.ipv4, 8080, true);
      await reset();
    },
  );

  await t.step(
    "L7 rules redirect to the proxy (tests/e2e/l7_http_test.ts judges the requests); a plain L4 grant waives them",
    async () => {
      await n.policy(cnp(
        "api-l7",
        `endpointSelector: {matchLabels: {app: api}}
ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
      - ports: [{port: "8080", protocol: TCP}]
        rules: {http: [{method: GET}]}
  - fromEndpoints: [{matchLabels: {app: db}}]
    toPorts:
      - ports: [{port: "8080", protocol: TCP}]`,
      ));
      const isVerdict = (e: PacketEvent) =>
        e.type === "policy-verdict" && e.epId === apiEp.id && e.srcIdentity === webEp.identity;
      const { events } = await n.withEvents(() => probe(web, "tcp", api.ipv4, 8080)(true), {
        until: isVerdict,
      });
      const v = events.find(isVerdict);
      assert.equal(
        v?.verdict,
        "redirect",
        `web -> api:8080 goes to the proxy: ${events.map(dropText)}`,
      );
      await expect("db -> api:8080 (plain L4 grant)", db, "tcp", api.ipv4, 8080, true);
      await reset();
    },
  );

  await t.step("drops are counted on /v1/metrics by reason and direction", async () => {
    const m = await n.metrics();
    const value = (reason: string, dir: string) =>
      Number(
        new RegExp(`cilia_drop_count_total\\{direction="${dir}",reason="${reason}"\\} (\\d+)`)
          .exec(m)?.[1] ?? 0,
      );
    assert.ok(value("Policy denied", "INGRESS") > 0, m);
    assert.ok(value("Policy denied", "EGRESS") > 0, m);
    assert.ok(value("Policy denied by denylist", "INGRESS") > 0, m);
    assert.match(m, /cilia_forward_count_total\{direction="EGRESS"\} \d+/);
  });
});
