// Decoding of one Kafka request (the bytes after the size prefix) into what the policy judges:
// the header (api key, version, correlation id, client id; header v2's tagged fields in flexible
// versions) and, for the request types whose topics Cilium decodes (Produce, Fetch, ListOffsets,
// Metadata, OffsetCommit, OffsetFetch), every topic with its partitions, plus Produce's acks.
// Those six are decoded only in the versions listed in TOPIC_VERSIONS (their later versions name
// topics by id or change layout): another version is refused, never guessed. Their flexible
// versions (request header v2, compact strings and arrays, tagged-field sections) are read to the
// last byte: a frame that ends early or has bytes left over is refused. So is ApiVersions v0-3
// (v3 flexible: header v2, client software name and version); a later ApiVersions is passed on
// undecoded, as the protocol has the broker answer an unknown one in v0. It decides nothing.

import { KafkaReader, KafkaWireError } from "./kafka_wire.ts";

export { KafkaWireError };

export interface KafkaTopic {
  name: string;
  partitions: number[];
}

export interface KafkaRequestInfo {
  apiKey: number;
  apiVersion: number;
  correlationId: number;
  clientId: string;
  /** The decoded topics in request order (empty for the other types and for "all topics"). */
  topics: KafkaTopic[];
  /** A null topic list (Metadata v1+, OffsetFetch v2+): the request asks for all topics. */
  allTopics: boolean;
  /** Produce's acks (0: the broker sends no response). */
  acks?: number;
}

export const API = {
  produce: 0,
  fetch: 1,
  listOffsets: 2,
  metadata: 3,
  offsetCommit: 8,
  offsetFetch: 9,
  controlledShutdown: 7,
  apiVersions: 18,
} as const;

/** Versions decoded, and the first flexible version, of the topic-bearing types. */
export const TOPIC_VERSIONS: Readonly<Record<number, { max: number; flexible: number }>> = {
  [API.produce]: { max: 9, flexible: 9 },
  [API.fetch]: { max: 12, flexible: 12 },
  [API.listOffsets]: { max: 7, flexible: 6 },
  [API.metadata]: { max: 12, flexible: 9 },
  [API.offsetCommit]: { max: 8, flexible: 8 },
  [API.offsetFetch]: { max: 7, flexible: 6 },
};

/** Whether a request of this type and version uses request header v0 (no client id). */
function headerV0(apiKey: number, version: number): boolean {
  return apiKey === API.controlledShutdown && version === 0;
}

/** Decodes a request; throws KafkaWireError (or RangeError for an unsupported version). */
export function parseKafkaRequest(frame: Uint8Array): KafkaRequestInfo {
  const r = new KafkaReader(frame);
  const apiKey = r.i16();
  const apiVersion = r.i16();
  const correlationId = r.i32();
  if (apiKey < 0) throw new KafkaWireError(`Invalid Kafka api key ${apiKey}`);
  if (apiVersion < 0) throw new KafkaWireError(`Invalid Kafka api version ${apiVersion}`);
  const clientId = headerV0(apiKey, apiVersion) ? "" : r.string(false, true) ?? "";
  const info: KafkaRequestInfo = {
    apiKey,
    apiVersion,
    correlationId,
    clientId,
    topics: [],
    allTopics: false,
  };
  if (apiKey === API.apiVersions) return apiVersions(r, info);
  const spec = TOPIC_VERSIONS[apiKey];
  if (!spec) return info;
  if (apiVersion > spec.max) {
    throw new RangeError(
      `Unsupported Kafka api version ${apiVersion} of api key ${apiKey}: expected 0-${spec.max}`,
    );
  }
  const flex = apiVersion >= spec.flexible;
  if (flex) r.skipTags(); // request header v2
  BODY[apiKey]!(r, apiVersion, flex, info);
  if (flex) r.skipTags(); // the body's own tagged fields
  return ended(r, info);
}

function ended(r: KafkaReader, info: KafkaRequestInfo): KafkaRequestInfo {
  if (r.left === 0) return info;
  throw new KafkaWireError(
    `Invalid Kafka request (api key ${info.apiKey} v${info.apiVersion}): ${r.left} bytes after its end`,
  );
}

/** ApiVersions v0-2 have an empty body; v3 is flexible, but its response keeps header v0. */
function apiVersions(r: KafkaReader, info: KafkaRequestInfo): KafkaRequestInfo {
  if (info.apiVersion > 3) return info;
  if (info.apiVersion === 3) {
    r.skipTags(); // request header v2
    r.string(true); // client_software_name
    r.string(true); // client_software_version
    r.skipTags();
  }
  return ended(r, info);
}

type BodyReader = (r: KafkaReader, v: number, flex: boolean, out: KafkaRequestInfo) => void;

