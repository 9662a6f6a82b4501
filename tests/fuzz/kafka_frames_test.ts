// Mutated Kafka request frames against the Kafka proxy's decoder and connection loop. Seeds are
// valid frames of the six topic-bearing types at every supported version (built by the
// independent schema codec, tests/proxy/_kafka_schema.ts) and a few topic-less ones; mutations
// flip bits, write interesting integers (sizes, counts, string lengths), truncate and extend.
// Properties: the decoder either refuses with KafkaWireError / RangeError or returns a request
// whose denied response decodes with the independent codec, names the same topics and carries
// error 29 everywhere; a connection fed mutated frames in random chunks forwards only whole
// frames that decode, each unchanged, and always ends (closed) without throwing.
import assert from "node:assert/strict";
import { parseKafkaRequest } from "../../agent/proxy/kafka_request.ts";
import { KafkaWireError } from "../../agent/proxy/kafka_wire.ts";
import { deniedResponse } from "../../agent/proxy/kafka_reply.ts";
import { serveKafkaConnection } from "../../agent/proxy/kafka.ts";
import type { Stream } from "../../agent/proxy/http_conn.ts";
import { decodeResponse, REQ, requestFrame, RESP, type Value } from "../proxy/_kafka_schema.ts";
import { Findings, fuzzSeed, hex, iterations, Rand } from "./_rand.ts";

const KINDS: [string, number, number, number][] = [ // name, api key, max version, first flexible
  ["produce", 0, 9, 9],
  ["fetch", 1, 12, 12],
  ["listOffsets", 2, 7, 6],
  ["metadata", 3, 12, 9],
  ["offsetCommit", 8, 8, 8],
  ["offsetFetch", 9, 7, 6],
];
const FLEX = Object.fromEntries(KINDS.map(([k, , , f]) => [k, f]));
const KEY_KIND = Object.fromEntries(KINDS.map(([k, key]) => [key, k]));

function seedBody(kind: string, r: Rand): Value {
  const names = ["orders", "logs", "a", "secret-x"].slice(0, r.range(0, 3));
  const part = (p: number) => ({
    index: p,
    partition: p,
    partition_index: p,
    records: r.bytes(r.int(12)),
    current_leader_epoch: 0,
    fetch_offset: 0,
    last_fetched_epoch: -1,
    log_start_offset: 0,
    partition_max_bytes: 100,
    timestamp: -1,
    max_num_offsets: 1,
    committed_offset: 1,
    committed_leader_epoch: 0,
    commit_timestamp: 0,
    committed_metadata: r.chance(0.5) ? null : "m",
  });
  const topics = names.map((name) => {
    const ps = Array.from({ length: r.int(3) }, (_, i) => i);
    return kind === "metadata"
      ? { name }
      : { name, partitions: ps.map(part), partition_indexes: ps };
  });
  return {
    transactional_id: null,
    acks: r.pick([-1, 0, 1]),
    timeout_ms: 1,
    replica_id: -1,
    max_wait_ms: 0,
    min_bytes: 1,
    max_bytes: 100,
    isolation_level: 0,
    session_id: 0,
    session_epoch: -1,
    forgotten: [],
    rack_id: "",
    allow_auto_topic_creation: false,
    include_cluster_ops: false,
    include_topic_ops: false,
    group_id: "g",
    generation_id: 1,
    member_id: "m",
    group_instance_id: null,
    retention_time_ms: -1,
    require_stable: false,
    topics,
  };
}

function seeds(r: Rand): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const [kind, apiKey, max, flexFrom] of KINDS) {
    for (let v = 0; v <= max; v++) {
      out.push(requestFrame(
        { apiKey, apiVersion: v, correlationId: r.int(1000), clientId: r.pick(["c", null, ""]) },
        REQ[kind]!(v),
        seedBody(kind, r),
        v >= flexFrom,
      ));
    }
  }
  for (const [apiKey, v] of [[18, 0], [12, 1], [11, 5], [19, 5]]) { // topic-less types
    out.push(
      requestFrame(
        { apiKey: apiKey!, apiVersion: v!, correlationId: 1, clientId: "c" },
        [],
        {},
        false,
      ),
    );
  }
  out.push(requestFrame( // ApiVersions v3: flexible, decoded whole
    { apiKey: 18, apiVersion: 3, correlationId: 2, clientId: "c" },
    REQ.apiVersions!(3),
    { client_software_name: "librdkafka", client_software_version: "2.0.2" },
    true,
  ));
  return out;
}

const INTERESTING = [
  0,
  1,
  -1,
  2,
  0x7f,
  0x80,
  0xff,
  0x7fff,
  -0x8000,
  0x7fffffff,
  -0x80000000,
  65536,
];

function mutate(r: Rand, base: Uint8Array): Uint8Array {
  let b = base.slice();
  const rounds = r.range(1, 3);
  for (let i = 0; i < rounds; i++) {
    const at = r.int(Math.max(1, b.length));
    switch (r.int(6)) {
      case 0:
        b[at] = (b[at] ?? 0) ^ (1 << r.int(8));
        break;
      case 1:
        if (at + 2 <= b.length) new DataView(b.buffer).setInt16(at, r.pick(INTERESTING));
        break;
      case 2:
        if (at + 4 <= b.length) new DataView(b.buffer).setInt32(at, r.pick(INTERESTING));
        break;
      case 3: { // truncate, keeping the size prefix honest half the time
        b = b.slice(0, Math.max(4, at));
        if (r.chance(0.5)) new DataView(b.buffer).setInt32(0, b.length - 4);
        break;
      }
      case 4: {
        const more = r.bytes(r.int(16));
        const next = new Uint8Array(b.length + more.length);
        next.set(b);
        next.set(more, b.length);
        b = next;
        if (r.chance(0.5)) new DataView(b.buffer).setInt32(0, b.length - 4);
        break;
      }
      default:
        b[at] = r.int(256);
    }
  }
  return b;
}

