// The Kafka proxy without the kernel: request decoding and denied responses at every supported
// version, checked by an independent schema codec (_kafka_schema.ts, flexible versions included)
// and by kafkajs's own protocol decoders; then a proxy connection over loopback (judge: every
// topic but "secret…") in front of the test broker fixture, with kafkajs as the client: allowed
// topics work, a denied one gets TOPIC_AUTHORIZATION_FAILED on a connection that stays usable,
// responses keep request order, and bad input closes the connection with nothing forwarded.
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createRequire } from "node:module";
import { Kafka, logLevel } from "kafkajs";
import { type KafkaRecord, serveKafkaConnection } from "../../agent/proxy/kafka.ts";
import { type KafkaRequestInfo, parseKafkaRequest } from "../../agent/proxy/kafka_request.ts";
import { deniedResponse } from "../../agent/proxy/kafka_reply.ts";
import { denoStream } from "../../agent/proxy/proxy.ts";
import { Broker } from "../fixtures/kafka_broker.ts";
import { decodeResponse, REQ, requestFrame, RESP, type Value } from "./_kafka_schema.ts";

const require = createRequire(import.meta.url);
const KEYS = { produce: 0, fetch: 1, listOffsets: 2, metadata: 3, offsetCommit: 8, offsetFetch: 9 };
/** Highest version and first flexible version, from the Kafka message schemas. */
const VERSIONS: Record<keyof typeof KEYS, [number, number]> = {
  produce: [9, 9],
  fetch: [12, 12],
  listOffsets: [7, 6],
  metadata: [12, 9],
  offsetCommit: [8, 8],
  offsetFetch: [7, 6],
};

const TOPICS = [{ name: "orders", partitions: [0, 3] }, { name: "logs", partitions: [1] }];

/** A request body for the schema, naming TOPICS. */
function body(kind: keyof typeof KEYS, _v: number): Value {
  const part = (p: number) => ({
    index: p,
    partition: p,
    partition_index: p,
    records: new Uint8Array([1, 2, 3]),
    current_leader_epoch: 0,
    fetch_offset: 5,
    last_fetched_epoch: -1,
    log_start_offset: 0,
    partition_max_bytes: 1 << 20,
    timestamp: -1,
    max_num_offsets: 1,
    committed_offset: 7,
    committed_leader_epoch: 0,
    commit_timestamp: 0,
    committed_metadata: null,
  });
  const topics = TOPICS.map((t) => ({
    name: t.name,
    partitions: t.partitions.map(part),
    partition_indexes: t.partitions,
  }));
  return {
    transactional_id: null,
    acks: -1,
    timeout_ms: 1000,
    replica_id: -1,
    max_wait_ms: 100,
    min_bytes: 1,
    max_bytes: 1 << 20,
    isolation_level: 0,
    session_id: 0,
    session_epoch: -1,
    forgotten: [],
    rack_id: "",
    allow_auto_topic_creation: true,
    include_cluster_ops: false,
    include_topic_ops: false,
    group_id: "g",
    generation_id: 1,
    member_id: "m",
    group_instance_id: null,
    retention_time_ms: -1,
    require_stable: false,
    topics: kind === "metadata" ? TOPICS.map((t) => ({ name: t.name })) : topics,
  };
}

