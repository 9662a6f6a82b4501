// The pure half of IPv6 services: the map plan (16-byte addresses with family 6 in every lb map,
// backend ids read back after a restart), the slot hash (IPv4 unchanged, IPv6 hashes all 16
// bytes), the Kubernetes import of dual-stack Services and IPv6 EndpointSlices, and toServices
// refs with IPv6 backends. The kernel half is tests/e2e/services_ipv6_test.ts.
import assert from "node:assert/strict";
import { lbHash } from "../../agent/service/maglev.ts";
import { LbState } from "../../agent/service/lb_state.ts";
import { decode, LAYOUTS, num } from "../../agent/datapath/codecs.ts";
import { formatIP, parseIPv6 } from "../../agent/datapath/_addr.ts";
import { normaliseService, ServiceInputSchema } from "../../agent/service/spec.ts";
import { importKubernetesServices } from "../../agent/service/k8s_import.ts";
import { policyServiceRefs } from "../../agent/service/policy_refs.ts";
import { parseBackends, parseFrontend } from "../../cli/service.ts";

const v6svc = (id: number, algorithm: "random" | "maglev" = "random") =>
  normaliseService({
    ...ServiceInputSchema.parse({
      name: "default/web6",
      algorithm,
      sessionAffinity: "ClientIP",
      frontend: { ip: "fd00:96::10", port: 80 },
      backends: [{ ip: "fd00:10::4", port: 8080 }, { ip: "fd00:10::3", port: 8080 }],
    }),
    id,
  });

Deno.test("LbState plans IPv6 services with family 6 and keeps their backend ids", () => {
  const s = new LbState();
  const plan = s.plan([v6svc(3, "maglev")]);
  const rows = (map: string) => plan.writes.find((w) => w.map === map)!.updates;
  const [svc] = rows("cilia_lb_services");
  const key = decode(LAYOUTS.lbServiceKey, svc!.key);
  assert.deepEqual(
    [formatIP(6, key.addr as Uint8Array), num(key.port), num(key.proto), num(key.family)],
    ["fd00:96::10", 80, 6, 6],
  );
  const backends = rows("cilia_lb_backends").map((u) => decode(LAYOUTS.lbBackend, u.value));
  assert.deepEqual(
    backends.map((b) => [formatIP(6, b.addr as Uint8Array), num(b.port), num(b.family)]).sort(),
    [["fd00:10::3", 8080, 6], ["fd00:10::4", 8080, 6]],
  );
  const rn = decode(LAYOUTS.lbRevnat, rows("cilia_lb_revnat")[0]!.value);
  assert.deepEqual([formatIP(6, rn.addr as Uint8Array), num(rn.family)], ["fd00:96::10", 6]);
  assert.equal(rows("cilia_lb_slots").length, 251, "Maglev works for IPv6 as for IPv4");
  assert.equal(rows("cilia_lb_affinity_match").length, 2, "so does affinity");
  plan.commit();
  const id = s.backendId("fd00:10::4", 8080, "TCP");
  assert.ok(id !== undefined && id > 0);
  // A restarted agent reads the backends back and keeps the ids (conntrack holds them).
  const again = new LbState();
  again.restore("cilia_lb_backends", rows("cilia_lb_backends"));
  assert.equal(again.backendId("fd00:10::4", 8080, "TCP"), id);
});

Deno.test("lbHash(): IPv4 hashes as before; IPv6 uses all 16 bytes and spreads ports", () => {
  const t = { sport: 40000, dport: 80, proto: 6 };
  const v4 = lbHash({
    ...t,
    saddr: Uint8Array.of(10, 0, 0, 5),
    daddr: Uint8Array.of(10, 96, 0, 1),
  });
  const pad = (b: number[]) => {
    const a = new Uint8Array(16);
    a.set(b);
    return a;
  };
  assert.equal(lbHash({ ...t, saddr: pad([10, 0, 0, 5]), daddr: pad([10, 96, 0, 1]) }), v4);
  const a = parseIPv6("fd00:200::5")!, b = parseIPv6("fd00:200::6")!;
  const daddr = parseIPv6("fd00:96::10")!;
  assert.notEqual(lbHash({ ...t, saddr: a, daddr }), lbHash({ ...t, saddr: b, daddr }));
  const hits = new Array(3).fill(0);
  for (let p = 40000; p < 43000; p++) hits[lbHash({ ...t, sport: p, saddr: a, daddr }) % 3]++;
  assert.ok(hits.every((h) => h > 900), `${hits}`);
});

const DUAL = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.1.1
  clusterIPs: [10.96.1.1, "fd00:96::1"]
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.200.0.3]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: ["fd00:200::3"]
  - addresses: ["fd00:200::4"]
    conditions: {ready: false}
