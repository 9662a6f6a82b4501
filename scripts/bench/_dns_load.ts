// The load generator of `deno task bench dns`, run inside the client pod's netns: sends A
// queries for one name over UDP to port 53 of one or more servers at a paced RATE, in TURNS
// turns of SECONDS per server, interleaved in slices (250 ms to the first server, then to the
// second, and so on), so that every server is measured over the same stretch of time and a change
// of the machine's load hits all of them alike. It matches each answer to its query by id and
// prints one JSON line (LoadResult): per server and per turn, sent, answered, lost, rcodes, and the
// round-trip times in ms (p50/p99/max) over every query sent (a lost one ranks slowest, on every
// server alike); the load average at each turn's end; and its own CPU time and how far its sends
// fell behind the pace, so a client that cannot keep up shows. A warm-up at a fifth of the rate
// comes first and is not counted. Needs `--unstable-net` (Deno's UDP sockets). Must not touch
// anything outside its own socket.
//
// Accuracy: one receive buffer, reused (receive() without one allocates 64 KiB per datagram,
// and the garbage it makes shows up as client-side latency); the socket's kernel receive buffer
// raised to 4 MiB (answers that arrive while the client is descheduled wait instead of being
// dropped and counted as unanswered); the send time is taken right before the send. A round trip
// ends when the answer reached the client's socket: the kernel's arrival time stamp
// (SIOCGSTAMPNS on the socket, found through /proc), so the client's own scheduling (an answer
// that waits while the client is descheduled or busy sending) is not counted as the server's or
// the proxy's; the time of the client's read is reported beside it (readP50Ms, readP99Ms). The
// sends are libc sendto() calls on the same socket (synchronous, a few µs each), so a paced
// batch does not wait behind awaited Deno ops; bench dns runs the client at nice -10 (the same
// client for both servers).
//
// Usage: deno run -A --unstable-net _dns_load.ts NAME RATE SECONDS TURNS SERVER [SERVER...]

import { raiseReceiveBuffer, udpSocketFd } from "../../agent/sys/sock_buf.ts";
import * as S from "../../agent/sys/sockets_ffi.ts";

export interface LoadFigures {
  sent: number;
  answered: number;
  /** Sent and never answered (within 1 s after the last send): ranked slowest in the quantiles. */
  lost: number;
  qps: number;
  nonNoError: number;
  /**
   * Round trips to the answer's arrival in the client's socket (the kernel's time stamp), over
   * every query sent: a lost one counts as infinitely slow, so with more than 1% lost p99 is
   * Infinity (printed as "lost"), the same rule on every server.
   */
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Round trips to the client's read of the answer (its own scheduling included), same rule. */
  readP50Ms: number;
  readP99Ms: number;
}

/** What one load() measured: per server over all of it, and per turn. */
export interface LoadResult {
  servers: LoadFigures[];
  /** turns[t][server]: the figures of turn t (its queries only). */
  turns: LoadFigures[][];
  /** /proc/loadavg (1 min) at the end of each turn. */
  turnLoad: number[];
  /** The client's own CPU over the measured load (its process, user + system), and the wall time. */
  clientCpuS: number;
  wallS: number;
  /** How far the sends fell behind the pace (ms): p50, p99 and max over every query. */
  sendLagP50Ms: number;
  sendLagP99Ms: number;
  sendLagMaxMs: number;
}

/** A DNS query message: header (id, RD), one question NAME IN A. */
export function encodeQuery(id: number, name: string): Uint8Array {
  const labels = name.replace(/\.$/, "").split(".").map((l) => new TextEncoder().encode(l));
  const qname = labels.reduce((n, l) => n + 1 + l.length, 1);
  const out = new Uint8Array(12 + qname + 4);
  const v = new DataView(out.buffer);
  v.setUint16(0, id);
  v.setUint16(2, 0x0100);
  v.setUint16(4, 1);
  let at = 12;
  for (const l of labels) {
    out[at++] = l.length;
    out.set(l, at);
    at += l.length;
  }
  out[at++] = 0;
  v.setUint16(at, 1);
  v.setUint16(at + 2, 1);
  return out;
}

const quantile = (sorted: number[], q: number) =>
  sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : NaN;