Deno.test("parseKafkaRequest() and deniedResponse() at every supported version", async (t) => {
  for (const kind of Object.keys(KEYS) as (keyof typeof KEYS)[]) {
    const [max, flexFrom] = VERSIONS[kind];
    await t.step(`${kind} v0-${max}`, () => {
      for (let v = kind === "offsetFetch" ? 1 : 0; v <= max; v++) {
        const flex = v >= flexFrom;
        const frame = requestFrame(
          { apiKey: KEYS[kind], apiVersion: v, correlationId: 1000 + v, clientId: "cid" },
          REQ[kind]!(v),
          body(kind, v),
          flex,
        );
        const req = parseKafkaRequest(frame.subarray(4));
        const what = `${kind} v${v}`;
        assert.equal(req.apiKey, KEYS[kind], what);
        assert.equal(req.apiVersion, v, what);
        assert.equal(req.correlationId, 1000 + v, what);
        assert.equal(req.clientId, "cid", what);
        const want = kind === "metadata" ? TOPICS.map((t) => ({ ...t, partitions: [] })) : TOPICS;
        assert.deepEqual(req.topics, want, what);
        const resp = deniedResponse(req)!;
        const { correlationId, body: b } = decodeResponse(resp, RESP[kind]!(v), flex);
        assert.equal(correlationId, 1000 + v, what);
        assert.deepEqual(b.topics.map((x: Value) => x.name), ["orders", "logs"], what);
        for (const tp of b.topics) {
          if (kind === "metadata") assert.equal(tp.error_code, 29, what);
          else {
            const want = TOPICS.find((x) => x.name === tp.name)!.partitions;
            assert.deepEqual(tp.partitions.map((p: Value) => p.partition_index ?? p.index), want);
            for (const p of tp.partitions) assert.equal(p.error_code, 29, what);
          }
        }
      }
    });
  }

  await t.step("a null topic list means all topics; produce acks 0 gets no answer", () => {
    const md = requestFrame(
      { apiKey: 3, apiVersion: 9, correlationId: 1, clientId: null },
      REQ.metadata!(9),
      {
        topics: null,
        allow_auto_topic_creation: false,
        include_cluster_ops: false,
        include_topic_ops: false,
      },
      true,
    );
    const req = parseKafkaRequest(md.subarray(4));
    assert.equal(req.allTopics, true);
    assert.deepEqual(req.topics, []);
    assert.equal(req.clientId, "");
    const p = requestFrame(
      { apiKey: 0, apiVersion: 9, correlationId: 2, clientId: "x" },
      REQ.produce!(9),
      { ...body("produce", 9), acks: 0 },
      true,
    );
    const pr = parseKafkaRequest(p.subarray(4));
    assert.equal(pr.acks, 0);
    assert.equal(deniedResponse(pr), undefined);
    // a topic-less type: no local answer (Cilium's proxy answers only the six)
    assert.equal(deniedResponse({ ...pr, apiKey: 18, apiVersion: 3 }), undefined);
  });
});

Deno.test("kafkajs's own decoders read the denied responses", async (t) => {
  const frameOf = require("kafkajs/src/protocol/request.js");
  const cases: [string, number, Value][] = [
    ["produce", 3, {
      acks: -1,
      timeout: 100,
      topicData: [{ topic: "orders", partitions: [{ partition: 0, messages: [{ value: "x" }] }] }],
    }],
    ["produce", 7, {
      acks: 1,
      timeout: 100,
      topicData: [{ topic: "orders", partitions: [{ partition: 2, messages: [{ value: "x" }] }] }],
    }],
    ["fetch", 4, {
      replicaId: -1,
      maxWaitTime: 10,
      minBytes: 1,
      maxBytes: 1000,
      topics: [{
        topic: "orders",
        partitions: [{ partition: 0, fetchOffset: "0", maxBytes: 100 }],
      }],
    }],
    ["fetch", 11, {
      replicaId: -1,
      maxWaitTime: 10,
      minBytes: 1,
      maxBytes: 1000,
      topics: [{
        topic: "orders",
        partitions: [{ partition: 1, fetchOffset: "0", maxBytes: 100, logStartOffset: "0" }],
      }],
    }],
    ["metadata", 0, { topics: ["orders"] }],
    ["metadata", 6, { topics: ["orders", "logs"] }],
    ["listOffsets", 2, {
      replicaId: -1,
      isolationLevel: 1,
      topics: [{ topic: "orders", partitions: [{ partition: 0, timestamp: -2 }] }],
    }],
    ["offsetFetch", 4, {
      groupId: "g",
      topics: [{ topic: "orders", partitions: [{ partition: 0 }] }],
    }],
  ];
  for (const [kind, v, args] of cases) {
    await t.step(`${kind} v${v}`, async () => {
      const api = require(`kafkajs/src/protocol/requests/${kind}/v${v}/request.js`)(args);
      const enc = await frameOf({ correlationId: 77, clientId: "kjs", request: api });
      const frame = new Uint8Array(enc.buffer);
      const req = parseKafkaRequest(frame.subarray(4));
      assert.equal(req.clientId, "kjs");
      const resp = deniedResponse(req)!;
      assert.equal(new DataView(resp.buffer).getInt32(4), 77);
      const { decode, parse } = require(`kafkajs/src/protocol/requests/${kind}/v${v}/response.js`);
      const decoded = await decode(Buffer.from(resp.subarray(8)));
      await assert.rejects(parse(decoded), { type: "TOPIC_AUTHORIZATION_FAILED" });
    });
  }
});

