// The pure half of services: Maglev tables (consistent: removing one of N backends moves about
// 1/N of the slots), the map plan (diffs in a safe order, stable backend ids), and the Kubernetes
// Service + EndpointSlice import. The kernel half is tests/e2e/services_test.ts.
import assert from "node:assert/strict";
import { lbHash, maglevTable, weightedSlots } from "../../agent/service/maglev.ts";
import { LB_SVC_F_EXTERNAL, LbState } from "../../agent/service/lb_state.ts";
import { decode, LAYOUTS, num } from "../../agent/datapath/codecs.ts";
import {
  normaliseService,
  ServiceInputSchema,
  type ServiceSpec,
} from "../../agent/service/spec.ts";
import { importKubernetesServices } from "../../agent/service/k8s_import.ts";

const named = (n: number) =>
  Array.from({ length: n }, (_, i) => ({ name: `10.0.0.${i + 1}:80`, weight: 1 }));

Deno.test("maglevTable() fills every slot evenly and moves ~1/N slots when a backend goes", () => {
  for (const n of [3, 10, 50]) {
    const all = named(n);
    const t1 = maglevTable(all);
    assert.ok(t1.every((b) => b >= 0 && b < n), "every slot has a backend");
    const counts = new Array(n).fill(0);
    for (const b of t1) counts[b]++;
    assert.ok(Math.max(...counts) - Math.min(...counts) <= 2, `even: ${counts}`);
    const gone = Math.floor(n / 2);
    const rest = all.filter((_, i) => i !== gone);
    const t2 = maglevTable(rest, t1.length).map((i) => rest[i]!.name);
    const changed = t1.filter((b, slot) => all[b]!.name !== t2[slot]).length;
    const others = t1.filter((b, slot) => b !== gone && all[b]!.name !== t2[slot]).length;
    // The removed backend's ~1/N of the slots move; Maglev allows a little churn besides.
    assert.ok(changed / t1.length < 1 / n + 0.1, `n=${n}: ${changed} of ${t1.length} moved`);
    assert.ok(others / t1.length < 0.1, `n=${n}: ${others} slots of other backends moved`);
  }
});

Deno.test("maglevTable() and weightedSlots() honour weights; the same input gives the same table", () => {
  const w = [{ name: "a:1", weight: 3 }, { name: "b:1", weight: 1 }];
  const t = maglevTable(w);
  const a = t.filter((x) => x === 0).length / t.length;
  assert.ok(a > 0.7 && a < 0.8, `weight 3 of 4: ${a}`);
  assert.deepEqual(maglevTable(w), t);
  assert.deepEqual(weightedSlots(w), [0, 0, 0, 1]);
  assert.deepEqual(maglevTable([]), []);
});

Deno.test("lbHash() spreads source ports over slots", () => {
  const hits = new Array(3).fill(0);
  for (let p = 40000; p < 43000; p++) {
    hits[
      lbHash({
        saddr: new Uint8Array([10, 200, 0, 5]),
        daddr: new Uint8Array([10, 96, 0, 10]),
        sport: p,
        dport: 80,
        proto: 6,
      }) % 3
    ]++;
  }
  assert.ok(hits.every((h) => h > 900), `${hits}`);
});

const svc = (
  id: number,
  backends: [string, number][],
  algorithm: "random" | "maglev" = "random",
): ServiceSpec =>
  normaliseService({
    id,
    type: "ClusterIP",
    algorithm,
    frontend: { ip: `10.96.0.${id}`, port: 80, protocol: "TCP" },
    backends: backends.map(([ip, port]) => ({ ip, port, weight: 1 })),
  });

Deno.test("LbState plans diffs in a safe order and keeps backend ids", () => {
  const s = new LbState();
  const p1 = s.plan([svc(1, [["10.0.0.1", 80], ["10.0.0.2", 80]])]);
  assert.deepEqual(p1.writes.map((w) => w.map), [
    "cilia_lb_backends",
    "cilia_lb_slots",
    "cilia_lb_revnat",
    "cilia_lb_services",
  ]);
  const svcValue = decode(LAYOUTS.lbServiceValue, p1.writes[3]!.updates[0]!.value);
  assert.deepEqual([num(svcValue.slots), num(svcValue.svc_id)], [2, 1]);
  p1.commit();
  assert.equal(
    s.plan([svc(1, [["10.0.0.1", 80], ["10.0.0.2", 80]])]).writes.length,
    0,
    "no change, no write",
  );
  const id2 = s.backendId("10.0.0.2", 80, "TCP");
  const p2 = s.plan([svc(1, [["10.0.0.2", 80]])]);
  // The service's slot count shrinks before the slot and backend it no longer uses are deleted.
  assert.deepEqual(p2.writes.map((w) => [w.map, w.updates.length, w.deletes.length]), [
    ["cilia_lb_slots", 1, 0],
    ["cilia_lb_services", 1, 0],
    ["cilia_lb_slots", 0, 1],
    ["cilia_lb_backends", 0, 1],
  ]);
  p2.commit();
  assert.equal(s.backendId("10.0.0.2", 80, "TCP"), id2, "a backend in use keeps its id");
  assert.throws(
    () => svc(2, [["10.0.0.1", 80], ["10.0.0.1", 80]]),
    /Duplicate backend "10.0.0.1:80"/,
  );
});

