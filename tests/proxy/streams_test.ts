// The proxy's upstream leg: a node:net socket (made from a chosen local port) taken over as a Deno
// connection, over loopback. Under the pinned Deno the takeover must happen (else the proxy falls
// back to node's slower stream machinery and this test says so), bytes flow both ways on the
// connection from the node socket's port, and closing the Stream closes the node socket (whose
// "close" releases the proxy's upstream port).
import assert from "node:assert/strict";
import net from "node:net";
import { takeOverSocket } from "../../agent/proxy/streams.ts";

Deno.test("takeOverSocket() turns a node socket into a Deno connection and closes both", async () => {
  const enc = new TextEncoder(), dec = new TextDecoder();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served: Promise<void>[] = [];
  const accepting = (async () => {
    for await (const c of listener) {
      served.push((async () => { // answers "<peer port> <bytes>" to each read
        const buf = new Uint8Array(1024);
        const port = (c.remoteAddr as Deno.NetAddr).port;
        for (;;) {
          const n = await c.read(buf).catch(() => null);
          if (n === null) break;
          await c.write(enc.encode(`${port} ${dec.decode(buf.subarray(0, n))}`)).catch(() => {});
        }
        c.close();
      })());
    }
  })().catch(() => {});
  // Any Deno TCP connection of the process gives the class to wrap in (the proxy: its client's).
  const like = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const sock = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host: "127.0.0.1", port: listener.addr.port });
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
  let nodeClosed = false;
  sock.once("close", () => nodeClosed = true);
  try {
    const localPort = sock.localPort;
    const s = takeOverSocket(sock, like);
    assert.ok(s, "the pinned Deno's TCP handle gives its stream up (else: node stream fallback)");
    await s.write(enc.encode("ping"));
    assert.equal(dec.decode((await s.read())!), `${localPort} ping`);
    await s.write(enc.encode("again"));
    assert.equal(dec.decode((await s.read())!), `${localPort} again`);
    s.close();
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(nodeClosed, "closing the Stream closes the node socket");
    assert.equal(await s.read(), null);
  } finally {
    like.close();
    sock.destroy();
    listener.close();
    await accepting;
    await Promise.all(served);
  }
});
