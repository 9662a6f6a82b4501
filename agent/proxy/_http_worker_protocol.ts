// The messages between the L7 proxy's main thread (http_worker_path.ts) and its HTTP/1.1 Worker
// (http_worker.ts), and the layout of the memory they share. Types and constants only.

import type { OrigDestination } from "../datapath/proxy_maps.ts";
import type { HttpRequestInfo } from "./http_records.ts";
import type { L7BatchWire } from "./l7_batch.ts";

/** Int32 slots of the shared control memory. */
export const SHARED = {
  /** Moves whenever a cached verdict may be stale (PolicyEngine.onChange). */
  GENERATION: 0,
  /** Messages the main thread posted (the Worker lets its event loop run until it had them). */
  POSTED: 1,
  /** Set to stop the Worker. */
  STOP: 2,
  /** Moved by the Worker on every turn of its loop (at least every 100 ms): the watchdog's. */
  BEAT: 3,
  /**
   * Set when the main thread failed the Worker and closes its fds itself: the Worker leaves its
   * loop at once and touches no fd again (Worker.terminate() alone did not stop a loop that
   * blocks in epoll_wait through FFI: it kept serving fd numbers the main thread had closed).
   */
  ABORT: 4,
  SIZE: 5,
} as const;

/** Bits for fds 0..MAX_FD-1 the Worker owns (the main thread closes them if it dies). */
export const MAX_FD = 1 << 16;

export interface WorkerStart {
  t: "start";
  shared: SharedArrayBuffer;
  /** One bit per fd the Worker owns (MAX_FD bits). */
  fds: SharedArrayBuffer;
  /** The upstream local ports (UpstreamPorts' shared map) and their range. */
  ports: SharedArrayBuffer;
  portRange: [number, number];
  /** An eventfd the main thread writes to after it posted a message. */
  wakeFd: number;
  pins: { cfg: string; orig: string; nat: string };
  headerTimeoutMs?: number;
  idleTimeoutMs?: number;
  /** The main thread's unix socket h2c connections are relayed to. */
  relay?: string;
}

export type FromMain =
  | WorkerStart
  /** A listener socket the Worker serves from now on (and closes at unlisten or stop). */
  | { t: "listen"; fd: number; port: number; gateway: string; gateway6: string }
  | { t: "unlisten"; port: number }
  | {
    t: "verdict";
    qid: number;
    allowed: boolean;
    cookie: number;
    rule: number;
    /** The server's endpoint judged as a second hop (-1: none). */
    hop2: number;
    generation: number;
  };

export type ToMain =
  | { t: "ready" }
  | { t: "failed"; error: string }
  | { t: "closed" }
  | { t: "log"; level: "warn" | "debug"; msg: string; error?: string }
  | { t: "judge"; qid: number; o: OrigDestination; req: HttpRequestInfo }
  /** Requests served since the last batch, packed (l7_batch.ts; its buffer is transferred). */
  | { t: "records"; batch: L7BatchWire };
