// Kafka's flexible versions in the proxy: the wire codec (unsigned varints, compact strings,
// bytes and arrays, tagged-field sections) round-trips and refuses overflowing varints and lying
// counts; flexible requests with tagged fields in header v2 and the body decode, and every
// truncation or trailing byte is refused; then a proxy connection in front of the test broker
// fixture with the flexible test client (ApiVersions v3, Metadata v12, Produce v9, Fetch v12):
// allowed requests pass, a denied topic gets error 29 in a response of the same flexible version
// (response header v1), the connection stays usable, and a malformed flexible frame closes it
// with nothing forwarded.
import assert from "node:assert/strict";
import { KafkaReader, KafkaWireError, KafkaWriter } from "../../agent/proxy/kafka_wire.ts";
import { type KafkaRequestInfo, parseKafkaRequest } from "../../agent/proxy/kafka_request.ts";
import { deniedResponse } from "../../agent/proxy/kafka_reply.ts";
import { type KafkaRecord, serveKafkaConnection } from "../../agent/proxy/kafka.ts";
import { denoStream } from "../../agent/proxy/proxy.ts";
import { Broker } from "../fixtures/kafka_broker.ts";
import { decodeResponse, RESP } from "./_kafka_schema.ts";
import {
  fetchBody,
  FlexClient,
  metadataBody,
  produceBody,
  recordValues,
} from "./_kafka_flex_client.ts";

const bytes = (...b: number[]) => new Uint8Array(b);

Deno.test("KafkaReader and KafkaWriter round-trip flexible types and refuse bad varints", async (t) => {
  await t.step("unsigned varints at every length boundary", () => {
    const xs = [0, 1, 127, 128, 16383, 16384, 2 ** 21 - 1, 2 ** 21, 2 ** 28, 2 ** 31, 2 ** 32 - 1];
    const w = new KafkaWriter();
    for (const x of xs) w.uvarint(x);
    const r = new KafkaReader(w.finish());
    assert.deepEqual(xs.map(() => r.uvarint()), xs);
    assert.equal(r.left, 0);
  });
  await t.step("compact strings, nullable strings, bytes, arrays and tags", () => {
    const w = new KafkaWriter().string("orders", true).string(null, true).string("", true)
      .uvarint(4).bytes(bytes(1, 2, 3)).array(2, true).array(-1, true).tags(true);
    const r = new KafkaReader(w.finish());
    assert.equal(r.string(true), "orders");
    assert.equal(r.string(true, true), null);
    assert.equal(r.string(true), "");
    assert.deepEqual(r.bytes(true), bytes(1, 2, 3));
    assert.equal(r.arrayLength(true), 2);
    assert.equal(r.arrayLength(true, true), -1);
    r.skipTags();
    assert.equal(r.left, 0);
  });
  const bad: [string, Uint8Array, (r: KafkaReader) => unknown][] = [
    ["a varint of six bytes", bytes(0x80, 0x80, 0x80, 0x80, 0x80, 0x01), (r) => r.uvarint()],
    ["a varint over 32 bits", bytes(0xff, 0xff, 0xff, 0xff, 0x1f), (r) => r.uvarint()],
    ["a varint cut short", bytes(0x80, 0x80), (r) => r.uvarint()],
    ["a compact string longer than the frame", bytes(0x10, 0x61), (r) => r.string(true)],
    ["a null in a non-nullable compact string", bytes(0x00), (r) => r.string(true)],
    ["a compact array count beyond the frame", bytes(0x7f, 0, 0), (r) => r.arrayLength(true)],
    ["a null non-nullable compact array", bytes(0x00), (r) => r.arrayLength(true)],
    ["a tagged-field count beyond the frame", bytes(0x05, 0x00, 0x00), (r) => r.skipTags()],
    ["tagged fields out of order", bytes(0x02, 0x03, 0x00, 0x01, 0x00), (r) => r.skipTags()],
    ["a repeated tag", bytes(0x02, 0x01, 0x00, 0x01, 0x00), (r) => r.skipTags()],
    ["a tagged field longer than the frame", bytes(0x01, 0x00, 0x09, 0x00), (r) => r.skipTags()],
    ["invalid UTF-8 in a compact string", bytes(0x03, 0xc3, 0x28), (r) => r.string(true)],
  ];
  for (const [name, b, read] of bad) {
    await t.step(`${name}: KafkaWireError`, () => {
      assert.throws(() => read(new KafkaReader(b)), KafkaWireError, name);
    });
  }
});

