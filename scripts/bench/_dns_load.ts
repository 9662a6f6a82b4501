// The load generator of `deno task bench dns`, run inside the client pod's netns: sends A
// queries for one name over UDP to port 53 of one or more servers at a paced RATE, each server
// for SECONDS, interleaved in slices (SLICE ms to the first server, then to the second, and so
// on), so that every server is measured over the same stretch of time and a change of the
// machine's load hits all of them alike. It matches each answer to its query by id and prints one
// JSON line: per server, sent, answered, rcodes, and the round-trip times in ms (p50/p99/max). A
// warm-up at a fifth of the rate comes first and is not counted. Needs `--unstable-net` (Deno's
// UDP sockets). Must not touch anything outside its own socket.
//
// Accuracy: one receive buffer, reused (receive() without one allocates 64 KiB per datagram,
// and the garbage it makes shows up as client-side latency); the socket's kernel receive buffer
// raised to 4 MiB (answers that arrive while the client is descheduled wait instead of being
// dropped and counted as unanswered); the send time is taken right before the send. A round trip
// ends when the answer reached the client's socket: the kernel's arrival time stamp
// (SIOCGSTAMPNS on the socket, found through /proc), so the client's own scheduling (an answer
// that waits while the client is descheduled or busy sending) is not counted as the server's or
// the proxy's; the time of the client's read is reported beside it (readP50Ms, readP99Ms).
//
// Usage: deno run -A --unstable-net _dns_load.ts NAME RATE SECONDS SERVER [SERVER...]

import { raiseReceiveBuffer, udpSocketFd } from "../../agent/sys/sock_buf.ts";

export interface LoadFigures {
  sent: number;
  answered: number;
  qps: number;
  nonNoError: number;
  /** Round trips to the answer's arrival in the client's socket (the kernel's time stamp). */
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Round trips to the client's read of the answer (its own scheduling included). */
  readP50Ms: number;
  readP99Ms: number;
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

interface Pending {
  /** When it was sent (the clock's µs). */
  at: number;
  server: number;
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
 * slice it falls in; each server gets `rate × seconds` queries; stragglers get 1 s after. A round
 * trip ends when the answer reached the client's socket (the kernel's arrival time, when the clock
 * has one) and, separately, when the client read it.
 */
export async function load(
  conn: Deno.DatagramConn,
  opts: {
    servers: string[];
    name: string;
    rate: number;
    seconds: number;
    firstId: number;
    sliceMs?: number;
    clock?: LoadClock;
    /** Tracing: each answered query's [id, server, sent, read, arrived] (clock µs) goes here. */
    trace?: number[][];
  },
): Promise<LoadFigures[]> {
  const clock = opts.clock ?? PERFORMANCE_CLOCK;
  const n = opts.servers.length;
  const total = Math.round(opts.rate * opts.seconds) * n;
  const perSlice = Math.max(1, Math.round(opts.rate * (opts.sliceMs ?? 250) / 1000));
  const pending = new Map<number, Pending>();
  const rtts: number[][] = opts.servers.map(() => []);
  const reads: number[][] = opts.servers.map(() => []);
  const nonNoError = opts.servers.map(() => 0);
  const sent = opts.servers.map(() => 0);
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
      rtts[p.server]!.push((arrived - p.at) / 1000);
      reads[p.server]!.push((read - p.at) / 1000);
      opts.trace?.push([id, p.server, p.at, read, arrived]);
      if ((buf[3]! & 0xf) !== 0) nonNoError[p.server]!++;
    }
  })();
  const addrs = opts.servers.map((hostname) => ({ transport: "udp" as const, hostname, port: 53 }));
  const msgs = Array.from(
    { length: total },
    (_, k) => encodeQuery((opts.firstId + k) & 0xffff, opts.name),
  );
  const start = performance.now();
  let k = 0;
  while (k < total) {
    const due = Math.min(total, Math.floor((performance.now() - start) * opts.rate / 1000));
    for (; k < due; k++) {
      const id = (opts.firstId + k) & 0xffff;
      const server = Math.floor(k / perSlice) % n;
      sent[server]!++;
      pending.set(id, { at: clock.now(), server });
      await conn.send(msgs[k]!, addrs[server]!);
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  const activeSeconds = (performance.now() - start) / 1000 / n;
  for (let i = 0; i < 100 && pending.size > 0; i++) await new Promise((r) => setTimeout(r, 10));
  done = true;
  const figures = opts.servers.map((_, s) => {
    const r = rtts[s]!.sort((a, b) => a - b), u = reads[s]!.sort((a, b) => a - b);
    return {
      sent: sent[s]!,
      answered: r.length,
      qps: r.length / activeSeconds,
      nonNoError: nonNoError[s]!,
      p50Ms: quantile(r, 0.5),
      p99Ms: quantile(r, 0.99),
      maxMs: r.at(-1) ?? NaN,
      readP50Ms: quantile(u, 0.5),
      readP99Ms: quantile(u, 0.99),
    };
  });
  // Unblock the receiver: one last query whose answer it reads and drops.
  await conn.send(encodeQuery(0, opts.name), addrs[0]!);
  await Promise.race([receiver, new Promise((r) => setTimeout(r, 500))]);
  return figures;
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

if (import.meta.main) {
  const [name = "", rate = "5000", seconds = "3", ...servers] = Deno.args;
  const conn = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
  const port = (conn.addr as Deno.NetAddr).port;
  const raised = raiseReceiveBuffer(port, 4, 4 << 20);
  if (typeof raised === "string") console.error(`_dns_load: ${raised}`);
  const fd = udpSocketFd(port, 4);
  if (fd === undefined) console.error(`_dns_load: no kernel arrival times (socket not found)`);
  const clock = kernelClock(fd);
  await load(conn, { servers, name, rate: Number(rate) / 5, seconds: 0.5, firstId: 1, clock });
  const tracePath = Deno.env.get("DNS_LOAD_TRACE");
  const trace = tracePath ? [] as number[][] : undefined;
  const f = await load(conn, {
    servers,
    name,
    rate: Number(rate),
    seconds: Number(seconds),
    firstId: 30000,
    clock,
    ...(trace ? { trace } : {}),
  });
  conn.close();
  clock.close();
  if (tracePath) Deno.writeTextFileSync(tracePath, JSON.stringify(trace));
  console.log(JSON.stringify(f));
  Deno.exit(0);
}