/** Reads `[name, partitions…]` entries: `partition` reads one partition and returns its index. */
function topics(
  r: KafkaReader,
  flex: boolean,
  out: KafkaRequestInfo,
  partition: (r: KafkaReader) => number,
  nullable = false,
): void {
  const n = r.arrayLength(flex, nullable);
  if (n === -1) {
    out.allTopics = true;
    return;
  }
  for (let i = 0; i < n; i++) {
    const name = r.string(flex)!;
    const np = r.arrayLength(flex);
    const partitions: number[] = [];
    for (let p = 0; p < np; p++) partitions.push(partition(r));
    if (flex) r.skipTags();
    out.topics.push({ name, partitions });
  }
}

const produce: BodyReader = (r, v, flex, out) => {
  if (v >= 3) r.string(flex, true); // transactional_id
  out.acks = r.i16();
  r.i32(); // timeout_ms
  topics(r, flex, out, (r) => {
    const index = r.i32();
    r.bytes(flex); // records
    if (flex) r.skipTags();
    return index;
  });
};

const fetch: BodyReader = (r, v, flex, out) => {
  r.skip(12, "fetch header"); // replica_id, max_wait_ms, min_bytes
  if (v >= 3) r.i32(); // max_bytes
  if (v >= 4) r.i8(); // isolation_level
  if (v >= 7) r.skip(8, "fetch session"); // session_id, session_epoch
  topics(r, flex, out, (r) => {
    const index = r.i32();
    // current_leader_epoch (v9+), fetch_offset, last_fetched_epoch (v12), log_start_offset (v5+),
    // partition_max_bytes
    r.skip((v >= 9 ? 4 : 0) + 8 + (v >= 12 ? 4 : 0) + (v >= 5 ? 8 : 0) + 4, "fetch partition");
    if (flex) r.skipTags();
    return index;
  });
  if (v >= 7) { // forgotten_topics_data
    const n = r.arrayLength(flex);
    for (let i = 0; i < n; i++) {
      r.string(flex);
      r.skip(4 * r.arrayLength(flex), "forgotten partitions");
      if (flex) r.skipTags();
    }
  }
  if (v >= 11) r.string(flex); // rack_id
};

const listOffsets: BodyReader = (r, v, flex, out) => {
  r.i32(); // replica_id
  if (v >= 2) r.i8(); // isolation_level
  topics(r, flex, out, (r) => {
    const index = r.i32();
    r.skip((v >= 4 ? 4 : 0) + 8 + (v === 0 ? 4 : 0), "list-offsets partition");
    if (flex) r.skipTags();
    return index;
  });
};

const metadata: BodyReader = (r, v, flex, out) => {
  const n = r.arrayLength(flex, v >= 1);
  if (n === -1) out.allTopics = true;
  for (let i = 0; i < n; i++) {
    if (v >= 10) r.skip(16, "topic id");
    const name = r.string(flex, v >= 12);
    if (name === null) throw new RangeError("Unsupported Kafka metadata request by topic id");
    if (flex) r.skipTags();
    out.topics.push({ name, partitions: [] });
  }
  // allow_auto_topic_creation (v4+), include_cluster_authorized_operations (v8-10),
  // include_topic_authorized_operations (v8+)
  r.skip((v >= 4 ? 1 : 0) + (v >= 8 && v <= 10 ? 1 : 0) + (v >= 8 ? 1 : 0), "metadata flags");
};

const offsetCommit: BodyReader = (r, v, flex, out) => {
  r.string(flex); // group_id
  if (v >= 1) {
    r.i32(); // generation_id
    r.string(flex); // member_id
  }
  if (v >= 7) r.string(flex, true); // group_instance_id
  if (v >= 2 && v <= 4) r.i64(); // retention_time_ms
  topics(r, flex, out, (r) => {
    const index = r.i32();
    r.skip(8 + (v === 1 ? 8 : 0) + (v >= 6 ? 4 : 0), "offset-commit partition");
    r.string(flex, true); // committed_metadata
    if (flex) r.skipTags();
    return index;
  });
};

const offsetFetch: BodyReader = (r, v, flex, out) => {
  r.string(flex); // group_id
  const n = r.arrayLength(flex, v >= 2);
  if (n === -1) out.allTopics = true;
  for (let i = 0; i < n; i++) {
    const name = r.string(flex)!;
    const np = r.arrayLength(flex);
    const partitions: number[] = [];
    for (let p = 0; p < np; p++) partitions.push(r.i32());
    if (flex) r.skipTags();
    out.topics.push({ name, partitions });
  }
  if (v >= 7) r.i8(); // require_stable
};

const BODY: Record<number, BodyReader> = {
  [API.produce]: produce,
  [API.fetch]: fetch,
  [API.listOffsets]: listOffsets,
  [API.metadata]: metadata,
  [API.offsetCommit]: offsetCommit,
  [API.offsetFetch]: offsetFetch,
};