interface Lab {
  port: number;
  broker: Broker;
  records: KafkaRecord[];
  raw(bytes: Uint8Array, o?: { frames?: number; ms?: number }): Promise<RawResult>;
}
interface RawResult {
  corrs: number[];
  closed: boolean;
}

async function withLab(fn: (l: Lab) => Promise<void>): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const broker = new Broker({ advertise: "127.0.0.1", advertisePort: listener.addr.port });
  const records: KafkaRecord[] = [];
  const served: Promise<void>[] = [];
  const judge = (r: KafkaRequestInfo) => !r.topics.some((t) => t.name.startsWith("secret"));
  (async () => {
    for await (const c of listener) {
      served.push(serveKafkaConnection(denoStream(c), {
        connect: async () =>
          denoStream(await Deno.connect({ hostname: "127.0.0.1", port: broker.port })),
        judge,
        onRequest: (r) => records.push(r),
        headerTimeoutMs: 300,
        maxFrameBytes: 1 << 16,
      }));
    }
  })().catch(() => {});
  /** Sends bytes, reads response frames until `frames` arrived, the peer closed, or `ms` passed. */
  const raw = async (bytes: Uint8Array, o: { frames?: number; ms?: number } = {}) => {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
    try {
      await c.write(bytes).catch(() => {});
      let got = new Uint8Array(0);
      const corrs: number[] = [];
      const deadline = Date.now() + (o.ms ?? 2000);
      const buf = new Uint8Array(65536);
      while (corrs.length < (o.frames ?? Infinity) && Date.now() < deadline) {
        const n = await Promise.race([
          c.read(buf).catch(() => null),
          new Promise<"t">((r) => setTimeout(() => r("t"), deadline - Date.now())),
        ]);
        if (n === "t") break;
        if (n === null) return { corrs, closed: true };
        const next = new Uint8Array(got.length + n);
        next.set(got);
        next.set(buf.subarray(0, n), got.length);
        got = next;
        while (got.length >= 8 && got.length >= 4 + new DataView(got.buffer).getInt32(0)) {
          corrs.push(new DataView(got.buffer).getInt32(4));
          got = got.slice(4 + new DataView(got.buffer).getInt32(0));
        }
      }
      return { corrs, closed: false };
    } finally {
      c.close();
    }
  };
  try {
    await fn({ port: listener.addr.port, broker, records, raw });
  } finally {
    listener.close();
    broker.close();
    await Promise.allSettled(served);
  }
}

const frame = (kind: keyof typeof KEYS, v: number, corr: number, b: Value) =>
  requestFrame(
    { apiKey: KEYS[kind], apiVersion: v, correlationId: corr, clientId: "raw" },
    REQ[kind]!(v),
    b,
    v >= VERSIONS[kind][1],
  );
const cat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
};

