// A test client for Kafka's flexible versions, which neither kafkajs (none) nor kcat's librdkafka
// 2.0.2 (ApiVersions v3 only; Metadata v4, Produce v7, Fetch v11) sends: ApiVersions v3,
// Metadata v12, Produce v9 and Fetch v12 with request header v2, built and decoded by the
// independent schema codec (_kafka_schema.ts) over one TCP connection, record batches (magic 2,
// CRC-32C) written and read here. As a program (run in a pod by the e2e test):
// `produce <host:port> <topic,topic…> <message>` (Metadata then Produce per topic, in turn) and
// `consume <host:port> <topic> <count>` (Fetch from offset 0) print one JSON line.

import {
  decodeResponse,
  REQ,
  requestFrame,
  RESP,
  type Schema,
  type Value,
} from "./_kafka_schema.ts";

/** The versions this client sends (all flexible). */
export const FLEX_VERSIONS = { apiVersions: 3, metadata: 12, produce: 9, fetch: 12 } as const;
const KEYS = { apiVersions: 18, metadata: 3, produce: 0, fetch: 1 } as const;
type Kind = keyof typeof KEYS;

export class FlexClient {
  readonly #c: Deno.TcpConn;
  #corr = 1;
  #buf = new Uint8Array(0);

  private constructor(c: Deno.TcpConn) {
    this.#c = c;
  }

  static async connect(hostname: string, port: number): Promise<FlexClient> {
    return new FlexClient(await Deno.connect({ hostname, port }));
  }

  /** The raw frame of a request (for tests that tamper with it). */
  frame(kind: Kind, body: Value, corr = this.#corr++): Uint8Array {
    const v = FLEX_VERSIONS[kind];
    const h = { apiKey: KEYS[kind], apiVersion: v, correlationId: corr, clientId: "flex-client" };
    return requestFrame(h, REQ[kind]!(v), body, true);
  }

  async send(bytes: Uint8Array): Promise<void> {
    for (let off = 0; off < bytes.length;) off += await this.#c.write(bytes.subarray(off));
  }

