// Flows of the underlay's NodePort/LoadBalancer events (bpf/lib/np_event.h): ep_id 0, the frontend's
// port in the cookie, a trace after translation (client → backend) or a drop before it (client →
// frontend). The service index names the NodePort or LoadBalancer frontend, not the ClusterIP one
// that shares the id; records take the object path, so two backend pods of one identity are told
// apart by address; no policy is attributed by the cookie; `--service` and the lines show them.
import assert from "node:assert/strict";
import { PolicyEngine } from "../../policy-wasm/mod.ts";
import { Monitor } from "../../agent/monitor/monitor.ts";
import { ServiceIndex, type ServiceRecord } from "../../agent/monitor/service_index.ts";
import { addCriterion, emptyFilter } from "../../agent/monitor/filter.ts";
import { Logger } from "../../agent/log.ts";
import { compactLine } from "../../cli/flow_render.ts";
import type { EndpointRecord } from "../../agent/endpoint/spec.ts";
import { frame } from "./_events.ts";

const NODE = "192.0.2.1", NODE6 = "2001:db8::1", CLIENT = "198.51.100.9";
const WEB: ServiceRecord = {
  id: 7,
  name: "default/web",
  type: "NodePort",
  nodePort: 30080,
  frontend: { ip: "10.96.0.10", port: 80, protocol: "TCP" },
};
const LB: ServiceRecord = {
  id: 8,
  name: "default/lb",
  type: "LoadBalancer",
  nodePort: 30081,
  loadBalancerIPs: ["203.0.113.5"],
  frontend: { ip: "10.96.0.11", port: 443, protocol: "TCP" },
};
const LB2: ServiceRecord = { ...LB, id: 9, loadBalancerIPs: ["203.0.113.6", "203.0.113.7"] };
const WEB6: ServiceRecord = {
  ...WEB,
  id: 10,
  frontend: { ip: "fd00::10", port: 80, protocol: "TCP" },
};
const CLUSTER: ServiceRecord = {
  id: 11,
  name: "default/db",
  frontend: { ip: "10.96.0.12", port: 5432, protocol: "TCP" },
};

Deno.test("ServiceIndex.externalOf() names the NodePort or LoadBalancer frontend used", async (t) => {
  const index = new ServiceIndex([WEB, LB, LB2, WEB6, CLUSTER], {
    nodeAddresses: [NODE, NODE6],
  });
  const cases: [string, number, number, string | undefined, string | undefined, string][] = [
    ["NodePort: the node's address", 7, 30080, undefined, "NodePort", `${NODE}:30080/TCP`],
    [
      "NodePort: the packet's address wins",
      7,
      30080,
      "192.0.2.99",
      "NodePort",
      "192.0.2.99:30080/TCP",
    ],
    ["NodePort over IPv6", 10, 30080, undefined, "NodePort", `[${NODE6}]:30080/TCP`],
    ["LoadBalancer: its one address", 8, 443, undefined, "LoadBalancer", "203.0.113.5:443/TCP"],
    ["LoadBalancer's NodePort", 8, 30081, undefined, "NodePort", `${NODE}:30081/TCP`],
    ["two LB addresses: unspecified", 9, 443, undefined, "LoadBalancer", "0.0.0.0:443/TCP"],
    ["a port that is neither: the record's", 7, 1234, undefined, undefined, "10.96.0.10:80/TCP"],
    ["a ClusterIP service: the record's", 11, 5432, undefined, undefined, "10.96.0.12:5432/TCP"],
    ["no port: the record's", 7, 0, undefined, undefined, "10.96.0.10:80/TCP"],
    ["an unknown id", 99, 30080, undefined, undefined, "unknown"],
  ];
  for (const [name, id, port, address, type, frontend] of cases) {
    await t.step(name, () => {
      const s = index.externalOf(id, port, address);
      assert.equal(s?.type, type);
      assert.equal(s?.frontend, frontend);
      assert.equal(s?.id, id);
    });
  }
  await t.step("shared per frontend, rebuilt on change", () => {
    assert.equal(index.externalOf(7, 30080), index.externalOf(7, 30080));
    index.update([{ ...WEB, nodePort: 30090 }]);
    assert.equal(index.externalOf(7, 30080)?.type, undefined);
    assert.equal(index.externalOf(7, 30090)?.frontend, `${NODE}:30090/TCP`);
  });
  await t.step("no node address of the family: unspecified", () => {
    const bare = new ServiceIndex([WEB6]);
    assert.equal(bare.externalOf(10, 30080)?.frontend, "[::]:30080/TCP");
  });
});

