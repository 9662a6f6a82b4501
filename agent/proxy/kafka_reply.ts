// The proxy's own answer to a denied Kafka request, as Cilium's Kafka proxy gives it: a response
// of the request's type and version, with its correlation id, carrying the error code (29,
// TOPIC_AUTHORIZATION_FAILED) on every topic and partition the request named. Only Produce,
// Fetch, ListOffsets, Metadata, OffsetCommit and OffsetFetch get one; other types, and Produce
// with acks 0 (the broker would not answer either), get none. Pure: bytes in, bytes out.

import { KafkaWriter } from "./kafka_wire.ts";
import { API, type KafkaRequestInfo, type KafkaTopic, TOPIC_VERSIONS } from "./kafka_request.ts";

export const TOPIC_AUTHORIZATION_FAILED = 29;

type BodyWriter = (w: KafkaWriter, v: number, flex: boolean, t: KafkaTopic[], err: number) => void;

/** The size-prefixed response frame for a denied request, or undefined when none is sent. */
export function deniedResponse(
  req: KafkaRequestInfo,
  err = TOPIC_AUTHORIZATION_FAILED,
): Uint8Array | undefined {
  const body = BODY[req.apiKey];
  const spec = TOPIC_VERSIONS[req.apiKey];
  if (!body || !spec || req.apiVersion > spec.max) return undefined;
  if (req.apiKey === API.produce && req.acks === 0) return undefined;
  const flex = req.apiVersion >= spec.flexible;
  const w = new KafkaWriter().i32(req.correlationId).tags(flex); // response header v0 / v1
  body(w, req.apiVersion, flex, req.topics, err);
  return w.tags(flex).finish(true);
}

/** `[name, [partition…]]` with `partition` writing one partition's fields after its index. */
function topics(
  w: KafkaWriter,
  flex: boolean,
  list: KafkaTopic[],
  partition: (w: KafkaWriter) => void,
): void {
  w.array(list.length, flex);
  for (const t of list) {
    w.string(t.name, flex).array(t.partitions.length, flex);
    for (const p of t.partitions) {
      w.i32(p);
      partition(w);
      w.tags(flex);
    }
    w.tags(flex);
  }
}

const produce: BodyWriter = (w, v, flex, list, err) => {
  topics(w, flex, list, (w) => {
    w.i16(err).i64(-1n); // error_code, base_offset
    if (v >= 2) w.i64(-1n); // log_append_time_ms
    if (v >= 5) w.i64(-1n); // log_start_offset
    if (v >= 8) w.array(0, flex).string(null, flex); // record_errors, error_message
  });
  if (v >= 1) w.i32(0); // throttle_time_ms
};

const fetch: BodyWriter = (w, v, flex, list, err) => {
  if (v >= 1) w.i32(0); // throttle_time_ms
  if (v >= 7) w.i16(0).i32(0); // error_code, session_id
  topics(w, flex, list, (w) => {
    w.i16(err).i64(-1n); // error_code, high_watermark
    if (v >= 4) w.i64(-1n); // last_stable_offset
    if (v >= 5) w.i64(-1n); // log_start_offset
    if (v >= 4) w.array(-1, flex); // aborted_transactions: null
    if (v >= 11) w.i32(-1); // preferred_read_replica
    w.array(0, flex); // records: empty (a length, like bytes)
  });
};

const listOffsets: BodyWriter = (w, v, flex, list, err) => {
  if (v >= 2) w.i32(0); // throttle_time_ms
  topics(w, flex, list, (w) => {
    w.i16(err);
    if (v === 0) w.array(0, flex); // old_style_offsets
    else w.i64(-1n).i64(-1n); // timestamp, offset
    if (v >= 4) w.i32(-1); // leader_epoch
  });
};

const metadata: BodyWriter = (w, v, flex, list, err) => {
  if (v >= 3) w.i32(0); // throttle_time_ms
  w.array(0, flex); // brokers
  if (v >= 2) w.string(null, flex); // cluster_id
  if (v >= 1) w.i32(-1); // controller_id
  w.array(list.length, flex);
  for (const t of list) {
    w.i16(err).string(t.name, flex);
    if (v >= 10) w.i64(0n).i64(0n); // topic_id
    if (v >= 1) w.i8(0); // is_internal
    w.array(0, flex); // partitions
    if (v >= 8) w.i32(-2147483648); // topic_authorized_operations
    w.tags(flex);
  }
  if (v >= 8 && v <= 10) w.i32(-2147483648); // cluster_authorized_operations
};

const offsetCommit: BodyWriter = (w, v, flex, list, err) => {
  if (v >= 3) w.i32(0); // throttle_time_ms
  topics(w, flex, list, (w) => void w.i16(err));
};

const offsetFetch: BodyWriter = (w, v, flex, list, err) => {
  if (v >= 3) w.i32(0); // throttle_time_ms
  topics(w, flex, list, (w) => {
    w.i64(-1n); // committed_offset
    if (v >= 5) w.i32(-1); // committed_leader_epoch
    w.string(null, flex).i16(err); // metadata, error_code
  });
  if (v >= 2) w.i16(0); // error_code
};

const BODY: Record<number, BodyWriter> = {
  [API.produce]: produce,
  [API.fetch]: fetch,
  [API.listOffsets]: listOffsets,
  [API.metadata]: metadata,
  [API.offsetCommit]: offsetCommit,
  [API.offsetFetch]: offsetFetch,
};
