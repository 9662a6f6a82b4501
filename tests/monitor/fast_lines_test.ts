// The monitor's record path (a ring-buffer record → a line written from its bytes, the record kept
// as bytes in the ring) must give exactly what the object path gives (decodeEvent → buildFlow →
// flowNdjson): same lines in the same order, same flows from a query, same counters. Records of
// every kind the line writer covers (TCP with each flag, UDP, ICMP types, drops, verdicts, audit,
// traces, both directions, a known and an unknown peer, through a known, a nameless and an unknown
// service, a reply from one) and ones it does not (IPv6, a fragment, a short capture), which must
// fall back to the object path in order.
import assert from "node:assert/strict";
import { compilePolicies, PolicyEngine } from "../../policy-wasm/mod.ts";
import { Monitor } from "../../agent/monitor/monitor.ts";
import { Logger } from "../../agent/log.ts";
import { decodeEventAt } from "../../agent/datapath/events.ts";
import type { EndpointRecord } from "../../agent/endpoint/spec.ts";
import { frame } from "./_events.ts";

const POLICY = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: backend-ingress, namespace: default }
spec:
  endpointSelector: { matchLabels: { app: backend } }
  ingress:
    - fromEndpoints: [{ matchLabels: { app: frontend } }]
      toPorts: [{ ports: [{ port: "8080", protocol: TCP }] }]
