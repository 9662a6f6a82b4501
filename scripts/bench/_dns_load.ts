// The load generator of `deno task bench dns`, run inside the client pod's netns: sends A
// queries for one name over UDP to SERVER:53 at a paced RATE for SECONDS, matches each answer
// to its query by id and prints one JSON line: sent, answered, rcodes, and the round-trip times
// in ms (p50/p99/max). A warm-up at a fifth of the rate comes first and is not counted. Needs
// `--unstable-net` (Deno's UDP sockets). Must not touch anything outside its own socket.
//
// Usage: deno run -A --unstable-net _dns_load.ts SERVER NAME RATE SECONDS

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

/** Paced load: at any moment `rate × elapsed` queries are out; stragglers get 1 s after. */
export async function load(
  conn: Deno.DatagramConn,
  opts: { server: string; name: string; rate: number; seconds: number; firstId: number },
): Promise<LoadFigures> {
  const total = Math.round(opts.rate * opts.seconds);
  const sentAt = new Map<number, number>();
  const rtts: number[] = [];
  let nonNoError = 0, done = false;
  const receiver = (async () => {
    while (!done) {
      const [msg] = await conn.receive().catch(() => [new Uint8Array()] as const);
      if (msg.length < 12) continue;
      const v = new DataView(msg.buffer, msg.byteOffset);
      const t0 = sentAt.get(v.getUint16(0));
      if (t0 === undefined) continue;
      rtts.push(performance.now() - t0);
      sentAt.delete(v.getUint16(0));
      if ((v.getUint16(2) & 0xf) !== 0) nonNoError++;
    }
  })();
  const addr = { transport: "udp" as const, hostname: opts.server, port: 53 };
  const start = performance.now();
  let sent = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor((performance.now() - start) * opts.rate / 1000));
    for (; sent < due; sent++) {
      const id = (opts.firstId + sent) & 0xffff;
      sentAt.set(id, performance.now());
      await conn.send(encodeQuery(id, opts.name), addr);
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  const sendSeconds = (performance.now() - start) / 1000;
  for (let i = 0; i < 100 && sentAt.size > 0; i++) await new Promise((r) => setTimeout(r, 10));
  done = true;
  rtts.sort((a, b) => a - b);
  const figures = {
    sent,
    answered: rtts.length,
    qps: rtts.length / sendSeconds,
    nonNoError,
    p50Ms: quantile(rtts, 0.5),
    p99Ms: quantile(rtts, 0.99),
    maxMs: rtts.at(-1) ?? NaN,
  };
  // Unblock the receiver: one last query whose answer it reads and drops.
  await conn.send(encodeQuery(0, opts.name), addr);
  await Promise.race([receiver, new Promise((r) => setTimeout(r, 500))]);
  return figures;
}

if (import.meta.main) {
  const [server = "", name = "", rate = "5000", seconds = "3"] = Deno.args;
  const conn = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
  await load(conn, { server, name, rate: Number(rate) / 5, seconds: 0.5, firstId: 1 });
  const f = await load(conn, {
    server,
    name,
    rate: Number(rate),
    seconds: Number(seconds),
    firstId: 30000,
  });
  conn.close();
  console.log(JSON.stringify(f));
  Deno.exit(0);
}
