// `cilia monitor [--type drop|trace|policy-verdict] [-o json]`: the datapath's raw events as the
// agent reads them, live, one readable line each (or the event as JSON), with lost-event notices.
// Also the status lines of the monitor for `cilia status`.

import { DROP_REASONS } from "@cilia/policy-wasm";
import {
  eventFromJson,
  FLOW_TYPES,
  type MonitorLine,
  type MonitorStats,
  type RawEventJson,
  readLines,
} from "@cilia/agent/monitor";
import { UsageError } from "./output.ts";
import { AgentClient, socketPath } from "./live_client.ts";
import { parsePacketText } from "./_packet_text.ts";

export const MONITOR_HELP = `cilia monitor — the datapath's raw events, live, one line each

Usage: cilia monitor [--type drop|trace|policy-verdict]… [-o json] [-H unix:///path]`;

const PROTO: Record<number, string> = { 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP" };
/** TRACE_* (constants.generated.h): where a trace was seen. */
const TRACE_POINTS: Record<number, string> = {
  1: "from-endpoint",
  2: "to-endpoint",
  3: "sock-xlate",
  4: "from-network",
};

/** One raw event as a line: type, reason or verdict, endpoint, identities, addresses. */
export function eventLine(j: RawEventJson): string {
  const e = eventFromJson(j);
  const what = e.type === "drop"
    ? `drop (${DROP_REASONS.get(e.subtype)?.[1] ?? "reason"}, ${e.subtype})`
    : e.type === "policy-verdict"
    ? `policy-verdict ${e.verdict}${e.subtype ? ` (${e.subtype})` : ""} match=${e.match}`
    : `trace ${TRACE_POINTS[e.subtype] ?? `point ${e.subtype}`}`;
  const cookie = e.cookie ? ` cookie=0x${e.cookie.toString(16).padStart(8, "0")}` : "";
  return `${what} ep=${e.epId} ${e.direction} identity ${e.srcIdentity}->${e.dstIdentity} ` +
    `${PROTO[e.proto] ?? `proto ${e.proto}`} ${parsePacketText(e.data)}${cookie}` +
    `${e.svcId ? ` service=${e.svcId}` : ""} ` +
    `len=${e.origLen} cpu=${e.cpu}`;
}

export async function monitor(argv: string[]): Promise<number> {
  const types: string[] = [];
  let json = false, host: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i]!;
    const next = () => {
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`Missing value for ${tok}`);
      return v;
    };
    if (tok === "--help" || tok === "-h") {
      console.log(MONITOR_HELP);
      return 0;
    } else if (tok === "--type" || tok === "-t") {
      const t = next();
      if (!(FLOW_TYPES as readonly string[]).includes(t)) {
        throw new UsageError(`Invalid --type "${t}": expected one of ${FLOW_TYPES.join(", ")}`);
      }
      types.push(t);
    } else if (tok === "-o" || tok === "--output") {
      const o = next();
      if (o !== "json" && o !== "text") {
        throw new UsageError(`Invalid output format "${o}": expected text or json`);
      }
      json = o === "json";
    } else if (tok === "-H" || tok === "--host") host = next();
    else throw new UsageError(`Unknown monitor flag "${tok}": expected --type, -o or -H`);
  }
  const api = new AgentClient(socketPath(host));
  const ac = new AbortController();
  // Ctrl-C ends the stream; a response that does not notice the abort must not hold the exit.
  const stop = () => {
    ac.abort();
    setTimeout(() => Deno.exit(0), 300);
  };
  Deno.addSignalListener("SIGINT", stop);
  try {
    const q = new URLSearchParams(types.map((t) => ["type", t]));
    const body = await api.stream("/v1/events", q, ac.signal);
    try {
      for await (const line of readLines(body)) {
        const m = JSON.parse(line) as MonitorLine;
        if ("event" in m) console.log(json ? JSON.stringify(m.event) : eventLine(m.event));
        else if ("lost_events" in m) {
          const l = m.lost_events;
          console.log(json ? line : `EVENTS LOST: ${l.source} ${l.num_events_lost}`);
        }
      }
    } catch (err) {
      if (!ac.signal.aborted) throw err;
    }
    return 0;
  } finally {
    Deno.removeSignalListener("SIGINT", stop);
    api.close();
  }
}

/** `cilia status` lines for the monitor (flows, buffer fill, lost events). */
export function monitorStatusLines(m: MonitorStats | undefined, verbose: boolean): string[] {
  if (!m) return [];
  const fill = `${m.buffer.size}/${m.buffer.capacity} flows`;
  const lines = [
    `Flows:       ${m.reading ? "recording" : `NOT recorded${m.error ? `: ${m.error}` : ""}`}, ` +
    `buffer ${fill} (${Math.round((m.buffer.size / m.buffer.capacity) * 100)}%), ` +
    `${m.buffer.seen} seen`,
    `Lost events: ${m.lost.total}${
      m.lost.total > 0 ? ` (kernel ring ${m.lost.perf}, slow readers ${m.lost.slowReaders})` : ""
    }`,
  ];
  if (verbose) {
    lines.push(
      `  followers ${m.followers}, overwritten from history ${m.buffer.overwritten}`,
    );
  }
  return lines;
}
