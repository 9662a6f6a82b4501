// Flows of packets a service was translated for (enforce.h, 11.): the event's svc_id at offset 38
// decoded by both decoders, buildFlow's destination_service (the client's packets) and
// source_service (replies), the monitor's service index (name split, IPv6 frontends, ids it does
// not know, rebuilt on change), `--service`, and the compact and table lines.
import assert from "node:assert/strict";
import { PolicyEngine } from "../../policy-wasm/mod.ts";
import { decodeEvent, decodeEventSlow } from "../../agent/datapath/events.ts";
import { EVENT_HEADER_LEN, LAYOUTS } from "../../agent/datapath/codecs.ts";
import { buildFlow, type FlowEndpoint } from "../../agent/monitor/flow.ts";
import { ServiceIndex, type ServiceRecord } from "../../agent/monitor/service_index.ts";
import { addCriterion, compileFilter, emptyFilter } from "../../agent/monitor/filter.ts";
import { Monitor } from "../../agent/monitor/monitor.ts";
import { Logger } from "../../agent/log.ts";
import { compactLine, flowTable } from "../../cli/flow_render.ts";
import { event, frame } from "./_events.ts";

const WEB: ServiceRecord = {
  id: 7,
  name: "default/web",
  frontend: { ip: "10.96.0.10", port: 80, protocol: "TCP" },
};
const DNS6: ServiceRecord = { id: 9, frontend: { ip: "fd00::10", port: 53, protocol: "UDP" } };
const side = (identity: number): FlowEndpoint => ({ identity, labels: [] });

Deno.test("decodeEvent() and decodeEventSlow() read svc_id at offset 38", () => {
  assert.deepEqual(LAYOUTS.event.fields.find((f) => f.name === "svc_id"), {
    name: "svc_id",
    offset: 38,
    kind: "u16",
  });
  const rec = new Uint8Array(EVENT_HEADER_LEN + 64);
  const dv = new DataView(rec.buffer);
  dv.setUint8(0, 3);
  dv.setUint8(16, 2);
  dv.setUint8(17, 6);
  dv.setUint8(36, 4);
  dv.setUint8(37, 0);
  dv.setUint16(38, 0xbeef, true);
  dv.setUint32(32, 64, true);
  rec.set(frame("10.0.0.1", "10.0.0.2", { proto: 6, sport: 1, dport: 8080 }), EVENT_HEADER_LEN);
  const fast = decodeEvent(0, rec), slow = decodeEventSlow(0, rec);
  assert.equal(fast.svcId, 0xbeef);
  assert.deepEqual(fast, slow);
  dv.setUint16(38, 0, true);
  assert.equal(decodeEvent(0, rec).svcId, 0);
});

Deno.test("buildFlow() puts the service on the side the packet went to or came from", async (t) => {
  const index = new ServiceIndex([WEB]);
  const ctx = { nodeName: "n", now: "T", source: side(1), destination: side(2) };
  const out = frame("10.0.0.1", "10.0.0.2", { proto: 6, sport: 40000, dport: 8080, flags: 2 });
  await t.step("a client's packet to the backend: destination_service", () => {
    const e = event({ type: "trace", direction: "egress", svcId: 7, data: out });
    const f = buildFlow(e, { ...ctx, service: index.of(e.svcId) });
    assert.deepEqual(f.destination_service, {
      name: "web",
      namespace: "default",
      frontend: "10.96.0.10:80/TCP",
      id: 7,
    });
    assert.equal(f.source_service, undefined);
    assert.equal(f.l4 && "TCP" in f.l4 ? f.l4.TCP.destination_port : 0, 8080);
    // Hubble's key order: after event_type, before traffic_direction.
    const keys = Object.keys(f);
    assert.equal(keys.indexOf("destination_service"), keys.indexOf("event_type") + 1);
  });
  await t.step("a reply that got the service address back: source_service", () => {
    const back = frame("10.96.0.10", "10.0.0.1", { proto: 6, sport: 80, dport: 40000, flags: 18 });
    const e = event({ type: "trace", ctState: 2, svcId: 7, data: back });
    const f = buildFlow(e, { ...ctx, service: index.of(e.svcId) });
    assert.equal(f.source_service?.frontend, "10.96.0.10:80/TCP");
    assert.equal(f.destination_service, undefined);
    assert.equal(f.is_reply, true);
  });
  await t.step("no service: neither key", () => {
    const e = event({ type: "drop", subtype: 133, data: out });
    const f = buildFlow(e, { ...ctx, service: index.of(e.svcId) });
    assert.ok(!("destination_service" in f) && !("source_service" in f));
  });
});

