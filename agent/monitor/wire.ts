// The monitor's NDJSON lines, one JSON object per line: `{"flow": {...}}` (as `hubble observe
// -o json` writes them), `{"event": {...}}` (a raw datapath event, its captured bytes in hex),
// `{"lost_events": {"source", "num_events_lost"}}` (Hubble's notice of loss) and, closing a query,
// `{"stats": {...}}` (buffer fill and lost counts). Encoders for the agent and decoders for
// clients (the CLI, tests, the demo). `flowNdjson()` is the agent's hot path: one flow's line,
// with the parts flows share (both sides' endpoints, the policy) serialised once per object.
// This module is browser compatible.

import type { PacketEvent } from "../datapath/events.ts";
import type { Flow } from "./flow.ts";
import type { MonitorStats } from "./monitor.ts";

export type RawEventJson = Omit<PacketEvent, "data"> & { data: string };

export type MonitorLine =
  | { flow: Flow }
  | { event: RawEventJson }
  | { lost_events: { source: string; num_events_lost: number } }
  | { stats: MonitorStats };

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

export function eventToJson(e: PacketEvent): RawEventJson {
  let data = "";
  for (const b of e.data) data += HEX[b];
  return { ...e, data };
}

export function eventFromJson(j: RawEventJson): PacketEvent {
  const data = new Uint8Array(j.data.length / 2);
  for (let i = 0; i < data.length; i++) data[i] = parseInt(j.data.slice(2 * i, 2 * i + 2), 16);
  return { ...j, data };
}

/** JSON of objects many flows share (endpoints, policies): flows never mutate them. */
const shared = new WeakMap<object, string>();
const SHARED_KEYS = new Set(["source", "destination", "policy"]);

/**
 * `{"flow": {...}}\n`, exactly as `JSON.stringify({ flow }) + "\n"` writes it (same keys, same
 * order), with shared sub-objects serialised once.
 */
export function flowNdjson(flow: Flow): string {
  let out = '{"flow":{';
  let first = true;
  for (const key in flow) {
    const v = (flow as unknown as Record<string, unknown>)[key];
    if (v === undefined) continue;
    let json: string | undefined;
    if (SHARED_KEYS.has(key) && typeof v === "object" && v !== null) {
      json = shared.get(v);
      if (json === undefined) shared.set(v, json = JSON.stringify(v));
    } else json = JSON.stringify(v);
    if (json === undefined) continue;
    out += `${first ? "" : ","}"${key}":${json}`;
    first = false;
  }
  return out + "}}\n";
}

/** Complete lines of a byte stream, many at a time (the last partial line waits for more). */
export async function* readLineBatches(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<string[]> {
  const dec = new TextDecoder();
  let carry = "";
  for await (const chunk of body) {
    const text = carry + dec.decode(chunk, { stream: true });
    const end = text.lastIndexOf("\n");
    if (end < 0) {
      carry = text;
      continue;
    }
    carry = text.slice(end + 1);
    const lines = text.slice(0, end).split("\n").map((l) => l.trim()).filter((l) => l !== "");
    if (lines.length > 0) yield lines;
  }
  const rest = (carry + dec.decode()).trim();
  if (rest) yield [rest];
}

/** Reads NDJSON lines from a byte stream (a response body, a file, stdin). */
export async function* readLines(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  for await (const lines of readLineBatches(body)) yield* lines;
}