Deno.test("parseKafkaRequest() refuses or decodes mutated frames; its denials round-trip", () => {
  const seed = fuzzSeed(0x6b61666b);
  const r = new Rand(seed);
  const base = seeds(r);
  const found = new Findings();
  let ok = 0, refused = 0;
  const n = iterations(6000);
  for (let i = 0; i < n; i++) {
    const frame = mutate(r, r.pick(base));
    const what = hex(frame, 80);
    let req;
    try {
      req = parseKafkaRequest(frame.subarray(4));
      ok++;
    } catch (err) {
      refused++;
      if (!(err instanceof KafkaWireError) && !(err instanceof RangeError)) {
        found.add(`${what}: threw ${(err as Error).name}: ${(err as Error).message}`);
      }
      continue;
    }
    const kind = KEY_KIND[req.apiKey];
    const resp = deniedResponse(req);
    if (!kind || !resp) continue;
    try {
      const flex = req.apiVersion >= FLEX[kind]!;
      const d = decodeResponse(resp, RESP[kind]!(req.apiVersion), flex);
      assert.equal(d.correlationId, req.correlationId);
      assert.deepEqual(d.body.topics.map((t: Value) => t.name), req.topics.map((t) => t.name));
      for (const t of d.body.topics) {
        if (kind === "metadata") assert.equal(t.error_code, 29);
        for (const p of t.partitions ?? []) if (kind !== "metadata") assert.equal(p.error_code, 29);
      }
    } catch (err) {
      found.add(`${what}: denied response ${(err as Error).message}`);
    }
  }
  found.assertNone("Mutated Kafka frames", seed);
  if (ok < n / 20 || refused < n / 5) {
    throw new Error(`Too few decoded (${ok}) or refused (${refused}) of ${n} frames`);
  }
});

/** An in-memory client: the given bytes in random chunks, then the end. */
function memoryClient(r: Rand, bytes: Uint8Array, written: Uint8Array[]): Stream {
  let off = 0;
  return {
    read: () => {
      if (off >= bytes.length) return Promise.resolve(null);
      const n = r.range(1, 64);
      const b = bytes.slice(off, off + n);
      off += n;
      return Promise.resolve(b);
    },
    write: (b) => {
      written.push(b.slice());
      return Promise.resolve();
    },
    close: () => {},
  };
}

Deno.test("a Kafka connection fed mutated frames forwards only whole frames that decode", async () => {
  const seed = fuzzSeed(0x6b636f6e);
  const r = new Rand(seed);
  const base = seeds(r);
  const found = new Findings();
  let forwarded = 0;
  const n = iterations(400);
  for (let i = 0; i < n; i++) {
    const frames = Array.from(
      { length: r.range(1, 4) },
      () => r.chance(0.5) ? r.pick(base) : mutate(r, r.pick(base)),
    );
    const bytes = new Uint8Array(frames.reduce((s, f) => s + f.length, 0));
    let at = 0;
    for (const f of frames) {
      bytes.set(f, at);
      at += f.length;
    }
    const upstream: Uint8Array[] = [];
    let upClosed = false;
    const up: Stream = {
      read: () =>
        new Promise((res) => {
          const t = setInterval(() => upClosed && (clearInterval(t), res(null)), 5);
        }),
      write: (b) => (upstream.push(b.slice()), Promise.resolve()),
      close: () => upClosed = true,
    };
    const what = hex(bytes, 80);
    try {
      await serveKafkaConnection(memoryClient(r, bytes, []), {
        connect: () => Promise.resolve(up),
        judge: () => r.chance(0.6),
        onRequest: () => {},
        headerTimeoutMs: 50,
        maxFrameBytes: 4096,
      });
    } catch (err) {
      found.add(`${what}: threw ${(err as Error).message}`);
      continue;
    }
    upClosed = true;
    // Everything forwarded is a whole frame of the input, in order, that decodes.
    const whole: string[] = [];
    for (let p = 0; p + 4 <= bytes.length;) {
      const size = new DataView(bytes.buffer).getInt32(p);
      if (size < 0 || p + 4 + size > bytes.length) break;
      whole.push(hex(bytes.subarray(p, p + 4 + size), 1 << 20));
      p += 4 + size;
    }
    let k = 0;
    forwarded += upstream.length;
    for (const w of upstream) {
      const h = hex(w, 1 << 20);
      while (k < whole.length && whole[k] !== h) k++;
      if (k++ >= whole.length) {
        found.add(`${what}: forwarded bytes that are not a whole input frame: ${hex(w, 40)}`);
        break;
      }
      try {
        parseKafkaRequest(w.subarray(4));
      } catch {
        found.add(`${what}: forwarded a frame that does not decode: ${hex(w, 40)}`);
      }
    }
  }
  found.assertNone("Mutated Kafka connections", seed);
  if (forwarded < n / 4) throw new Error(`Too few frames forwarded (${forwarded}) in ${n} runs`);
});
