// Decodes the records of the cilia_events perf event array into DatapathEvent objects and streams
// them as an async iterable, reading the perf buffer through ffi.ts on a short poll loop on the
// main thread. It interprets no packet bytes beyond the fixed header (the monitor does).
import {
  decode,
  DIR_EGRESS,
  DIR_INGRESS,
  EVENT_DROP,
  EVENT_HEADER_LEN,
  EVENT_POLICY_VERDICT,
  LAYOUTS,
  num,
  VERDICT_NAMES,
} from "./codecs.ts";
import { acquire, closeFd, objGet, PerfBuffer, release } from "./ffi.ts";

export type Direction = "ingress" | "egress";
export type VerdictName = (typeof VERDICT_NAMES)[number];

export interface PacketEvent {
  type: "drop" | "policy-verdict" | "trace";
  /** Drop reason for drops (and denied verdicts), trace point for traces, else 0. */
  subtype: number;
  epId: number;
  srcIdentity: number;
  dstIdentity: number;
  ifindex: number;
  direction: Direction | "unknown";
  family: 0 | 4 | 6;
  proto: number;
  sport: number;
  /** Destination port, or the ICMP type. */
  dport: number;
  verdict: VerdictName;
  /** POLICY_MATCH_*: 0 default, 1 L3, 2 L4, 3 any-identity L3, 4 any-identity L4. */
  match: number;
  cookie: number;
  ctState: number;
  origLen: number;
  capLen: number;
  /** The first capLen bytes of the packet, from the Ethernet header on. */
  data: Uint8Array;
  cpu: number;
}
export interface LostEvent {
  type: "lost";
  cpu: number;
  count: bigint;
}
export type DatapathEvent = PacketEvent | LostEvent;

const TYPES = ["trace", "drop", "policy-verdict", "trace"] as const;
const DIRECTIONS = ["unknown", "ingress", "egress"] as const;

/** Decodes one record (LAYOUTS.event, then the captured bytes); hot path: plain DataView reads. */
export function decodeEvent(cpu: number, bytes: Uint8Array): PacketEvent {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const type = dv.getUint8(0), dir = dv.getUint8(16), family = dv.getUint8(36);
  const capLen = dv.getUint32(32, true);
  return {
    type: type === EVENT_DROP || type === EVENT_POLICY_VERDICT ? TYPES[type]! : "trace",
    subtype: dv.getUint8(1),
    epId: dv.getUint16(2, true),
    srcIdentity: dv.getUint32(4, true),
    dstIdentity: dv.getUint32(8, true),
    ifindex: dv.getUint32(12, true),
    direction: dir === DIR_INGRESS || dir === DIR_EGRESS ? DIRECTIONS[dir]! : "unknown",
    family: family === 4 || family === 6 ? family : 0,
    proto: dv.getUint8(17),
    sport: dv.getUint16(20, true),
    dport: dv.getUint16(22, true),
    verdict: VERDICT_NAMES[dv.getUint8(18)] ?? "none",
    match: dv.getUint8(19),
    cookie: dv.getUint32(24, true),
    ctState: dv.getUint8(37),
    origLen: dv.getUint32(28, true),
    capLen,
    data: bytes.subarray(EVENT_HEADER_LEN, EVENT_HEADER_LEN + capLen),
    cpu,
  };
}

/** The field-by-field decoder (LAYOUTS.event), kept to check decodeEvent against the layout. */
export function decodeEventSlow(cpu: number, bytes: Uint8Array): PacketEvent {
  const e = decode(LAYOUTS.event, bytes);
  const type = num(e.type), dir = num(e.dir), family = num(e.family), capLen = num(e.cap_len);
  return {
    type: type === EVENT_DROP ? "drop" : type === EVENT_POLICY_VERDICT ? "policy-verdict" : "trace",
    subtype: num(e.subtype),
    epId: num(e.ep_id),
    srcIdentity: num(e.src_identity),
    dstIdentity: num(e.dst_identity),
    ifindex: num(e.ifindex),
    direction: dir === DIR_INGRESS ? "ingress" : dir === DIR_EGRESS ? "egress" : "unknown",
    family: family === 4 || family === 6 ? family : 0,
    proto: num(e.proto),
    sport: num(e.sport),
    dport: num(e.dport),
    verdict: VERDICT_NAMES[num(e.verdict)] ?? "none",
    match: num(e.match),
    cookie: num(e.cookie),
    ctState: num(e.ct_state),
    origLen: num(e.orig_len),
    capLen,
    data: bytes.slice(EVENT_HEADER_LEN, EVENT_HEADER_LEN + capLen),
    cpu,
  };
}

/**
 * Pages per CPU of the agent's perf buffer: 8 MiB, about 75k events, so a pause of the agent's
 * event loop (GC, a busy machine) of up to ~0.7 s at 100k events/s loses nothing.
 */
export const READER_PAGES = 2048;

/**
 * The one reader of the perf event array, driven by a timer on the main thread: every poll hands
 * each record to `onEvent` synchronously (so a slow consumer must queue and shed, never block),
 * and perf-buffer overruns to `onLost`. Only one reader may exist per map: opening a perf buffer
 * points the map at the new reader's rings, and closing one empties the map.
 */
export class EventReader {
  readonly #pb: PerfBuffer;
  readonly #fd: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  constructor(
    mapPath: string,
    opts: {
      onEvent: (e: PacketEvent) => void;
      onLost: (cpu: number, count: number) => void;
      pages?: number;
      pollMs?: number;
    },
  ) {
    acquire();
    try {
      this.#fd = objGet(mapPath);
      try {
        this.#pb = new PerfBuffer(this.#fd, {
          pages: opts.pages ?? READER_PAGES,
          onSample: (cpu, data) => {
            if (data.length >= EVENT_HEADER_LEN) opts.onEvent(decodeEvent(cpu, data));
          },
          onLost: (cpu, count) => opts.onLost(cpu, Number(count)),
        });
      } catch (err) {
        closeFd(this.#fd);
        throw err;
      }
    } catch (err) {
      release();
      throw err;
    }
    const poll = () => {
      if (this.#closed) return;
      this.#pb.consume();
      this.#timer = setTimeout(poll, opts.pollMs ?? 1);
    };
    poll();
  }

  /** Delivers what is pending now (tests, benches). */
  poll(): number {
    return this.#closed ? 0 : this.#pb.consume();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#pb.close();
    closeFd(this.#fd);
    release();
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Streams events from the pinned perf event array until signal aborts or the caller stops. */
export async function* readEvents(
  mapPath: string,
  opts: { signal?: AbortSignal | undefined; pages?: number; pollMs?: number } = {},
): AsyncGenerator<DatapathEvent> {
  const queue: DatapathEvent[] = [];
  acquire();
  let fd = -1;
  let pb: PerfBuffer | undefined;
  try {
    fd = objGet(mapPath);
    pb = new PerfBuffer(fd, {
      pages: opts.pages ?? 64,
      onSample: (cpu, data) => {
        if (data.length >= EVENT_HEADER_LEN) queue.push(decodeEvent(cpu, data));
      },
      onLost: (cpu, count) => queue.push({ type: "lost", cpu, count }),
    });
    while (!opts.signal?.aborted) {
      pb.consume();
      while (queue.length > 0) {
        yield queue.shift()!;
        if (opts.signal?.aborted) return;
      }
      await sleep(opts.pollMs ?? 2, opts.signal);
    }
  } finally {
    pb?.close();
    if (fd >= 0) closeFd(fd);
    release();
  }
}
