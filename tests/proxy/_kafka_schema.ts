// A test helper: an independent, schema-driven Kafka codec (written from the Kafka message JSON
// schemas, sharing no code with agent/proxy/kafka_*.ts) to build request frames and decode the
// proxy's responses in flexible versions (compact strings and arrays, tagged-field sections),
// which kafkajs's own protocol code does not speak. Schemas list fields in wire order.

export type FieldType =
  | "i8"
  | "i16"
  | "i32"
  | "i64"
  | "bool"
  | "str"
  | "nstr"
  | "bytes"
  | "nbytes"
  | "uuid"
  | { array: Schema; nullable?: boolean }
  | { ints: true };
export type Schema = [string, FieldType][];
// deno-lint-ignore no-explicit-any
export type Value = any;

const enc = new TextEncoder(), dec = new TextDecoder();

export function encodeValue(schema: Schema, v: Value, flex: boolean): number[] {
  const out: number[] = [];
  const int = (x: number, n: number) => {
    for (let i = n - 1; i >= 0; i--) out.push(Number((BigInt(x) >> BigInt(8 * i)) & 0xffn));
  };
  const uvar = (x: number) => {
    while (x >= 0x80) {
      out.push((x & 0x7f) | 0x80);
      x = Math.floor(x / 128);
    }
    out.push(x);
  };
  const len = (n: number, wide: number) => (flex ? uvar(n + 1) : int(n, wide));
  const field = (t: FieldType, x: Value) => {
    if (t === "i8" || t === "bool") int(Number(x), 1);
    else if (t === "i16") int(x, 2);
    else if (t === "i32") int(x, 4);
    else if (t === "i64") int(x, 8);
    else if (t === "uuid") { for (let i = 0; i < 16; i++) out.push(0); }
    else if (t === "str" || t === "nstr") {
      if (x === null) return len(-1, 2);
      const b = enc.encode(x);
      len(b.length, 2);
      out.push(...b);
    } else if (t === "bytes" || t === "nbytes") {
      if (x === null) return len(-1, 4);
      len(x.length, 4);
      out.push(...x);
    } else if ("ints" in t) {
      len(x.length, 4);
      for (const i of x) int(i, 4);
    } else {
      if (x === null) return len(-1, 4);
      len(x.length, 4);
      for (const e of x) out.push(...encodeValue(t.array, e, flex));
    }
  };
  for (const [name, t] of schema) field(t, v[name]);
  if (flex) out.push(0); // no tagged fields
  return out;
}