Deno.test("importKubernetesServices() joins Service ports with their EndpointSlices by name", () => {
  const yaml = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.1.1
  ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 9000, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [10.200.0.3]
  - addresses: [10.200.0.4]
    conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 1}]
endpoints: [{addresses: [10.200.0.9]}]
`;
  const out = importKubernetesServices(yaml);
  assert.deepEqual(
    out.map((s) => [s.name, s.frontend.port, s.backends.map((b) => `${b.ip}:${b.port}`)]),
    [
      ["shop/web", 80, ["10.200.0.3:8080"]],
      ["shop/web", 9000, []],
    ],
  );
  assert.throws(
    () => importKubernetesServices(yaml.replace("port: 80,", "port: 0,")),
    /document 1: spec\.ports\[0\]\.port/,
  );
  assert.throws(
    () =>
      importKubernetesServices(
        yaml.replace("clusterIP: 10.96.1.1", "clusterIP: 10.96.1.1\n  type: ExternalName"),
      ),
    /document 1: spec\.type: Unsupported service type/,
  );
});

Deno.test("importKubernetesServices() keeps nodePorts and LoadBalancer ingress addresses", () => {
  const yaml = `apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  clusterIP: 10.96.1.2
  ports: [{name: http, port: 80, nodePort: 30080}, {name: dns, port: 53, protocol: UDP}]
status:
  loadBalancer: {ingress: [{ip: 198.51.100.7}, {hostname: lb.example.com}]}
`;
  const out = importKubernetesServices(yaml);
  assert.deepEqual(out.map((s) => [s.type, s.nodePort, s.loadBalancerIPs]), [
    ["LoadBalancer", 30080, ["198.51.100.7"]],
    ["LoadBalancer", undefined, ["198.51.100.7"]],
  ]);
  const np = importKubernetesServices(yaml.replace("LoadBalancer", "NodePort"));
  assert.deepEqual(np.map((s) => [s.type, s.nodePort, s.loadBalancerIPs]), [
    ["NodePort", 30080, undefined],
    ["NodePort", undefined, undefined],
  ]);
});

Deno.test("LbState writes NodePort and LoadBalancer frontends flagged external", () => {
  const base = svc(7, [["10.200.1.3", 8080]]);
  const s = normaliseService({
    ...base,
    type: "LoadBalancer",
    nodePort: 30080,
    loadBalancerIPs: ["198.51.100.7"],
  });
  const plan = new LbState().plan([s], { nodePortAddresses: ["192.0.2.1"] });
  const services = plan.writes.find((w) => w.map === "cilia_lb_services")!.updates.map((u) => {
    const k = decode(LAYOUTS.lbServiceKey, u.key), v = decode(LAYOUTS.lbServiceValue, u.value);
    const a = k.addr as Uint8Array;
    return [`${a[0]}.${a[1]}.${a[2]}.${a[3]}:${num(k.port)}`, num(v.svc_id), num(v.flags)];
  }).sort();
  assert.deepEqual(services, [
    ["10.96.0.7:80", 7, 0],
    ["192.0.2.1:30080", 7, LB_SVC_F_EXTERNAL],
    ["198.51.100.7:80", 7, LB_SVC_F_EXTERNAL],
  ]);
  assert.throws(
    () => ServiceInputSchema.parse({ ...base, nodePort: 30080 }),
    /Invalid nodePort: only a .+NodePort.+ service has one/,
  );
  assert.throws(
    () => ServiceInputSchema.parse({ ...base, type: "NodePort", loadBalancerIPs: ["1.2.3.4"] }),
    /Invalid loadBalancerIPs: only a .+LoadBalancer.+ service has them/,
  );
});