/** Request header v2 with tagged fields (tags 0 and 5), then `body`. */
function flexFrame(apiKey: number, v: number, corr: number, body: (w: KafkaWriter) => void) {
  const w = new KafkaWriter().i16(apiKey).i16(v).i32(corr).string("flex", false);
  w.uvarint(2).uvarint(0).uvarint(2).bytes(bytes(7, 7)).uvarint(5).uvarint(0); // header tags
  body(w);
  return w.finish();
}
/** A topic-level tagged field (tag 1, three bytes), as a newer client might send. */
const someTags = (w: KafkaWriter) => w.uvarint(1).uvarint(1).uvarint(3).bytes(bytes(1, 2, 3));

const FLEX: [string, Uint8Array, string[]][] = [
  [
    "produce v9",
    flexFrame(0, 9, 11, (w) => {
      w.string(null, true).i16(-1).i32(1000).array(2, true);
      for (const name of ["orders", "logs"]) {
        w.string(name, true).array(1, true).i32(0).uvarint(4).bytes(bytes(9, 9, 9));
        someTags(w); // partition
        someTags(w); // topic
      }
      someTags(w); // body
    }),
    ["orders", "logs"],
  ],
  [
    "fetch v12",
    flexFrame(1, 12, 12, (w) => {
      w.i32(-1).i32(100).i32(1).i32(1 << 20).i8(0).i32(0).i32(-1).array(1, true);
      w.string("orders", true).array(1, true).i32(0).i32(-1).i64(5n).i32(-1).i64(-1n).i32(1 << 16);
      w.tags(true).tags(true);
      w.array(1, true).string("old", true).array(1, true).i32(3).tags(true); // forgotten
      w.string("rack-a", true).tags(true);
    }),
    ["orders"],
  ],
  [
    "metadata v12",
    flexFrame(3, 12, 13, (w) => {
      w.array(1, true).i64(0n).i64(0n).string("orders", true);
      someTags(w);
      w.i8(1).i8(0).tags(true);
    }),
    ["orders"],
  ],
  [
    "metadata v9",
    flexFrame(3, 9, 14, (w) => {
      w.array(1, true).string("orders", true).tags(true).i8(1).i8(0).i8(0).tags(true);
    }),
    ["orders"],
  ],
  [
    "offsetFetch v7",
    flexFrame(9, 7, 15, (w) => {
      w.string("g", true).array(1, true).string("orders", true).array(1, true).i32(0).tags(true);
      w.i8(0).tags(true);
    }),
    ["orders"],
  ],
];

Deno.test("parseKafkaRequest() reads flexible frames to the last byte", async (t) => {
  for (const [name, frame, topics] of FLEX) {
    await t.step(`${name}: tagged fields skipped, topics read, denial of the same version`, () => {
      const req = parseKafkaRequest(frame);
      assert.equal(req.clientId, "flex");
      assert.deepEqual(req.topics.map((x) => x.name), topics);
      const resp = deniedResponse(req);
      assert.ok(resp, name);
      const kind = { 0: "produce", 1: "fetch", 3: "metadata", 9: "offsetFetch" }[req.apiKey]!;
      const { correlationId, body } = decodeResponse(resp, RESP[kind]!(req.apiVersion), true);
      assert.equal(correlationId, req.correlationId);
      const codes = body.topics.flatMap((x: KafkaRequestInfo & { error_code?: number }) =>
        kind === "metadata"
          ? [x.error_code]
          : (x as unknown as { partitions: { error_code: number }[] }).partitions.map((p) =>
            p.error_code
          )
      );
      assert.ok(codes.length > 0 && codes.every((c: number) => c === 29), `${name}: ${codes}`);
    });
    await t.step(`${name}: every truncation and a trailing byte are refused`, () => {
      for (let n = 8; n < frame.length; n++) {
        assert.throws(() => parseKafkaRequest(frame.subarray(0, n)), KafkaWireError, `${n} bytes`);
      }
      const longer = new Uint8Array(frame.length + 1);
      longer.set(frame);
      assert.throws(() => parseKafkaRequest(longer), /1 bytes after its end/);
    });
  }
});

Deno.test("parseKafkaRequest() reads ApiVersions v3 (flexible) whole, passes v4 on", () => {
  const v3 = flexFrame(18, 3, 21, (w) => {
    w.string("librdkafka", true).string("2.0.2", true);
    someTags(w);
  });
  const req = parseKafkaRequest(v3);
  assert.deepEqual([req.apiKey, req.apiVersion, req.clientId, req.topics], [18, 3, "flex", []]);
  assert.equal(deniedResponse(req), undefined, "no local answer for a topic-less type");
  for (let n = 8; n < v3.length; n++) {
    assert.throws(() => parseKafkaRequest(v3.subarray(0, n)), KafkaWireError, `${n} bytes`);
  }
  const v2 = new KafkaWriter().i16(18).i16(2).i32(22).string("kjs", false).finish();
  assert.equal(parseKafkaRequest(v2).clientId, "kjs");
  const extra = new Uint8Array(v2.length + 1);
  extra.set(v2);
  assert.throws(() => parseKafkaRequest(extra), /1 bytes after its end/);
  // a version newer than the proxy knows: the broker answers it in v0 (error 35), per protocol
  const v4 = new Uint8Array(v3);
  new DataView(v4.buffer).setInt16(2, 4);
  assert.equal(parseKafkaRequest(v4).apiVersion, 4);
});

