// Reads the records of the cilia_events ring buffer (mapped in place through ffi.ts, polled on a
// short timer on the main thread that backs off while the ring is idle) and the count of events the kernel could not queue
// (cilia_events_lost), and decodes records into DatapathEvent objects, or hands them over raw to
// a reader that wants no object per event (the monitor). It interprets no packet bytes beyond the
// fixed header (the monitor does).
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
import { acquire, closeFd, objGet, perCpuSum, release, RingBuffer } from "./ffi.ts";

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
  /**
   * The service (lb.h's id) the packet was translated for: a connection's packets to its backend
   * at the client, replies that got the service address back; 0 for none.
   */
  svcId: number;
  origLen: number;
  capLen: number;
  /** The first capLen bytes of the packet, from the Ethernet header on. */
  data: Uint8Array;
  /** Always 0: the shared ring buffer does not say which CPU sent an event. */
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
  return decodeEventAt(dv, 0, bytes.byteLength, cpu);
}

/**
 * Decodes the record of `length` bytes at `at` of `dv`; the packet bytes are copied out (the
 * record's space may be reused once the caller returns).
 */
export function decodeEventAt(dv: DataView, at: number, length: number, cpu = 0): PacketEvent {
  const type = dv.getUint8(at), dir = dv.getUint8(at + 16), family = dv.getUint8(at + 36);
  const capLen = Math.min(dv.getUint32(at + 32, true), Math.max(0, length - EVENT_HEADER_LEN));
  const start = dv.byteOffset + at + EVENT_HEADER_LEN;
  return {
    type: type === EVENT_DROP || type === EVENT_POLICY_VERDICT ? TYPES[type]! : "trace",
    subtype: dv.getUint8(at + 1),
    epId: dv.getUint16(at + 2, true),
    srcIdentity: dv.getUint32(at + 4, true),
    dstIdentity: dv.getUint32(at + 8, true),
    ifindex: dv.getUint32(at + 12, true),
    direction: dir === DIR_INGRESS || dir === DIR_EGRESS ? DIRECTIONS[dir]! : "unknown",
    family: family === 4 || family === 6 ? family : 0,
    proto: dv.getUint8(at + 17),
    sport: dv.getUint16(at + 20, true),
    dport: dv.getUint16(at + 22, true),
    verdict: VERDICT_NAMES[dv.getUint8(at + 18)] ?? "none",
    match: dv.getUint8(at + 19),
    cookie: dv.getUint32(at + 24, true),
    ctState: dv.getUint8(at + 37),
    svcId: dv.getUint16(at + 38, true),
    origLen: dv.getUint32(at + 28, true),
    capLen,
    data: new Uint8Array(dv.buffer.slice(start, start + capLen)),
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
    svcId: num(e.svc_id),
    origLen: num(e.orig_len),
    capLen,
    data: bytes.slice(EVENT_HEADER_LEN, EVENT_HEADER_LEN + capLen),
    cpu,
  };
}

/** Records handed over per poll before the loop yields to other work (the HTTP streams). */
const BATCH = 2048;
/**
 * The longest pause between polls of an idle ring (the ring holds far more than that much). At
 * 16 ms the polls alone cost an idle agent ~7 ms of CPU a second; the first record after a quiet
 * spell reaches observe within this.
 */
const IDLE_POLL_MS = 64;
/** How often the count of events the kernel could not queue is read. */
const LOST_EVERY_MS = 50;

/** The map of events that found the ring full, beside the ring's pin. */
const lostMapOf = (ringPath: string) => ringPath.replace(/[^/]*$/, "cilia_events_lost");

/**
 * The one reader of the event ring buffer, driven by a timer on the main thread. Each poll hands
 * up to BATCH records over synchronously, so a slow consumer must queue and shed, never block;
 * after a full batch it polls again at once (other work runs in between), after `pollMs` when it
 * handed records over, else after twice the last pause (up to IDLE_POLL_MS). `onRecord` gets the
 * record in place (valid only during the call: `view` and `at`); without it, `onEvent` gets a
 * decoded copy. Events the kernel could not queue go to `onLost`. Only one reader may exist per
 * ring: records are consumed, a second reader would take them away.
 */
