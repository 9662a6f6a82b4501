// The h2c side of the proxy without the kernel: preface sniffing, a denied gRPC call answered
// with grpc-status 7 (and never forwarded), an allowed one forwarded with its trailers, and
// malformed frames refused without a single upstream connection.
import assert from "node:assert/strict";
import http2 from "node:http2";
import net from "node:net";
import { H2_PREFACE, prefaceState, serveH2Connection } from "../../agent/proxy/h2.ts";
import type { HttpRequestInfo } from "../../agent/proxy/http_records.ts";

Deno.test("prefaceState() tells the h2c preface from HTTP/1", async (t) => {
  const enc = (s: string) => new TextEncoder().encode(s);
  for (
    const [name, bytes, want] of [
      ["the whole preface", H2_PREFACE, "complete"],
      ["the preface and a frame", new Uint8Array([...H2_PREFACE, 0, 0, 0, 4]), "complete"],
      ["a prefix of it", enc("PRI * HT"), "partial"],
      ["an HTTP/1 request", enc("POST / HTTP/1.1\r\n"), "no"],
      ["PRI as an HTTP/1 method", enc("PRI / HTTP/1.1\r\n"), "no"],
    ] as const
  ) {
    await t.step(name, () => assert.equal(prefaceState(bytes), want));
  }
});

/** A proxy on an ephemeral port in front of an h2c origin; judge allows /pkg.S/Allow only. */
async function setup() {
  const origin = http2.createServer();
  origin.on("stream", (s) => {
    s.on("data", () => {});
    s.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    s.on("wantTrailers", () => s.sendTrailers({ "grpc-status": "0" }));
    s.end(new Uint8Array([0, 0, 0, 0, 0]));
  });
  await new Promise<void>((r) => origin.listen(0, "127.0.0.1", r));
  const originPort = (origin.address() as net.AddressInfo).port;
  const judged: HttpRequestInfo[] = [];
  let connects = 0;
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served: Promise<void>[] = [];
  (async () => {
    for await (const conn of l) {
      const first = new Uint8Array(H2_PREFACE.length);
      let got = 0;
      while (got < first.length) {
        const n = await conn.read(first.subarray(got));
        if (n === null) break;
        got += n;
      }
      served.push(serveH2Connection(conn, first.subarray(0, got), {
        connect: () => {
          connects++;
          return new Promise((resolve, reject) => {
            const s = net.connect({ host: "127.0.0.1", port: originPort });
            s.once("connect", () => resolve(s));
            s.once("error", reject);
          });
        },
        judge: (req) => {
          judged.push(req);
          return req.path === "/pkg.S/Allow";
        },
        onRequest: () => {},
      }));
    }
  })().catch(() => {});
  return {
    port: l.addr.port,
    judged,
    connects: () => connects,
    async close() {
      l.close();
      await Promise.all(served);
      await new Promise((r) => origin.close(r));
    },
  };
}

function grpcCall(port: number, path: string) {
  return new Promise<{ status: number; trailers: Record<string, unknown> }>((resolve, reject) => {
    const c = http2.connect(`http://127.0.0.1:${port}`);
    c.on("error", reject);
    const req = c.request({ ":method": "POST", ":path": path, "content-type": "application/grpc" });
    let status = 0;
    let trailers: Record<string, unknown> = {};
    req.on("response", (h) => {
      status = Number(h[":status"]);
      if (h["grpc-status"] !== undefined) trailers = { ...h }; // trailers-only answer
    });
    req.on("trailers", (h) => trailers = { ...h });
    req.on("data", () => {});
    req.on("end", () => {
      c.close();
      resolve({ status, trailers });
    });
    req.on("error", reject);
    req.end(new Uint8Array([0, 0, 0, 0, 0]));
  });
}

Deno.test({
  name: "serveH2Connection() forwards allowed gRPC calls and answers denied ones with status 7",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const p = await setup();
  try {
    const ok = await grpcCall(p.port, "/pkg.S/Allow");
    assert.equal(ok.status, 200);
    assert.equal(ok.trailers["grpc-status"], "0");
    const denied = await grpcCall(p.port, "/pkg.S/Deny");
    assert.equal(denied.status, 200);
    assert.equal(denied.trailers["grpc-status"], "7");
    assert.deepEqual(p.judged.map((j) => [j.method, j.path]), [
      ["POST", "/pkg.S/Allow"],
      ["POST", "/pkg.S/Deny"],
    ]);
    assert.equal(p.connects(), 1, "one upstream connection, for the allowed call");
  } finally {
    await p.close();
  }
});

Deno.test({
  name: "serveH2Connection() refuses malformed frames and forwards nothing",
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const p = await setup();
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: p.port });
    // The preface, then a HEADERS frame on stream 0 with garbage (a connection error).
    await conn.write(
      new Uint8Array([...H2_PREFACE, 0, 0, 4, 1, 5, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
    );
    const buf = new Uint8Array(4096);
    const deadline = Date.now() + 3000;
    let closed = false;
    while (Date.now() < deadline) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) {
        closed = true;
        break;
      }
    }
    conn.close();
    assert.ok(closed, "the proxy closes the connection");
    assert.equal(p.judged.length, 0);
    assert.equal(p.connects(), 0);
  } finally {
    await p.close();
  }
});
