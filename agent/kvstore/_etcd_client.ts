/**
 * A minimal client for etcd's v3 JSON gateway over `fetch`: POSTs JSON to one endpoint after
 * another until one answers, turns gRPC error bodies into `EtcdError`, and aborts everything on
 * `close()`. It knows the wire format (base64 bytes, int64 as strings) but no kvstore semantics.
 * A request gets no more than ANSWER_MS for its answer; once one went unanswered (etcd blocked
 * or partitioned, not refusing), every request then in flight fails with it and later ones get
 * SILENT_ANSWER_MS until an answer arrives, so callers (a CNI ADD) fail fast, not one by one.
 */

import type { KvEntry } from "./kvstore.ts";

/** An error reported by etcd itself (as opposed to the network). */
export class EtcdError extends Error {
  constructor(readonly code: number, message: string, readonly status: number) {
    super(message);
  }
}

/** How long a request waits for an answer (etcdctl's default command timeout). */
export const ANSWER_MS = 5_000;
/** The same while the last request went unanswered. */
export const SILENT_ANSWER_MS = 1_000;

/** gRPC status `NOT_FOUND`, which etcd uses for "requested lease not found". */
export const NOT_FOUND = 5;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function b64(s: string): string {
  return encoder.encode(s).toBase64();
}

export function unb64(s: string | undefined): Uint8Array {
  return s === undefined ? new Uint8Array() : Uint8Array.fromBase64(s);
}

export function unb64Text(s: string | undefined): string {
  return decoder.decode(unb64(s));
}

/** The range end that selects every key starting with `prefix` (etcd's `WithPrefix`). */
export function prefixEnd(prefix: string): string {
  const bytes = encoder.encode(prefix);
  for (let i = bytes.length - 1; i >= 0; i--) {
    if (bytes[i]! < 0xff) {
      const end = bytes.slice(0, i + 1);
      end[i]! += 1;
      return end.toBase64();
    }
  }
  return b64("\0"); // no upper bound: every key from the start
}

// deno-lint-ignore no-explicit-any
export type Json = any;

/** A `mvccpb.KeyValue` from the gateway as a `KvEntry`: the revision is its mod_revision. */
export function toEntry(kv: Json): KvEntry {
  const entry: KvEntry = {
    key: unb64Text(kv.key),
    value: unb64(kv.value),
    revision: String(kv.mod_revision),
  };
  if (kv.lease !== undefined && kv.lease !== "0") entry.lease = String(kv.lease);
  return entry;
}

export class EtcdClient {
  readonly endpoints: readonly string[];
  #current = 0;
  #closer = new AbortController();
  #timeoutMs: number;
  /** Aborted (and replaced) when a request goes unanswered: fails the others in flight. */
  #silence = new AbortController();
  #silent = false;

  constructor(endpoints: readonly string[], timeoutMs = ANSWER_MS) {
    this.endpoints = endpoints;
    this.#timeoutMs = timeoutMs;
  }

  get closed(): boolean {
    return this.#closer.signal.aborted;
  }

  /** Aborts when the client is closed. */
  get closing(): AbortSignal {
    return this.#closer.signal;
  }

  /** One request and its whole JSON answer. */
  async call(path: string, body: unknown): Promise<Json> {
    const ms = this.#silent ? Math.min(SILENT_ANSWER_MS, this.#timeoutMs) : this.#timeoutMs;
    const timeout = new AbortController();
    const timer = setTimeout(() => {
      const reason = new Error(`no answer within ${ms} ms`);
      timeout.abort(reason);
      this.#silent = true;
      const silence = this.#silence;
      this.#silence = new AbortController();
      silence.abort(new Error(`no answer to another request within ${ms} ms`));
    }, ms);
    const signal = AbortSignal.any([timeout.signal, this.#silence.signal]);
    try {
      const res = await this.open(path, body, signal);
      const text = await res.text();
      this.#silent = false;
      const line = text.split("\n", 1)[0]!; // streaming endpoints (keepalive) answer NDJSON
      const json = JSON.parse(line);
      return "result" in json ? json.result : json;
    } catch (err) {
      if (err instanceof EtcdError) this.#silent = false;
      throw signal.aborted && !this.closed ? signal.reason : err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Sends a request to the first endpoint that accepts a connection, starting with the one
   * that answered last, and returns the response once it is known to be a success.
   */
  async open(path: string, body: unknown, signal?: AbortSignal): Promise<Response> {
    const abort = signal ? AbortSignal.any([this.#closer.signal, signal]) : this.#closer.signal;
    let lastError: unknown;
    for (let i = 0; i < this.endpoints.length; i++) {
      const at = (this.#current + i) % this.endpoints.length;
      let res: Response;
      try {
        res = await fetch(`http://${this.endpoints[at]}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
          signal: abort,
        });
      } catch (err) {
        if (abort.aborted) throw this.closed ? new Error("the store is closed") : err;
        lastError = err;
        continue;
      }
      this.#current = at;
      if (res.ok) return res;
      throw await toEtcdError(res);
    }
    const detail = lastError instanceof Error ? lastError.message : String(lastError);
    throw new Error(`no endpoint accepted a connection: ${detail}`, { cause: lastError });
  }

  close(): void {
    this.#closer.abort(new Error("the store is closed"));
  }
}

async function toEtcdError(res: Response): Promise<EtcdError> {
  const text = await res.text();
  try {
    const json = JSON.parse(text);
    return fromJson(json, res.status);
  } catch {
    return new EtcdError(2, `HTTP ${res.status}: ${text.slice(0, 200)}`, res.status);
  }
}

/**
 * An etcd error from a gateway body: `{error: "<text>", message, code}` for unary calls, or
 * `{error: {grpc_code, message, ...}}` inside a stream.
 */
export function fromJson(json: Json, status: number): EtcdError {
  const e = typeof json.error === "object" && json.error !== null ? json.error : json;
  const message = String(e.message ?? e.error ?? JSON.stringify(json));
  return new EtcdError(Number(e.code ?? e.grpc_code ?? 2), message, status);
}

/**
 * The JSON messages of an NDJSON response body, as they arrive; ends when `signal` aborts.
 * Deno does not always end a pending body read when the fetch's own signal aborts (seen with an
 * idle etcd watch after a few thousand requests), so the reader is cancelled here as well.
 */
export async function* readNdjson(
  body: ReadableStream<Uint8Array>,
  signal?: AbortSignal,
): AsyncGenerator<Json> {
  const reader = body.getReader();
  const cancel = () => void reader.cancel().catch(() => {});
  signal?.addEventListener("abort", cancel, { once: true });
  if (signal?.aborted) cancel();
  const text = new TextDecoder();
  let buffer = "";
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) return;
      buffer += text.decode(value, { stream: true });
      let nl: number;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (line !== "") yield JSON.parse(line);
      }
    }
  } finally {
    signal?.removeEventListener("abort", cancel);
    await reader.cancel().catch(() => {});
  }
}
