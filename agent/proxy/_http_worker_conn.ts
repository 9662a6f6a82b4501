// One connection of the L7 proxy's HTTP Worker as HttpConns (_http_worker_conns.ts) keeps it: its
// Http1Machine, its client leg and upstream leg (or the h2c relay socket) with their epoll
// interest, the output a write could not take, and what its verdicts and records need (the
// original destination, the client, the last verdict, the verdict cache key); and the byte
// helpers of that output. Plain data: it does no I/O.

import type { OrigDestination } from "../datapath/proxy_maps.ts";
import type { Head } from "./http1.ts";
import type { Http1Machine, MachineIo } from "./http1_machine.ts";
import type { L7Source } from "./l7_batch.ts";

export interface Conn extends L7Source {
  m: Http1Machine;
  io: MachineIo;
  /** The first bytes while they may still be an HTTP/2 preface (null: decided). */
  sniff: Uint8Array | null;
  /** Relayed to the main thread (h2c): `up` is the relay socket, the machine is not used. */
  relay: boolean;
  o: OrigDestination;
  client: { ip: string; port: number };
  direction: "ingress" | "egress";
  /** The address upstream legs are bound to (the pod gateway of the server's family). */
  gateway: string;
  /** The last verdict's cookie and rule, and the server endpoint it judged as a second hop. */
  cookie: number;
  rule: number;
  hop2: number | undefined;
  /** The part of a verdict's cache key this connection fixes (rule 2 of http_worker.ts). */
  key: string;
  /** The last request head judged and its whole cache key (the next head may be that object). */
  lastHead: Head | undefined;
  lastKey: string;
  cfd: number;
  up: number;
  localPort: number;
  upConnected: boolean;
  /** Output that did not go at once, per leg (bounded; then the connection is closed). */
  outClient: Uint8Array | null;
  outUp: Uint8Array | null;
  clientEvents: number;
  upEvents: number;
  clientEof: boolean;
  upEof: boolean;
  broken: boolean;
}

/** `a` then `b` in a new array. */
export function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const m = new Uint8Array(a.length + b.length);
  m.set(a);
  m.set(b, a.length);
  return m;
}

/** Queued output `q` with `b` after it (`b` copied: it is valid only during the call). */
export function append(q: Uint8Array | null, b: Uint8Array): Uint8Array {
  if (!q) return b.slice();
  const m = new Uint8Array(q.length + b.length);
  m.set(q);
  m.set(b, q.length);
  return m;
}