/** A request frame (size prefix, header v1, or v2 when flexible). */
export function requestFrame(
  h: { apiKey: number; apiVersion: number; correlationId: number; clientId: string | null },
  schema: Schema,
  body: Value,
  flex: boolean,
): Uint8Array {
  const head = encodeValue(
    [["k", "i16"], ["v", "i16"], ["c", "i32"]],
    { k: h.apiKey, v: h.apiVersion, c: h.correlationId },
    false,
  );
  const id = h.clientId === null ? [0xff, 0xff] : (() => {
    const b = enc.encode(h.clientId);
    return [b.length >> 8, b.length & 0xff, ...b];
  })();
  const all = [...head, ...id, ...(flex ? [0] : []), ...encodeValue(schema, body, flex)];
  const n = all.length;
  return new Uint8Array([(n >>> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff, ...all]);
}

export class SchemaDecoder {
  #dv: DataView;
  #b: Uint8Array;
  pos = 0;
  constructor(b: Uint8Array) {
    this.#b = b;
    this.#dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }
  get done(): boolean {
    return this.pos === this.#b.length;
  }
  #uvar(): number {
    let v = 0, s = 0;
    for (;;) {
      const b = this.#b[this.pos++];
      if (b === undefined) throw new Error("truncated varint");
      v += (b & 0x7f) * 2 ** s;
      if (!(b & 0x80)) return v;
      s += 7;
    }
  }
  #int(n: 1 | 2 | 4 | 8): number | bigint {
    if (this.pos + n > this.#b.length) throw new Error(`truncated at ${this.pos}`);
    const at = this.pos;
    this.pos += n;
    return n === 1
      ? this.#dv.getInt8(at)
      : n === 2
      ? this.#dv.getInt16(at)
      : n === 4
      ? this.#dv.getInt32(at)
      : this.#dv.getBigInt64(at);
  }
  #len(flex: boolean, wide: 2 | 4): number {
    return flex ? this.#uvar() - 1 : Number(this.#int(wide));
  }
  #tags(): void {
    const n = this.#uvar();
    for (let i = 0; i < n; i++) {
      this.#uvar();
      this.pos += this.#uvar();
    }
  }
  field(t: FieldType, flex: boolean): Value {
    if (t === "i8") return this.#int(1);
    if (t === "bool") return this.#int(1) !== 0;
    if (t === "i16") return this.#int(2);
    if (t === "i32") return this.#int(4);
    if (t === "i64") return this.#int(8);
    if (t === "uuid") {
      this.pos += 16;
      return "uuid";
    }
    if (t === "str" || t === "nstr" || t === "bytes" || t === "nbytes") {
      const n = this.#len(flex, t.endsWith("str") ? 2 : 4);
      if (n === -1) {
        if (!t.startsWith("n")) throw new Error(`null in non-nullable ${t}`);
        return null;
      }
      const b = this.#b.subarray(this.pos, this.pos + n);
      if (b.length !== n) throw new Error("truncated");
      this.pos += n;
      return t.endsWith("str") ? dec.decode(b) : b.slice();
    }
    const n = this.#len(flex, 4);
    if (n === -1) {
      if ("ints" in t || !t.nullable) throw new Error("null array");
      return null;
    }
    if ("ints" in t) return Array.from({ length: n }, () => this.#int(4));
    return Array.from({ length: n }, () => this.struct(t.array, flex));
  }
  struct(schema: Schema, flex: boolean): Value {
    const o: Value = {};
    for (const [name, t] of schema) o[name] = this.field(t, flex);
    if (flex) this.#tags();
    return o;
  }
}

/** Decodes a response frame (size prefix, header v0 or v1) with a body schema; all bytes used.
 * `headerFlex` is false for ApiVersions, whose flexible versions keep response header v0. */
export function decodeResponse(
  frame: Uint8Array,
  schema: Schema,
  flex: boolean,
  headerFlex = flex,
): { correlationId: number; body: Value } {
  const size = new DataView(frame.buffer, frame.byteOffset).getInt32(0);
  if (size !== frame.length - 4) throw new Error(`size ${size} but ${frame.length - 4} bytes`);
  const d = new SchemaDecoder(frame.subarray(4));
  const correlationId = Number(d.field("i32", false));
  if (headerFlex) d.struct([], true); // response header v1 tags
  const body = d.struct(schema, flex);
  if (!d.done) throw new Error(`${frame.length - 4 - d.pos} bytes left over`);
  return { correlationId, body };
}

