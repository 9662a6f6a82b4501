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
// dropped and counted as unanswered); the send time is taken right before the send and the answer
// time right after the receive resolves, before any other work.
//
// Usage: deno run -A --unstable-net _dns_load.ts NAME RATE SECONDS SERVER [SERVER...]

import { raiseReceiveBuffer } from "../../agent/sys/sock_buf.ts";

export interface LoadFigures {
  sent: number;
  answered: number;
  qps: number;
  nonNoError: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
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
  at: number;
  server: number;
}

/**
 * Paced load: at any moment `rate × elapsed` queries are out, query k going to the server whose
 * slice it falls in; each server gets `rate × seconds` queries; stragglers get 1 s after.
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
  },
): Promise<LoadFigures[]> {
  const n = opts.servers.length;
  const total = Math.round(opts.rate * opts.seconds) * n;
  const perSlice = Math.max(1, Math.round(opts.rate * (opts.sliceMs ?? 250) / 1000));
  const pending = new Map<number, Pending>();
  const rtts: number[][] = opts.servers.map(() => []);
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
      const now = performance.now();
      if (len < 12) continue;
      const id = (buf[0]! << 8) | buf[1]!;
      const p = pending.get(id);
      if (p === undefined) continue;
      pending.delete(id);
      rtts[p.server]!.push(now - p.at);
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
      pending.set(id, { at: performance.now(), server });
      await conn.send(msgs[k]!, addrs[server]!);
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  const activeSeconds = (performance.now() - start) / 1000 / n;
  for (let i = 0; i < 100 && pending.size > 0; i++) await new Promise((r) => setTimeout(r, 10));
  done = true;
  const figures = opts.servers.map((_, s) => {
    const r = rtts[s]!.sort((a, b) => a - b);
    return {
      sent: sent[s]!,
      answered: r.length,
      qps: r.length / activeSeconds,
      nonNoError: nonNoError[s]!,
      p50Ms: quantile(r, 0.5),
      p99Ms: quantile(r, 0.99),
      maxMs: r.at(-1) ?? NaN,
    };
  });
  // Unblock the receiver: one last query whose answer it reads and drops.
  await conn.send(encodeQuery(0, opts.name), addrs[0]!);
  await Promise.race([receiver, new Promise((r) => setTimeout(r, 500))]);
  return figures;
}

if (import.meta.main) {
  const [name = "", rate = "5000", seconds = "3", ...servers] = Deno.args;
  const conn = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
  const raised = raiseReceiveBuffer((conn.addr as Deno.NetAddr).port, 4, 4 << 20);
  if (typeof raised === "string") console.error(`_dns_load: ${raised}`);
  await load(conn, { servers, name, rate: Number(rate) / 5, seconds: 0.5, firstId: 1 });
  const f = await load(conn, {
    servers,
    name,
    rate: Number(rate),
    seconds: Number(seconds),
    firstId: 30000,
  });
  conn.close();
  console.log(JSON.stringify(f));
  Deno.exit(0);
}