const BACKEND = 1002, WORLD = 2;
const ep = (id: number, name: string, ipv4: string) =>
  ({
    id,
    name,
    namespace: "default",
    labels: { app: "backend" },
    identity: BACKEND,
    identityLabels: ["k8s:app=backend"],
    ipv4,
    node: "node-1",
  }) as unknown as EndpointRecord;

/** One record as np_event_send() writes it: ep_id 0, dir ingress, the frontend port as cookie. */
function record(o: {
  type: 1 | 3;
  subtype: number;
  dst: number;
  svc: number;
  fePort: number;
  frame: Uint8Array;
}): DataView {
  const dv = new DataView(new ArrayBuffer(104));
  dv.setUint8(0, o.type);
  dv.setUint8(1, o.subtype);
  dv.setUint32(4, WORLD, true);
  dv.setUint32(8, o.dst, true);
  dv.setUint8(16, 1);
  dv.setUint8(17, 6);
  dv.setUint16(20, 40000, true);
  dv.setUint16(22, 8080, true);
  dv.setUint32(24, o.fePort, true);
  dv.setUint32(28, 60, true);
  dv.setUint32(32, 64, true);
  dv.setUint8(36, 4);
  dv.setUint16(38, o.svc, true);
  new Uint8Array(dv.buffer).set(o.frame, 40);
  return dv;
}

Deno.test("the monitor makes flows of the underlay's NodePort traces and drops", async () => {
  const engine = await PolicyEngine.create();
  engine.upsertIdentities([{ id: BACKEND, labels: ["k8s:app=backend"] }]);
  const eps = [ep(2, "backend-a", "10.0.0.2"), ep(3, "backend-b", "10.0.0.3")];
  const m = new Monitor({
    engine,
    endpoints: () => eps,
    nodeName: "node-1",
    log: new Logger({ level: "error" }),
    services: [WEB],
    nodeAddresses: [NODE],
  });
  try {
    const syn = (dst: string, dport: number) =>
      frame(CLIENT, dst, { proto: 6, sport: 40000, dport, flags: 2 });
    for (const dst of ["10.0.0.2", "10.0.0.3", "10.0.0.2"]) { // the third hits a cache, if any
      m.ingestRecord(
        record({ type: 3, subtype: 4, dst: BACKEND, svc: 7, fePort: 30080, frame: syn(dst, 8080) }),
        0,
        104,
      );
    }
    const drop = syn(NODE, 30080);
    m.ingestRecord(
      record({ type: 1, subtype: 158, dst: 1, svc: 7, fePort: 30080, frame: drop }),
      0,
      104,
    );
    const flows = m.query().flows;
    assert.equal(flows.length, 4);
    const [a, b, a2, dropped] = flows;
    assert.deepEqual([a, b, a2].map((f) => f?.destination.pod_name), [
      "backend-a",
      "backend-b",
      "backend-a",
    ]);
    for (const f of [a, b, dropped]) {
      assert.deepEqual(f?.destination_service, {
        name: "web",
        namespace: "default",
        frontend: `${NODE}:30080/TCP`,
        id: 7,
        type: "NodePort",
      });
      assert.equal(f?.traffic_direction, "INGRESS");
      assert.equal(f?.policy, undefined); // the cookie is a port, not a rule
      assert.equal(f?.source.identity, WORLD);
    }
    assert.equal(a?.verdict, "FORWARDED");
    assert.equal(a?.event_type.sub_type, 4);
    assert.equal(dropped?.verdict, "DROPPED");
    assert.equal(dropped?.drop_reason, 158);
    assert.equal(dropped?.drop_reason_desc, "SERVICE_BACKEND_NOT_FOUND");
    assert.match(
      compactLine(a!),
      new RegExp(
        `${CLIENT}:40000 \\(.*\\) -> default/backend-a:8080 \\(.*\\) via service default/web ` +
          `NodePort ${NODE.replaceAll(".", "\\.")}:30080/TCP`,
      ),
    );
    for (const value of ["default/web", `${NODE}:30080/TCP`, NODE]) {
      const filter = emptyFilter();
      addCriterion(filter, "service", value);
      assert.equal(m.query({ filter }).flows.length, 4, value);
    }
  } finally {
    m.close();
  }
});
