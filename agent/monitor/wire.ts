// The monitor's NDJSON lines, one JSON object per line: `{"flow": {...}}` (as `hubble observe
// -o json` writes them), `{"event": {...}}` (a raw datapath event, its captured bytes in hex),
// `{"lost_events": {"source", "num_events_lost"}}` (Hubble's notice of loss) and, closing a query,
// `{"stats": {...}}` (buffer fill and lost counts). Encoders for the agent and decoders for
// clients (the CLI, tests, the demo). This module is browser compatible.

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

/** Reads NDJSON lines from a byte stream (a response body, a file, stdin). */
export async function* readLines(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of body) {
    buf += dec.decode(chunk, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) yield line;
    }
  }
  if (buf.trim()) yield buf.trim();
}