/** Request and response schemas, per type, as functions of the version. */
export const REQ: Record<string, (v: number) => Schema> = {
  apiVersions: (v) =>
    v >= 3 ? [["client_software_name", "str"], ["client_software_version", "str"]] : [],
  produce: (v) => [
    ...(v >= 3 ? [["transactional_id", "nstr"]] as Schema : []),
    ["acks", "i16"],
    ["timeout_ms", "i32"],
    ["topics", {
      array: [["name", "str"], ["partitions", {
        array: [["index", "i32"], ["records", "nbytes"]],
      }]],
    }],
  ],
  fetch: (v) => [
    ["replica_id", "i32"],
    ["max_wait_ms", "i32"],
    ["min_bytes", "i32"],
    ...(v >= 3 ? [["max_bytes", "i32"]] as Schema : []),
    ...(v >= 4 ? [["isolation_level", "i8"]] as Schema : []),
    ...(v >= 7 ? [["session_id", "i32"], ["session_epoch", "i32"]] as Schema : []),
    ["topics", {
      array: [["name", "str"], ["partitions", {
        array: [
          ["partition", "i32"],
          ...(v >= 9 ? [["current_leader_epoch", "i32"]] as Schema : []),
          ["fetch_offset", "i64"],
          ...(v >= 12 ? [["last_fetched_epoch", "i32"]] as Schema : []),
          ...(v >= 5 ? [["log_start_offset", "i64"]] as Schema : []),
          ["partition_max_bytes", "i32"],
        ],
      }]],
    }],
    ...(v >= 7
      ? [["forgotten", { array: [["topic", "str"], ["partitions", { ints: true }]] }]] as Schema
      : []),
    ...(v >= 11 ? [["rack_id", "str"]] as Schema : []),
  ],
  metadata: (v) => [
    ["topics", {
      array: [...(v >= 10 ? [["topic_id", "uuid"]] as Schema : []), ["name", "nstr"]],
      nullable: v >= 1,
    }],
    ...(v >= 4 ? [["allow_auto_topic_creation", "bool"]] as Schema : []),
    ...(v >= 8 && v <= 10 ? [["include_cluster_ops", "bool"]] as Schema : []),
    ...(v >= 8 ? [["include_topic_ops", "bool"]] as Schema : []),
  ],
  listOffsets: (v) => [
    ["replica_id", "i32"],
    ...(v >= 2 ? [["isolation_level", "i8"]] as Schema : []),
    ["topics", {
      array: [["name", "str"], ["partitions", {
        array: [
          ["partition_index", "i32"],
          ...(v >= 4 ? [["current_leader_epoch", "i32"]] as Schema : []),
          ["timestamp", "i64"],
          ...(v === 0 ? [["max_num_offsets", "i32"]] as Schema : []),
        ],
      }]],
    }],
  ],
  offsetCommit: (v) => [
    ["group_id", "str"],
    ...(v >= 1 ? [["generation_id", "i32"], ["member_id", "str"]] as Schema : []),
    ...(v >= 7 ? [["group_instance_id", "nstr"]] as Schema : []),
    ...(v >= 2 && v <= 4 ? [["retention_time_ms", "i64"]] as Schema : []),
    ["topics", {
      array: [["name", "str"], ["partitions", {
        array: [
          ["partition_index", "i32"],
          ["committed_offset", "i64"],
          ...(v >= 6 ? [["committed_leader_epoch", "i32"]] as Schema : []),
          ...(v === 1 ? [["commit_timestamp", "i64"]] as Schema : []),
          ["committed_metadata", "nstr"],
        ],
      }]],
    }],
  ],
  offsetFetch: (v) => [
    ["group_id", "str"],
    ["topics", {
      array: [["name", "str"], ["partition_indexes", { ints: true }]],
      nullable: v >= 2,
    }],
    ...(v >= 7 ? [["require_stable", "bool"]] as Schema : []),
  ],
};