Deno.test({
  name: "serveKafkaConnection() forwards, denies in order and closes on bad input",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  await withLab(async (lab) => {
    await t.step("kafkajs: allowed topic works, denied gets 29, the connection stays", async () => {
      const kafka = new Kafka({
        clientId: "unit",
        brokers: [`127.0.0.1:${lab.port}`],
        logLevel: logLevel.NOTHING,
        retry: { retries: 0 },
      });
      const p = kafka.producer();
      await p.connect();
      try {
        await p.send({ topic: "orders", messages: [{ value: "one" }] });
        await assert.rejects(
          p.send({ topic: "secret", messages: [{ value: "no" }] }),
          (e: Value) => JSON.stringify([e.type, e.cause?.type]).includes("TOPIC_AUTHORIZATION"),
        );
        const r = await p.send({ topic: "orders", messages: [{ value: "two" }] });
        assert.equal(r[0]?.baseOffset, "1");
      } finally {
        await p.disconnect();
      }
      assert.equal(lab.broker.log("orders").length, 2);
      assert.ok(!lab.broker.logs.has("secret"), "nothing of the denied topic reached the broker");
      const denied = lab.records.find((r) => !r.allowed && r.topics.includes("secret"));
      assert.ok(denied, JSON.stringify(lab.records));
      assert.equal(denied.errorCode, 29);
      assert.equal(denied.clientId, "unit");
    });

    await t.step("a local answer waits behind a forwarded request before it", async () => {
      const fetch = frame("fetch", 11, 1, {
        ...body("fetch", 11),
        max_wait_ms: 300,
        topics: [{
          name: "empty",
          partitions: [{ ...body("fetch", 11).topics[0].partitions[0], fetch_offset: 0 }],
        }],
      });
      const denied = frame("metadata", 4, 2, {
        ...body("metadata", 4),
        topics: [{ name: "secret" }],
      });
      const ok = frame("metadata", 4, 3, { ...body("metadata", 4), topics: [{ name: "orders" }] });
      const r = await lab.raw(cat(fetch, denied, ok), { frames: 3 });
      assert.deepEqual(r.corrs, [1, 2, 3]);
    });

    await t.step("a denied produce with acks 0 gets no answer; the next request does", async () => {
      const p0 = frame("produce", 7, 10, {
        ...body("produce", 7),
        acks: 0,
        topics: [{ name: "secret", partitions: [{ index: 0, records: new Uint8Array(0) }] }],
      });
      const md = frame("metadata", 4, 11, { ...body("metadata", 4), topics: [{ name: "orders" }] });
      const r = await lab.raw(cat(p0, md), { frames: 1 });
      assert.deepEqual(r.corrs, [11]);
    });

    const seen = () => lab.broker.seen.length;
    const cases: [string, Uint8Array][] = [
      ["a negative size", new Uint8Array([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])],
      ["a size over the limit", new Uint8Array([0, 0x10, 0, 0, 0, 3, 0, 9, 0, 0, 0, 1])],
      ["a size under a header", new Uint8Array([0, 0, 0, 4, 0, 3, 0, 9])],
      ["a truncated frame", frame("metadata", 4, 5, body("metadata", 4)).subarray(0, 20)],
      ["an unsupported version (fetch v13: topic ids)", frame("fetch", 12, 6, body("fetch", 12))],
      [
        "an array count beyond the frame",
        (() => {
          const f = frame("metadata", 1, 7, { topics: [{ name: "orders" }] });
          new DataView(f.buffer).setInt32(17, 1_000_000); // topics count after the client id
          return f;
        })(),
      ],
      [
        "invalid UTF-8 in a topic",
        (() => {
          const f = frame("metadata", 1, 8, { topics: [{ name: "ab" }] });
          f[f.length - 1] = 0xff;
          return f;
        })(),
      ],
      ["a negative api key", new Uint8Array([0, 0, 0, 8, 0xff, 0xfe, 0, 0, 0, 0, 0, 1])],
    ];
    // fetch v13 is not in the schema helper: patch v12's version field
    new DataView(cases[4]![1].buffer).setInt16(6, 13);
    for (const [name, bytes] of cases) {
      await t.step(`${name}: closed, nothing forwarded`, async () => {
        const before = seen();
        const n = lab.records.length;
        const r = await lab.raw(bytes, { ms: 1500 });
        assert.equal(r.closed, true, name);
        assert.deepEqual(r.corrs, [], name);
        assert.equal(seen(), before, `${name}: the broker saw nothing`);
        const rec = lab.records.slice(n).find((x) => x.errorCode === -1);
        assert.ok(rec?.error, `${name}: an error record: ${JSON.stringify(lab.records.slice(n))}`);
      });
    }

    await t.step("a client that sends nothing is closed after the header timeout", async () => {
      const t0 = Date.now();
      const r = await lab.raw(new Uint8Array(0), { ms: 2000 });
      assert.equal(r.closed, true);
      assert.ok(Date.now() - t0 < 1500, `closed after ${Date.now() - t0} ms`);
    });
  });
});