  /** The next response frame (size prefix included), or null when the peer closed. */
  async read(): Promise<Uint8Array | null> {
    const chunk = new Uint8Array(65536);
    for (;;) {
      if (this.#buf.length >= 4) {
        const n = new DataView(this.#buf.buffer, this.#buf.byteOffset).getInt32(0);
        if (this.#buf.length >= 4 + n) {
          const f = this.#buf.slice(0, 4 + n);
          this.#buf = this.#buf.slice(4 + n);
          return f;
        }
      }
      const n = await this.#c.read(chunk).catch(() => null);
      if (n === null) return null;
      const next = new Uint8Array(this.#buf.length + n);
      next.set(this.#buf);
      next.set(chunk.subarray(0, n), this.#buf.length);
      this.#buf = next;
    }
  }

  /** Sends one request and decodes its response (ApiVersions: response header v0). */
  async request(kind: Kind, body: Value): Promise<{ correlationId: number; body: Value }> {
    const corr = this.#corr++;
    await this.send(this.frame(kind, body, corr));
    const f = await this.read();
    if (!f) throw new Error(`Connection closed awaiting ${kind} v${FLEX_VERSIONS[kind]}`);
    const v = FLEX_VERSIONS[kind];
    const r = decodeResponse(f, RESP[kind]!(v) as Schema, true, kind !== "apiVersions");
    if (r.correlationId !== corr) throw new Error(`Correlation id ${r.correlationId}, not ${corr}`);
    return r;
  }

  close(): void {
    try {
      this.#c.close();
    } catch { /* closed */ }
  }
}

export const produceBody = (topic: string, value: string): Value => ({
  transactional_id: null,
  acks: -1,
  timeout_ms: 3000,
  topics: [{ name: topic, partitions: [{ index: 0, records: recordBatch([value]) }] }],
});

export const fetchBody = (topic: string, offset: number, maxWaitMs = 100): Value => ({
  replica_id: -1,
  max_wait_ms: maxWaitMs,
  min_bytes: 1,
  max_bytes: 1 << 20,
  isolation_level: 0,
  session_id: 0,
  session_epoch: -1,
  topics: [{
    name: topic,
    partitions: [{
      partition: 0,
      current_leader_epoch: -1,
      fetch_offset: offset,
      last_fetched_epoch: -1,
      log_start_offset: -1,
      partition_max_bytes: 1 << 20,
    }],
  }],
  forgotten: [],
  rack_id: "",
});

export const metadataBody = (topics: string[]): Value => ({
  topics: topics.map((name) => ({ topic_id: null, name })),
  allow_auto_topic_creation: true,
  include_topic_ops: false,
});

// ---- record batches (magic 2) ----

const CRC32C = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return (b: Uint8Array) => {
    let c = 0xffffffff;
    for (const x of b) c = t[(c ^ x) & 0xff]! ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
})();

const zigzag = (n: number, out: number[]) => {
  let z = n >= 0 ? n * 2 : -n * 2 - 1;
  while (z >= 0x80) {
    out.push((z & 0x7f) | 0x80);
    z = Math.floor(z / 128);
  }
  out.push(z);
};

/** One record batch holding `values` (no keys, no headers). */
export function recordBatch(values: string[]): Uint8Array {
  const recs: number[] = [];
  values.forEach((value, i) => {
    const v = new TextEncoder().encode(value);
    const r: number[] = [0]; // attributes
    zigzag(0, r); // timestamp delta
    zigzag(i, r); // offset delta
    zigzag(-1, r); // key: null
    zigzag(v.length, r);
    r.push(...v);
    zigzag(0, r); // headers
    zigzag(r.length, recs);
    recs.push(...r);
  });
  const b = new Uint8Array(61 + recs.length);
  const d = new DataView(b.buffer);
  d.setInt32(8, b.length - 12); // batch length
  d.setInt32(12, -1); // partition leader epoch
  d.setInt8(16, 2); // magic
  d.setInt32(23, values.length - 1); // last offset delta
  d.setBigInt64(27, BigInt(Date.now()));
  d.setBigInt64(35, BigInt(Date.now()));
  d.setBigInt64(43, -1n); // producer id
  d.setInt16(51, -1); // producer epoch
  d.setInt32(53, -1); // base sequence
  d.setInt32(57, values.length);
  b.set(recs, 61);
  d.setUint32(17, CRC32C(b.subarray(21)));
  return b;
}

/** The values of every record in `records` (concatenated batches); throws on a bad CRC. */
export function recordValues(records: Uint8Array | null): string[] {
  const out: string[] = [];
  if (!records) return out;
  for (let off = 0; off + 61 <= records.length;) {
    const d = new DataView(records.buffer, records.byteOffset + off);
    const end = off + 12 + d.getInt32(8);
    if (CRC32C(records.subarray(off + 21, end)) !== d.getUint32(17)) throw new Error("Bad CRC");
    let p = off + 61;
    const varint = () => {
      let z = 0, s = 0, b: number;
      do {
        b = records[p++]!;
        z += (b & 0x7f) * 2 ** s;
        s += 7;
      } while (b & 0x80);
      return z % 2 === 0 ? z / 2 : -(z + 1) / 2;
    };
    for (let i = 0; i < d.getInt32(57); i++) {
      const len = varint(), start = p;
      p++;
      varint();
      varint();
      const kl = varint();
      if (kl > 0) p += kl;
      const vl = varint();
      out.push(new TextDecoder().decode(records.subarray(p, p + vl)));
      p = start + len;
    }
    off = end;
  }
  return out;
}

if (import.meta.main) {
  const [mode, broker, topic, arg] = Deno.args;
  const [host, port] = [broker!.slice(0, broker!.lastIndexOf(":")), broker!.split(":").at(-1)];
  const c = await FlexClient.connect(host!, Number(port));
  try {
    const av = await c.request("apiVersions", {
      client_software_name: "cilia-flex",
      client_software_version: "1",
    });
    const max = (k: number) => av.body.api_keys.find((x: Value) => x.api_key === k)?.max_version;
    const versions = { metadata: max(3), produce: max(0), fetch: max(1) };
    if (mode === "produce") {
      const results: unknown[] = [];
      for (const t of topic!.split(",")) {
        const md = await c.request("metadata", metadataBody([t]));
        const p = await c.request("produce", produceBody(t, arg!));
        results.push({
          topic: t,
          metadataError: md.body.topics[0]?.error_code,
          error: p.body.topics[0]?.partitions[0]?.error_code,
          offset: String(p.body.topics[0]?.partitions[0]?.base_offset),
        });
      }
      console.log(JSON.stringify({ ok: true, versions, results }));
    } else {
      const values: string[] = [];
      let error = 0;
      const deadline = Date.now() + 5000;
      while (values.length < Number(arg) && Date.now() < deadline && error === 0) {
        const f = await c.request("fetch", fetchBody(topic!, values.length));
        const part = f.body.topics[0]?.partitions[0];
        error = part?.error_code ?? -1;
        values.push(...recordValues(part?.records ?? null));
      }
      console.log(JSON.stringify({ ok: true, versions, error, values }));
    }
  } catch (err) {
    console.log(JSON.stringify({ ok: false, message: (err as Error).message }));
  } finally {
    c.close();
  }
}