export const RESP: Record<string, (v: number) => Schema> = {
  apiVersions: (v) => [
    ["error_code", "i16"],
    ["api_keys", { array: [["api_key", "i16"], ["min_version", "i16"], ["max_version", "i16"]] }],
    ...(v >= 1 ? [["throttle_time_ms", "i32"]] as Schema : []),
  ],
  produce: (v) => [
    ["topics", {
      array: [["name", "str"], ["partitions", {
        array: [
          ["index", "i32"],
          ["error_code", "i16"],
          ["base_offset", "i64"],
          ...(v >= 2 ? [["log_append_time_ms", "i64"]] as Schema : []),
          ...(v >= 5 ? [["log_start_offset", "i64"]] as Schema : []),
          ...(v >= 8
            ? [["record_errors", {
              array: [["batch_index", "i32"], ["message", "nstr"]],
            }], ["error_message", "nstr"]] as Schema
            : []),
        ],
      }]],
    }],
    ...(v >= 1 ? [["throttle_time_ms", "i32"]] as Schema : []),
  ],
  fetch: (v) => [
    ...(v >= 1 ? [["throttle_time_ms", "i32"]] as Schema : []),
    ...(v >= 7 ? [["error_code", "i16"], ["session_id", "i32"]] as Schema : []),
    ["topics", {
      array: [["name", "str"], ["partitions", {
        array: [
          ["partition_index", "i32"],
          ["error_code", "i16"],
          ["high_watermark", "i64"],
          ...(v >= 4 ? [["last_stable_offset", "i64"]] as Schema : []),
          ...(v >= 5 ? [["log_start_offset", "i64"]] as Schema : []),
          ...(v >= 4
            ? [["aborted", {
              array: [["producer_id", "i64"], ["first_offset", "i64"]],
              nullable: true,
            }]] as Schema
            : []),
          ...(v >= 11 ? [["preferred_read_replica", "i32"]] as Schema : []),
          ["records", "nbytes"],
        ],
      }]],
    }],
  ],
  metadata: (v) => [
    ...(v >= 3 ? [["throttle_time_ms", "i32"]] as Schema : []),
    ["brokers", {
      array: [
        ["node_id", "i32"],
        ["host", "str"],
        ["port", "i32"],
        ...(v >= 1 ? [["rack", "nstr"]] as Schema : []),
      ],
    }],
    ...(v >= 2 ? [["cluster_id", "nstr"]] as Schema : []),
    ...(v >= 1 ? [["controller_id", "i32"]] as Schema : []),
    ["topics", {
      array: [
        ["error_code", "i16"],
        ["name", "nstr"],
        ...(v >= 10 ? [["topic_id", "uuid"]] as Schema : []),
        ...(v >= 1 ? [["is_internal", "bool"]] as Schema : []),
        ["partitions", {
          array: [
            ["error_code", "i16"],
            ["partition_index", "i32"],
            ["leader_id", "i32"],
            ...(v >= 7 ? [["leader_epoch", "i32"]] as Schema : []),
            ["replica_nodes", { ints: true }],
            ["isr_nodes", { ints: true }],
            ...(v >= 5 ? [["offline_replicas", { ints: true }]] as Schema : []),
          ],
        }],
        ...(v >= 8 ? [["topic_authorized_operations", "i32"]] as Schema : []),
      ],
    }],
    ...(v >= 8 && v <= 10 ? [["cluster_authorized_operations", "i32"]] as Schema : []),
  ],
  listOffsets: (v) => [
    ...(v >= 2 ? [["throttle_time_ms", "i32"]] as Schema : []),
    ["topics", {
      array: [["name", "str"], ["partitions", {
        array: [
          ["partition_index", "i32"],
          ["error_code", "i16"],
          ...(v === 0
            ? [["old_style_offsets", { array: [["o", "i64"]] }]] as Schema
            : [["timestamp", "i64"], ["offset", "i64"]] as Schema),
          ...(v >= 4 ? [["leader_epoch", "i32"]] as Schema : []),
        ],
      }]],
    }],
  ],
  offsetCommit: (v) => [
    ...(v >= 3 ? [["throttle_time_ms", "i32"]] as Schema : []),
    ["topics", {
      array: [["name", "str"], ["partitions", {
        array: [["partition_index", "i32"], ["error_code", "i16"]],
      }]],
    }],
  ],
  offsetFetch: (v) => [
    ...(v >= 3 ? [["throttle_time_ms", "i32"]] as Schema : []),
    ["topics", {
      array: [["name", "str"], ["partitions", {
        array: [
          ["partition_index", "i32"],
          ["committed_offset", "i64"],
          ...(v >= 5 ? [["committed_leader_epoch", "i32"]] as Schema : []),
          ["metadata", "nstr"],
          ["error_code", "i16"],
        ],
      }]],
    }],
    ...(v >= 2 ? [["error_code", "i16"]] as Schema : []),
  ],
};
