// TCP request/response for the datapath bench, run inside a pod netns: `server <port>` echoes
// every byte back; `client <host> <port> <seconds>` sends 1 byte, waits for it, repeats, and prints
// {"perSec": round trips per second} as JSON. Nagle is off on both ends, so each round trip is
// one small packet each way: the figure measures per-packet cost, not bandwidth.

async function serve(c: Deno.TcpConn): Promise<void> {
  c.setNoDelay(true);
  const b = new Uint8Array(64);
  try {
    for (;;) {
      const n = await c.read(b);
      if (n === null) break;
      await c.write(b.subarray(0, n));
    }
  } catch { /* client gone */ }
  try {
    c.close();
  } catch { /* closed */ }
}

async function client(hostname: string, port: number, seconds: number): Promise<number> {
  const c = await Deno.connect({ hostname, port });
  c.setNoDelay(true);
  const b = new Uint8Array(1);
  try {
    for (let i = 0; i < 200; i++) { // warm-up
      await c.write(b);
      await c.read(b);
    }
    let n = 0;
    const start = performance.now(), end = start + seconds * 1000;
    while (performance.now() < end) {
      for (let i = 0; i < 100; i++) {
        await c.write(b);
        if (await c.read(b) === null) throw new Error("The RR server closed the connection");
      }
      n += 100;
    }
    return n / ((performance.now() - start) / 1000);
  } finally {
    c.close();
  }
}

if (import.meta.main) {
  const [mode, a, b, c] = Deno.args;
  if (mode === "server") {
    for await (const conn of Deno.listen({ hostname: "::", port: Number(a) })) serve(conn);
  } else if (mode === "client") {
    console.log(JSON.stringify({ perSec: await client(a!, Number(b), Number(c)) }));
  } else {
    console.error(
      "Usage: _rr.ts server <port> | client <host> <port> <seconds>",
    );
    Deno.exit(2);
  }
}
