// raiseReceiveBuffer(): a real UDP socket of this process gets the bigger receive buffer, and it
// shows: a burst that the default buffer drops (nobody reads while it arrives) is kept whole.
// Root: SO_RCVBUFFORCE (past net.core.rmem_max) needs CAP_NET_ADMIN.
import assert from "node:assert/strict";
import { raiseReceiveBuffer } from "../../agent/sys/sock_buf.ts";
import { needs } from "../helpers/root.ts";

/** Sends `n` datagrams to `port` while nobody reads, then counts what waits in the buffer. */
async function burst(sock: Deno.DatagramConn, n: number): Promise<number> {
  const to = sock.addr as Deno.NetAddr;
  const tx = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const msg = new Uint8Array(100);
  for (let i = 0; i < n; i++) await tx.send(msg, to);
  tx.close();
  let got = 0;
  const buf = new Uint8Array(2048);
  for (;;) {
    const r = await Promise.race([
      sock.receive(buf),
      new Promise<null>((r) => setTimeout(() => r(null), 200)),
    ]);
    if (r === null) break;
    got++;
  }
  return got;
}

Deno.test({
  name: "raiseReceiveBuffer() makes a UDP socket keep a burst the default buffer drops",
  ...needs({ root: true }),
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const small = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const big = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  try {
    const port = (big.addr as Deno.NetAddr).port;
    const size = raiseReceiveBuffer(port, 4, 4 << 20);
    assert.equal(typeof size, "number", String(size));
    assert.ok((size as number) >= 4 << 20, `SO_RCVBUF ${size}`);
    const n = 3000;
    const kept = await burst(big, n);
    const dropped = n - (await burst(small, n));
    assert.equal(kept, n, "the raised buffer keeps the whole burst");
    assert.ok(dropped > 0, "the default buffer drops part of it (else the test proves nothing)");
    assert.match(String(raiseReceiveBuffer(1, 4, 1 << 20)), /no UDP socket of this process/);
  } finally {
    small.close();
    big.close();
  }
});