Deno.test({
  name: "serveKafkaConnection() with flexible clients: allowed pass, denied get 29 in kind",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const broker = new Broker({ advertise: "127.0.0.1", advertisePort: listener.addr.port });
  const records: KafkaRecord[] = [];
  const served: Promise<void>[] = [];
  (async () => {
    for await (const c of listener) {
      served.push(serveKafkaConnection(denoStream(c), {
        connect: async () =>
          denoStream(await Deno.connect({ hostname: "127.0.0.1", port: broker.port })),
        judge: (r) => !r.topics.some((x) => x.name.startsWith("secret")),
        onRequest: (r) => records.push(r),
        headerTimeoutMs: 500,
      }));
    }
  })().catch(() => {});
  const c = await FlexClient.connect("127.0.0.1", listener.addr.port);
  try {
    await t.step(
      "ApiVersions v3 (response header v0) advertises the flexible versions",
      async () => {
        const av = await c.request("apiVersions", {
          client_software_name: "t",
          client_software_version: "1",
        });
        assert.equal(av.body.error_code, 0);
        const max = (k: number) =>
          av.body.api_keys.find((x: { api_key: number }) => x.api_key === k);
        assert.equal(max(0)?.max_version, 9);
        assert.equal(max(1)?.max_version, 12);
        assert.equal(max(3)?.max_version, 12);
      },
    );
    await t.step("Metadata v12 and Produce v9 on an allowed topic reach the broker", async () => {
      const md = await c.request("metadata", metadataBody(["orders"]));
      assert.equal(md.body.topics[0].error_code, 0);
      assert.equal(md.body.brokers[0].port, listener.addr.port);
      const p = await c.request("produce", produceBody("orders", "flex-1"));
      assert.equal(p.body.topics[0].partitions[0].error_code, 0);
      assert.equal(broker.log("orders").length, 1);
    });
    await t.step(
      "a denied topic gets 29 in Produce v9 and Metadata v12; nothing forwarded",
      async () => {
        const n = broker.seen.length;
        const p = await c.request("produce", produceBody("secret", "no"));
        assert.equal(p.body.topics[0].name, "secret");
        assert.equal(p.body.topics[0].partitions[0].error_code, 29);
        const md = await c.request("metadata", metadataBody(["secret"]));
        assert.equal(md.body.topics[0].error_code, 29);
        assert.equal(broker.seen.length, n, "the broker saw neither");
        assert.ok(!broker.logs.has("secret"));
        const denied = records.filter((r) => !r.allowed);
        assert.deepEqual(denied.map((r) => [r.apiKey, r.apiVersion, r.errorCode]), [
          [0, 9, 29],
          [3, 12, 29],
        ]);
      },
    );
    await t.step("the same connection goes on: Produce v9 then Fetch v12 read back", async () => {
      const p = await c.request("produce", produceBody("orders", "flex-2"));
      assert.equal(p.body.topics[0].partitions[0].base_offset, 1n);
      const f = await c.request("fetch", fetchBody("orders", 0));
      const part = f.body.topics[0].partitions[0];
      assert.equal(part.error_code, 0);
      assert.deepEqual(recordValues(part.records), ["flex-1", "flex-2"]);
      const flexible = broker.seen.filter((s) => s.flexible).map((s) =>
        `${s.apiKey}v${s.apiVersion}`
      );
      assert.deepEqual(flexible, ["18v3", "3v12", "0v9", "0v9", "1v12"]);
    });
    await t.step(
      "a malformed flexible frame closes the connection, nothing forwarded",
      async () => {
        const n = broker.seen.length;
        const f = c.frame("produce", produceBody("orders", "x"));
        f[f.length - 1] = 0x05; // the body's tagged-field count: 5 fields in no bytes
        await c.send(f);
        assert.equal(await c.read(), null);
        assert.equal(broker.seen.length, n);
        assert.match(records.at(-1)?.error ?? "", /tagged fields/);
      },
    );
  } finally {
    c.close();
    listener.close();
    broker.close();
    await Promise.allSettled(served);
  }
});