/** This process's CPU seconds (user + system) from /proc (USER_HZ 100). */
function ownCpuS(): number {
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

const loadAvg1 = () => {
  try {
    return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
  } catch {
    return NaN;
  }
};

/**
 * One server's figures over one population of queries: `rtts`/`reads` of the answered ones, and
 * `sent` of them in all; the unanswered rank above every answered one (Infinity).
 */
export function figuresOf(
  o: { sent: number; rtts: number[]; reads: number[]; nonNoError: number; seconds: number },
): LoadFigures {
  const lost = Math.max(0, o.sent - o.rtts.length);
  const all = (xs: number[]) => [...xs.sort((a, b) => a - b), ...Array(lost).fill(Infinity)];
  const r = all(o.rtts), u = all(o.reads);
  return {
    sent: o.sent,
    answered: o.rtts.length,
    lost,
    qps: o.rtts.length / o.seconds,
    nonNoError: o.nonNoError,
    p50Ms: quantile(r, 0.5),
    p99Ms: quantile(r, 0.99),
    maxMs: r.at(-1) ?? NaN,
    readP50Ms: quantile(u, 0.5),
    readP99Ms: quantile(u, 0.99),
  };
}

interface Pending {
  /** When it was sent (the clock's µs). */
  at: number;
  server: number;
  turn: number;
}

/** Where the times come from (µs); `arrival()`: the kernel's arrival time of the last datagram read. */
export interface LoadClock {
  now(): number;
  arrival(): number;
}

/** performance.now() in µs, no kernel arrival times (the round trip ends at the receive). */
export const PERFORMANCE_CLOCK: LoadClock = {
  now: () => performance.now() * 1000,
  arrival: () => 0,
};

/**
 * Paced load: at any moment `rate × elapsed` queries are out, query k going to the server whose
 * slice it falls in; in each of `turns` turns each server gets `rate × seconds` queries (so the
 * servers alternate every slice within every turn); stragglers get 1 s after the last send. A
 * round trip ends when the answer reached the client's socket (the kernel's arrival time, when
 * the clock has one) and, separately, when the client read it.
 */
export async function load(
  conn: Deno.DatagramConn,
  opts: {
    servers: string[];
    name: string;
    rate: number;
    seconds: number;
    turns?: number;
    firstId: number;
    sliceMs?: number;
    clock?: LoadClock;
    /** Tracing: each answered query's [id, server, sent, read, arrived] (clock µs) goes here. */
    trace?: number[][];
    /** Sends one query to server `server` at once (default: `conn.send()`, an async Deno op). */
    send?: (msg: Uint8Array, server: number) => void;
  },
): Promise<LoadResult> {
  const clock = opts.clock ?? PERFORMANCE_CLOCK;
  const n = opts.servers.length, turns = opts.turns ?? 1;
  const perTurn = Math.round(opts.rate * opts.seconds) * n;
  const total = perTurn * turns;
  if (total > 65_000) throw new RangeError(`Too many queries for 16-bit ids: ${total}`);
  const perSlice = Math.max(1, Math.round(opts.rate * (opts.sliceMs ?? 250) / 1000));

  const pending = new Map<number, Pending>();
  const cell = () => opts.servers.map(() => [] as number[]);
  const rtts = Array.from({ length: turns }, cell), reads = Array.from({ length: turns }, cell);
  const nonNoError = Array.from({ length: turns }, () => opts.servers.map(() => 0));
  const sent = Array.from({ length: turns }, () => opts.servers.map(() => 0));
  const turnLoad: number[] = [];
  const lags: number[] = [];
  let done = false;
  const receiver = (async () => {
    const buf = new Uint8Array(4096);
    while (!done) {
      let len = 0;
      try {
        len = (await conn.receive(buf))[0].length;
      } catch {
        return;
      }
      const read = clock.now();
      if (len < 12) continue;
      const id = (buf[0]! << 8) | buf[1]!;
      const p = pending.get(id);
      if (p === undefined) continue;
      const arrived = clock.arrival() || read;
      pending.delete(id);
      rtts[p.turn]![p.server]!.push((arrived - p.at) / 1000);
      reads[p.turn]![p.server]!.push((read - p.at) / 1000);
      opts.trace?.push([id, p.server, p.at, read, arrived]);
      if ((buf[3]! & 0xf) !== 0) nonNoError[p.turn]![p.server]!++;
    }
  })();
  const addrs = opts.servers.map((hostname) => ({ transport: "udp" as const, hostname, port: 53 }));
  const msgs = Array.from(
    { length: total },
    (_, k) => encodeQuery((opts.firstId + k) & 0xffff, opts.name),
  );
  const cpu0 = ownCpuS();
  const start = performance.now();
  let k = 0, lastTick = start;
  while (k < total) {
    const now = performance.now();
    // A late tick catches up at no more than twice the pace since the last tick (at least 4 ms'
    // worth): a stall of the client must not become a burst that overflows the server's socket,
    // and slow timer ticks must not make the client fall behind for good.
    const burst = Math.ceil(opts.rate * Math.max(4, 2 * (now - lastTick)) / 1000);
    lastTick = now;
    const due = Math.min(total, Math.floor((now - start) * opts.rate / 1000), k + burst);
    for (; k < due; k++) {
      const id = (opts.firstId + k) & 0xffff;
      const server = Math.floor(k / perSlice) % n, turn = Math.floor(k / perTurn);
      if (k % perTurn === 0 && k > 0) turnLoad.push(loadAvg1());
      sent[turn]![server]!++;
      lags.push(performance.now() - start - k * 1000 / opts.rate);
      pending.set(id, { at: clock.now(), server, turn });
      if (opts.send) opts.send(msgs[k]!, server);
      else await conn.send(msgs[k]!, addrs[server]!);
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  turnLoad.push(loadAvg1());
  const activeSeconds = (performance.now() - start) / 1000 / n;
  for (let i = 0; i < 100 && pending.size > 0; i++) await new Promise((r) => setTimeout(r, 10));
  done = true;
  const clientCpuS = ownCpuS() - cpu0, wallS = (performance.now() - start) / 1000;
  const turnFigures = rtts.map((row, t) =>
    row.map((r, s) =>
      figuresOf({
        sent: sent[t]![s]!,
        rtts: r,
        reads: reads[t]![s]!,
        nonNoError: nonNoError[t]![s]!,
        seconds: activeSeconds / turns,
      })
    )
  );
  const servers = opts.servers.map((_, s) =>
    figuresOf({
      sent: sent.reduce((a, row) => a + row[s]!, 0),
      rtts: rtts.flatMap((row) => row[s]!),
      reads: reads.flatMap((row) => row[s]!),
      nonNoError: nonNoError.reduce((a, row) => a + row[s]!, 0),
      seconds: activeSeconds,
    })
  );
  lags.sort((a, b) => a - b);
  // Unblock the receiver: one last query whose answer it reads and drops.
  await conn.send(encodeQuery(0, opts.name), addrs[0]!);
  await Promise.race([receiver, new Promise((r) => setTimeout(r, 500))]);
  return {
    servers,
    turns: turnFigures,
    turnLoad,
    clientCpuS,
    wallS,
    sendLagP50Ms: quantile(lags, 0.5),
    sendLagP99Ms: quantile(lags, 0.99),
    sendLagMaxMs: lags.at(-1) ?? NaN,
  };
}

/**
 * CLOCK_REALTIME through libc, and the kernel's arrival time of the datagram last read on `fd`
 * (SIOCGSTAMPNS; the first call turns the socket's time stamps on). The DNS proxy's trace
 * (agent/proxy/_dns_udp_trace.ts) takes its times the same way, so the two join.
 */
function kernelClock(fd: number | undefined): LoadClock & { close(): void } {
  const lib = Deno.dlopen("libc.so.6", {
    clock_gettime: { parameters: ["i32", "pointer"], result: "i32" },
    ioctl: { parameters: ["i32", "u32", "pointer"], result: "i32" },
  });
  const ts = new BigInt64Array(2), p = Deno.UnsafePointer.of(ts);
  const us = () => Number(ts[0]!) * 1e6 + Number(ts[1]!) / 1e3;
  const SIOCGSTAMPNS = 0x8907;
  const arrival = () => fd !== undefined && lib.symbols.ioctl(fd, SIOCGSTAMPNS, p) === 0 ? us() : 0;
  arrival();
  return {
    now: () => (lib.symbols.clock_gettime(0, p), us()),
    arrival,
    close: () => lib.close(),
  };
}

/**
 * Sends with libc's sendto() on the client's socket, synchronously: a paced batch goes out in a
 * few µs per query instead of one awaited Deno op each, so the client keeps the pace.
 */
function syncSender(fd: number, servers: string[]): (msg: Uint8Array, server: number) => void {
  S.acquire();
  const addrs = servers.map((ip) => {
    const a = new Uint8Array(S.SOCKADDR_SIZE);
    return { a, len: S.encodeSockaddr(a, ip, 53) };
  });
  const c = S.libc();
  return (msg, server) => {
    const to = addrs[server]!;
    c.sendto(fd, msg, BigInt(msg.length), 0, to.a, to.len);
  };
}

if (import.meta.main) {
  const [name = "", rate = "5000", seconds = "1", turns = "1", ...servers] = Deno.args;
  const conn = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
  const port = (conn.addr as Deno.NetAddr).port;
  const raised = raiseReceiveBuffer(port, 4, 4 << 20);
  if (typeof raised === "string") console.error(`_dns_load: ${raised}`);
  const fd = udpSocketFd(port, 4);
  if (fd === undefined) console.error(`_dns_load: no kernel arrival times (socket not found)`);
  const clock = kernelClock(fd);
  const send = fd === undefined ? undefined : syncSender(fd, servers);
  await load(conn, {
    servers,
    name,
    rate: Number(rate) / 5,
    seconds: 0.5,
    firstId: 1,
    clock,
    ...(send ? { send } : {}),
  });
  const tracePath = Deno.env.get("DNS_LOAD_TRACE");
  const trace = tracePath ? [] as number[][] : undefined;
  const f = await load(conn, {
    servers,
    name,
    rate: Number(rate),
    seconds: Number(seconds),
    turns: Number(turns),
    firstId: 30000,
    clock,
    ...(trace ? { trace } : {}),
    ...(send ? { send } : {}),
  });
  conn.close();
  clock.close();
  if (tracePath) Deno.writeTextFileSync(tracePath, JSON.stringify(trace));
  console.log(JSON.stringify(f));
  Deno.exit(0);
}