`;

Deno.test("importKubernetesServices(): dual-stack Services and IPv6 EndpointSlices", () => {
  const out = importKubernetesServices(DUAL);
  assert.deepEqual(
    out.map((s) => [s.name, s.frontend.ip, s.backends.map((b) => `${b.ip}:${b.port}`)]),
    [
      ["shop/web", "10.96.1.1", ["10.200.0.3:8080"]],
      ["shop/web", "fd00:96::1", ["fd00:200::3:8080"]],
    ],
  );
  const v6only = importKubernetesServices(
    DUAL.replace("ipFamilies: [IPv4, IPv6]", "ipFamilies: [IPv6]")
      .replace("clusterIP: 10.96.1.1\n", "clusterIP: fd00:96::1\n")
      .replace(`clusterIPs: [10.96.1.1, "fd00:96::1"]`, `clusterIPs: ["fd00:96::1"]`),
  );
  assert.deepEqual(v6only.map((s) => s.frontend.ip), ["fd00:96::1"]);
  for (
    const [from, to, msg] of [
      [
        "ipFamilies: [IPv4, IPv6]",
        "ipFamilies: [IPv6, IPv4]",
        /document 1: spec\.ipFamilies\[0\]: Invalid ipFamilies\[0\] "IPv6"/,
      ],
      [
        `clusterIPs: [10.96.1.1, "fd00:96::1"]`,
        `clusterIPs: [10.96.1.2, "fd00:96::1"]`,
        /document 1: spec\.clusterIPs\[0\]: .*expected the clusterIP "10\.96\.1\.1"/,
      ],
      [
        `clusterIPs: [10.96.1.1, "fd00:96::1"]`,
        `clusterIPs: [10.96.1.1, "fd00:96::zz"]`,
        /document 1: spec\.clusterIPs\[1\]: Invalid cluster IP "fd00:96::zz"/,
      ],
      [
        `addresses: ["fd00:200::3"]`,
        `addresses: ["10.200.0.9"]`,
        /document 3: endpoints\[0\]\.addresses\[0\]: Invalid address "10\.200\.0\.9": expected an IPv6 address/,
      ],
      [
        "addressType: IPv6",
        "addressType: FQDN",
        /document 3: addressType: Unsupported addressType: expected "IPv4" or "IPv6"/,
      ],
    ] as const
  ) {
    assert.ok(DUAL.includes(from), from);
    assert.throws(() => importKubernetesServices(DUAL.replace(from, to)), msg);
  }
});

Deno.test("importKubernetesServices(): dual-stack LoadBalancer IPs go to their family", () => {
  const lb = importKubernetesServices(
    DUAL.replace(
      "  ports: [{name: http, port: 80}]",
      "  type: LoadBalancer\n  ports: [{name: http, port: 80, nodePort: 30080}]",
    ).replace(
      "\n---",
      '\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.7}, {ip: "2001:db8:96::7"}]}}\n---',
    ),
  );
  assert.deepEqual(
    lb.map((s) => [s.type, s.frontend.ip, s.nodePort, s.loadBalancerIPs]),
    [
      ["LoadBalancer", "10.96.1.1", 30080, ["198.51.100.7"]],
      ["LoadBalancer", "fd00:96::1", 30080, ["2001:db8:96::7"]],
    ],
  );
});

Deno.test("policyServiceRefs() sorts IPv4 and IPv6 backends (IPv4 first)", () => {
  const recs = importKubernetesServices(DUAL).map((s, i) =>
    normaliseService({ ...ServiceInputSchema.parse(s), id: i + 1 })
  );
  const [ref] = policyServiceRefs(recs);
  assert.deepEqual(ref!.backends, ["10.200.0.3", "fd00:200::3"]);
});

Deno.test("cilia service: --frontend and --backends take [IPv6]:PORT", () => {
  assert.deepEqual(parseFrontend("[fd00:96::10]:80/udp"), {
    ip: "fd00:96::10",
    port: 80,
    protocol: "UDP",
  });
  assert.deepEqual(parseBackends("[fd00:10::3]:8080,[fd00:10::4]:8080*2"), [
    { ip: "fd00:10::3", port: 8080, weight: 1 },
    { ip: "fd00:10::4", port: 8080, weight: 2 },
  ]);
  assert.throws(
    () => parseFrontend("fd00:96::10:80"),
    /expected IP:PORT\[\/TCP\|UDP\] or \[IPv6\]:PORT/,
  );
  assert.throws(() => parseBackends("fd00:10::3:8080"), /Invalid backend "fd00:10::3:8080"/);
});