export class EventReader {
  readonly #ring: RingBuffer;
  readonly #fd: number;
  readonly #lostFd: number;
  readonly #hand: (at: number, length: number) => void;
  readonly #onLost: (cpu: number, count: number) => void;
  readonly #onBatch: (() => void) | undefined;
  #lostSeen = 0;
  #lostAt = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  constructor(
    mapPath: string,
    opts: {
      onEvent?: (e: PacketEvent) => void;
      onRecord?: (view: DataView, at: number, length: number) => void;
      /** After each poll that handed records over. */
      onBatch?: () => void;
      onLost: (cpu: number, count: number) => void;
      pollMs?: number;
      /** No timer: the caller drives poll() (readEvents). */
      manual?: boolean;
    },
  ) {
    acquire();
    let fd = -1, lostFd = -1;
    try {
      fd = objGet(mapPath);
      lostFd = objGet(lostMapOf(mapPath));
      this.#ring = new RingBuffer(fd);
    } catch (err) {
      if (fd >= 0) closeFd(fd);
      if (lostFd >= 0) closeFd(lostFd);
      release();
      throw err;
    }
    this.#ring.skip(); // events nobody read before are stale
    this.#fd = fd;
    this.#lostFd = lostFd;
    this.#lostSeen = perCpuSum(lostFd, 0);
    this.#onLost = opts.onLost;
    this.#onBatch = opts.onBatch;
    const bytes = this.#ring.bytes;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const { onRecord, onEvent } = opts;
    this.#hand = onRecord ? (at, length) => onRecord(view, at, length) : (at, length) => {
      if (length >= EVENT_HEADER_LEN) onEvent?.(decodeEventAt(view, at, length));
    };
    const base = opts.pollMs ?? 1;
    let wait = base;
    const poll = () => {
      if (this.#closed) return;
      const n = this.poll(BATCH);
      // An idle ring is polled less and less often (up to IDLE_POLL_MS): a 1 ms timer alone cost
      // the agent ~50 ms of CPU a second. The first record after a quiet spell waits that long.
      wait = n > 0 ? base : Math.min(wait * 2, Math.max(base, IDLE_POLL_MS));
      this.#timer = setTimeout(poll, n === BATCH ? 0 : wait);
    };
    if (!opts.manual) poll();
  }

  /** Hands over what is pending now (at most `max` records) and any new kernel-side losses. */
  poll(max = Infinity): number {
    if (this.#closed) return 0;
    const n = this.#ring.consume(this.#hand, max);
    if (n > 0) this.#onBatch?.();
    const now = performance.now();
    if (now - this.#lostAt >= LOST_EVERY_MS || max === Infinity) {
      this.#lostAt = now;
      const lost = perCpuSum(this.#lostFd, 0);
      if (lost > this.#lostSeen) this.#onLost(0, lost - this.#lostSeen);
      this.#lostSeen = lost;
    }
    return n;
  }

  /** Records written and not yet read (bytes). */
  get pendingBytes(): number {
    return this.#ring.pending;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#ring.close();
    closeFd(this.#fd);
    closeFd(this.#lostFd);
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

/** Streams events from the pinned ring buffer until signal aborts or the caller stops. */
export async function* readEvents(
  mapPath: string,
  opts: { signal?: AbortSignal | undefined; pollMs?: number } = {},
): AsyncGenerator<DatapathEvent> {
  const queue: DatapathEvent[] = [];
  const reader = new EventReader(mapPath, {
    onEvent: (e) => queue.push(e),
    onLost: (cpu, count) => queue.push({ type: "lost", cpu, count: BigInt(count) }),
    manual: true,
  });
  try {
    while (!opts.signal?.aborted) {
      reader.poll();
      while (queue.length > 0) {
        yield queue.shift()!;
        if (opts.signal?.aborted) return;
      }
      await sleep(opts.pollMs ?? 2, opts.signal);
    }
  } finally {
    reader.close();
  }
}
