// The messages between the DNS proxy's main thread (dns_udp_path.ts) and its UDP Worker
// (dns_udp_worker.ts), and the layout of the memory they share. Types and constants only.

import type { OrigDestination } from "../datapath/proxy_maps.ts";
import type { RecordsWire } from "./_dns_udp_records.ts";

/** Int32 slots of the shared memory. */
export const SHARED = {
  /** Moves whenever a cached verdict or learned address may be stale (engine, DNS cache). */
  GENERATION: 0,
  /** Messages the main thread posted (the Worker lets its event loop run until it had them). */
  POSTED: 1,
  /** Set to stop the Worker. */
  STOP: 2,
  SIZE: 3,
} as const;

/**
 * Flow records go to the main thread at most this long after the batch before them (the first
 * after a pause at once), so at most this long after their answer went out.
 */
export const RECORD_BATCH_MS = 50;
/**
 * An answer is released without the main thread only if its records stay in the datapath at
 * least this much longer (so the main thread's refresh, a batch later, comes in time).
 */
export const KNOWN_MARGIN_MS = 5_000;

export interface WorkerStart {
  t: "start";
  shared: SharedArrayBuffer;
  /** An eventfd the main thread writes to after it posted a message. */
  wakeFd: number;
  /** The listener sockets (the Worker closes them when it stops). */
  listeners: { fd: number }[];
  port: number;
  gateway: string;
  gateway6: string;
  pins: { cfg: string; orig: string; nat: string };
  rejectRcode: number;
  timeoutMs: number;
  idleMs: number;
  receiveBuffer: number;
  /** The Worker thread's nice value (0: unchanged). */
  nice: number;
  /** The Worker thread's SCHED_FIFO priority (0: none, the nice value only). */
  realtime: number;
}

export type FromMain =
  | WorkerStart
  | { t: "verdict"; qid: number; allowed: boolean; cookie: number; generation: number }
  | { t: "learned"; qid: number; error?: string; until?: number; generation: number };

export type ToMain =
  | { t: "ready" }
  | { t: "failed"; error: string }
  | { t: "closed" }
  | { t: "log"; level: "warn" | "debug"; msg: string; error?: string }
  | { t: "judge"; qid: number; o: OrigDestination; name: string }
  | {
    t: "learn";
    qid: number;
    epId: number;
    names: string[];
    ips: { ip: string; ttl: number }[];
  }
  /** Flow records packed (_dns_udp_records.ts; the rows' buffer is transferred). */
  | { t: "records"; batch: RecordBatch }
  /** An upstream leg's socket opened or closed (the main thread closes those a failed Worker left). */
  | {
    t: "leg";
    open: boolean;
    fd: number;
    server: { ip: string; port: number };
    localPort: number;
  };

export interface RecordBatch {
  records: RecordsWire;
  /** Answers released at once (rule 3 of the Worker): the main thread extends their records. */
  refresh: { epId: number; names: string[]; ips: { ip: string; ttl: number }[] }[];
}