`;
const FRONTEND = 1001, BACKEND = 1002, WORLD = 2;
const ep = (id: number, name: string, identity: number, ipv4: string) =>
  ({
    id,
    name,
    namespace: "default",
    labels: { app: name },
    identity,
    identityLabels: [`k8s:app=${name}`],
    ipv4,
    node: "node-1",
  }) as unknown as EndpointRecord;

async function monitor(): Promise<Monitor> {
  const engine = await PolicyEngine.create();
  engine.upsertIdentities([
    { id: FRONTEND, labels: ["k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=default"] },
    { id: BACKEND, labels: ["k8s:app=backend", "k8s:io.kubernetes.pod.namespace=default"] },
  ]);
  engine.setPolicy(compilePolicies({ text: POLICY, file: "p.yaml" }).spec);
  engine.setEndpoints([
    { id: 1, identity: FRONTEND, namedPorts: [] },
    { id: 2, identity: BACKEND, namedPorts: [] },
  ]);
  const eps = [ep(1, "frontend", FRONTEND, "10.0.0.1"), ep(2, "backend", BACKEND, "10.0.0.2")];
  return new Monitor({
    engine,
    endpoints: () => eps,
    nodeName: "node-1",
    bufferSize: 512,
    log: new Logger({ level: "error" }),
    services: [
      { id: 7, name: "default/web", frontend: { ip: "10.96.0.10", port: 80, protocol: "TCP" } },
      { id: 9, frontend: { ip: "10.96.0.11", port: 53, protocol: "UDP" } },
    ],
  });
}

interface Rec {
  type: 0 | 1 | 2 | 3;
  subtype: number;
  epId: number;
  src: number;
  dst: number;
  dir: 1 | 2;
  verdict: number;
  match: number;
  cookie: number;
  ct: number;
  /** svc_id (default 0) */
  svc?: number;
  frame: Uint8Array;
}

/** Records as the kernel writes them into the ring (header, then 64 bytes), 8-byte aligned. */
function records(recs: Rec[]): { view: DataView; at: number[]; len: number } {
  const len = 104, buf = new Uint8Array(len * recs.length);
  const dv = new DataView(buf.buffer);
  const at = recs.map((r, i) => {
    const o = i * len;
    dv.setUint8(o, r.type);
    dv.setUint8(o + 1, r.subtype);
    dv.setUint16(o + 2, r.epId, true);
    dv.setUint32(o + 4, r.src, true);
    dv.setUint32(o + 8, r.dst, true);
    dv.setUint8(o + 16, r.dir);
    dv.setUint8(o + 17, r.frame[23]!);
    dv.setUint8(o + 18, r.verdict);
    dv.setUint8(o + 19, r.match);
    dv.setUint16(o + 20, 40000, true);
    dv.setUint16(o + 22, 8080, true);
    dv.setUint32(o + 24, r.cookie, true);
    dv.setUint32(o + 28, 60, true);
    dv.setUint32(o + 32, r.frame.length, true);
    dv.setUint8(o + 36, 4);
    dv.setUint8(o + 37, r.ct);
    dv.setUint16(o + 38, r.svc ?? 0, true);
    buf.set(r.frame, o + 40);
    return o;
  });
  return { view: dv, at, len };
}

function cases(): Rec[] {
  const base = { epId: 2, src: FRONTEND, dst: BACKEND, dir: 1 as const, match: 0, ct: 0 };
  const out: Rec[] = [];
  for (let flags = 0; flags < 64; flags += 7) {
    const f = frame("10.0.0.1", "10.0.0.2", { proto: 6, sport: 40000 + flags, dport: 8080, flags });
    out.push({ ...base, type: 3, subtype: 0, verdict: 0, cookie: 0, frame: f });
  }
  const syn = frame("10.0.0.1", "10.0.0.2", { proto: 6, sport: 41000, dport: 9090, flags: 2 });
  out.push({ ...base, type: 2, subtype: 133, verdict: 2, cookie: 0, frame: syn });
  out.push({ ...base, type: 1, subtype: 133, verdict: 0, cookie: 0, frame: syn });
  out.push({ ...base, type: 2, subtype: 133, verdict: 4, cookie: 0, frame: syn }); // audit
  out.push({ ...base, type: 1, subtype: 181, verdict: 0, cookie: 77, frame: syn });
  out.push({
    ...base,
    type: 3,
    subtype: 0,
    verdict: 0,
    cookie: 0,
    ct: 2,
    dir: 2,
    epId: 1,
    frame: frame("10.0.0.1", "198.51.100.7", { proto: 17, sport: 5353, dport: 53 }),
  });
  for (const t of [0, 3, 8, 11, 42]) {
    out.push({
      ...base,
      type: 3,
      subtype: 0,
      verdict: 0,
      cookie: 0,
      src: WORLD,
      frame: frame("203.0.113.9", "10.0.0.2", { proto: 1, type: t }),
    });
  }
  for (const svc of [7, 9, 300]) { // known, nameless, unknown (deleted)
    const f = frame("10.0.0.1", "10.0.0.2", { proto: 6, sport: 42000, dport: 8080, flags: 2 });
    out.push({ ...base, type: 3, subtype: 0, verdict: 0, cookie: 0, svc, frame: f });
    out.push({ ...base, type: 1, subtype: 133, verdict: 0, cookie: 0, svc, frame: f });
  }
  out.push({ // a reply that got the service address back, at the client's ingress
    ...base,
    type: 3,
    subtype: 0,
    verdict: 0,
    cookie: 0,
    ct: 2,
    dir: 1,
    epId: 1,
    svc: 7,
    frame: frame("10.96.0.10", "10.0.0.1", { proto: 6, sport: 80, dport: 42000, flags: 18 }),
  });
  const v6 = new Uint8Array(64);
  v6.set([0x86, 0xdd], 12);
  v6[20] = 17;
  v6.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 22);
  v6.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 38);
  out.push({ ...base, type: 3, subtype: 0, verdict: 0, cookie: 0, frame: v6 });
  const frag = frame("10.0.0.1", "10.0.0.2", { proto: 17, sport: 1, dport: 2 });
  frag[21] = 8; // fragment offset 8
  out.push({ ...base, type: 3, subtype: 0, verdict: 0, cookie: 0, frame: frag });
  out.push({ ...base, type: 3, subtype: 0, verdict: 0, cookie: 0, frame: syn.slice(0, 40) });
  return out;
}

const TIME = /"time":"[^"]*"/g;
const text = (items: (string | Uint8Array)[]) =>
  items.map((i) => typeof i === "string" ? i : new TextDecoder().decode(i)).join("");

Deno.test("the record path writes the lines and keeps the flows the object path does", async () => {
  const [fast, slow] = [await monitor(), await monitor()];
  try {
    const fastLines = fast.followLines(), slowLines = slow.followLines();
    const { view, at, len } = records(cases());
    for (let round = 0; round < 3; round++) { // later rounds hit the context cache
      for (const o of at) {
        fast.ingestRecord(view, o, len);
        slow.ingest(decodeEventAt(view, o, len));
      }
    }
    fast.ingestDns({
      query: "example.com.",
      qtype: "A",
      allowed: true,
      rcode: 0,
      cnames: [],
      ips: [],
      latencyMs: 1,
      client: { ip: "10.0.0.1", port: 5000 },
      server: { ip: "10.0.0.53", port: 53 },
      epId: 1,
      srcIdentity: FRONTEND,
      dstIdentity: WORLD,
      cookie: 0,
    }, new Date(0)); // flushes what the record path collected, in order
    const got = text((await fastLines.take(1 << 20)).items).replace(TIME, "T").split("\n");
    const want = text((await slowLines.take(1 << 20)).items).replace(TIME, "T").split("\n");
    assert.equal(got.length, want.length + 1);
    assert.deepEqual(got.slice(0, want.length - 1), want.slice(0, -1));
    assert.match(got.at(-2)!, /"query":"example.com."/);
    const has = (text: string) => got.filter((l) => l.includes(text)).length;
    const web = '{"name":"web","namespace":"default","frontend":"10.96.0.10:80/TCP","id":7}';
    assert.equal(has(`"destination_service":${web}`), 6); // trace and drop, 3 rounds
    assert.equal(has(`"source_service":${web}`), 3);
    assert.equal(has('"destination_service":{"frontend":"10.96.0.11:53/UDP","id":9}'), 6);
    assert.equal(has('"destination_service":{"frontend":"unknown","id":300}'), 6);
    const strip = (f: object) => ({ ...f, time: "T" });
    const fastFlows = fast.query().flows.slice(0, -1).map(strip);
    assert.deepEqual(fastFlows, slow.query().flows.map(strip));
    assert.deepEqual(fast.counters.verdicts, slow.counters.verdicts);
    const processed = new Map(fast.counters.processed);
    processed.delete("l7/FORWARDED");
    assert.deepEqual(processed, slow.counters.processed);
  } finally {
    fast.close();
    slow.close();
  }
});