Deno.test("ServiceIndex names services by id and is rebuilt on change", () => {
  const index = new ServiceIndex([WEB, DNS6]);
  assert.equal(index.of(0), undefined);
  assert.deepEqual(index.of(9), { frontend: "[fd00::10]:53/UDP", id: 9 });
  assert.deepEqual(index.of(42), { frontend: "unknown", id: 42 });
  assert.equal(index.of(42), index.of(42)); // shared, as the sides of flows are
  const g = index.generation;
  index.update([{ ...WEB, name: "prod/web2" }]);
  assert.notEqual(index.generation, g);
  assert.deepEqual(index.of(7), {
    name: "web2",
    namespace: "prod",
    frontend: "10.96.0.10:80/TCP",
    id: 7,
  });
  assert.deepEqual(index.of(9), { frontend: "unknown", id: 9 }); // deleted
});

Deno.test("the monitor resolves svcId from the agent's services, and follows changes", async () => {
  const engine = await PolicyEngine.create();
  const m = new Monitor({
    engine,
    endpoints: () => [],
    nodeName: "n",
    log: new Logger({ level: "error" }),
    services: [WEB],
  });
  try {
    const data = frame("10.0.0.1", "10.0.0.2", { proto: 6, sport: 40000, dport: 8080, flags: 2 });
    m.ingest(event({ type: "trace", direction: "egress", svcId: 7, data }));
    m.servicesChanged([]);
    m.ingest(event({ type: "trace", direction: "egress", svcId: 7, data }));
    const [before, after] = m.query().flows;
    assert.equal(before?.destination_service?.name, "web");
    assert.deepEqual(after?.destination_service, { frontend: "unknown", id: 7 });
  } finally {
    m.close();
  }
});

Deno.test("--service matches a flow by name, namespace/name, frontend or address", async (t) => {
  const index = new ServiceIndex([WEB, DNS6]);
  const ctx = { nodeName: "n", now: "T", source: side(1), destination: side(2) };
  const data = frame("10.0.0.1", "10.0.0.2", { proto: 6, sport: 40000, dport: 8080, flags: 2 });
  const to = (id: number) =>
    buildFlow(event({ type: "trace", svcId: id, data }), { ...ctx, service: index.of(id) });
  const reply = buildFlow(event({ type: "trace", ctState: 2, svcId: 7, data }), {
    ...ctx,
    service: index.of(7),
  });
  const cases: [string, ReturnType<typeof to>, boolean][] = [
    ["default/web", to(7), true],
    ["web", to(7), true],
    ["10.96.0.10:80/TCP", to(7), true],
    ["10.96.0.10:80", to(7), true],
    ["10.96.0.10", to(7), true],
    ["default/web", reply, true],
    ["other/web", to(7), false],
    ["10.96.0.10:81", to(7), false],
    ["fd00::10", to(9), true],
    ["[fd00::10]:53/UDP", to(9), true],
    ["web", to(0), false],
  ];
  for (const [value, flow, want] of cases) {
    await t.step(`${value} ${want ? "matches" : "does not match"}`, () => {
      const filter = emptyFilter();
      addCriterion(filter, "service", value);
      assert.equal(compileFilter(filter)(flow), want);
    });
  }
  assert.throws(() => addCriterion(emptyFilter(), "service", ""), /Invalid service ""/);
});

Deno.test("compact and table lines show the service next to its side", () => {
  const index = new ServiceIndex([WEB]);
  const ctx = { nodeName: "n", now: "2025-01-01T10:00:00.000Z", source: side(1) };
  const out = frame("10.0.0.1", "10.0.0.2", { proto: 6, sport: 40000, dport: 8080, flags: 2 });
  const f = buildFlow(event({ type: "trace", direction: "egress", svcId: 7, data: out }), {
    ...ctx,
    destination: side(2),
    service: index.of(7),
  });
  assert.match(
    compactLine(f),
    / -> 10\.0\.0\.2:8080 \(unknown, ID:2\) via service default\/web 10\.96\.0\.10:80\/TCP trace/,
  );
  const back = frame("10.96.0.10", "10.0.0.1", { proto: 6, sport: 80, dport: 40000, flags: 18 });
  const r = buildFlow(event({ type: "trace", ctState: 2, svcId: 5, data: back }), {
    ...ctx,
    destination: side(2),
    service: index.of(5),
  });
  assert.match(compactLine(r), /10\.96\.0\.10:80 \(unknown, ID:1\) via service 5 \(unknown\) -> /);
  const table = flowTable([f]).split("\n");
  assert.match(table[0]!, /DESTINATION +SERVICE +TYPE/);
  assert.match(table[1]!, /default\/web 10\.96\.0\.10:80\/TCP/);
});
