// The HTTP/1.1 proxy connection over loopback (no kernel): a raw TCP client → serveHttpConnection
// (judge: GET /public* and POST /upload) → a Deno.serve upstream that reports what it got.
// Keep-alive, pipelining, chunked and large streamed bodies, Expect: 100-continue, and each kind
// of bad input answered with its status (and never forwarded).
import assert from "node:assert/strict";
import { serveHttpConnection } from "../../agent/proxy/http_conn.ts";
import type { RequestRecord } from "../../agent/proxy/http_records.ts";
import { denoStream } from "../../agent/proxy/proxy.ts";
import { BAD_HEADS, BAD_TARGETS } from "./_http1_cases.ts";

const enc = new TextEncoder(), dec = new TextDecoder();

async function lab(
  fn: (ctx: {
    send: (
      text: string | Uint8Array,
      opts?: { readMs?: number; until?: RegExp; end?: boolean },
    ) => Promise<string>;
    conn: () => Promise<Deno.TcpConn>;
    upstreamRequests: string[];
    records: RequestRecord[];
  }) => Promise<void>,
  timeouts = { headerTimeoutMs: 300, idleTimeoutMs: 300 },
) {
  const upstreamRequests: string[] = [];
  const up = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const u = new URL(req.url);
    let n = 0;
    if (req.body) { for await (const c of req.body) n += c.length; }
    upstreamRequests.push(`${req.method} ${u.pathname}${u.search}`);
    return new Response(`${req.method} ${u.pathname}${u.search} body=${n}\n`);
  });
  const records: RequestRecord[] = [];
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served: Promise<void>[] = [];
  (async () => {
    for await (const c of listener) {
      served.push(serveHttpConnection(denoStream(c), {
        connect: async () =>
          denoStream(await Deno.connect({ hostname: "127.0.0.1", port: up.addr.port })),
        judge: (r) =>
          (r.method === "GET" && r.path.startsWith("/public")) ||
          (r.method === "POST" && r.path === "/upload"),
        onRequest: (r) => records.push(r),
        ...timeouts,
      }));
    }
  })().catch(() => {});
  const conns: Deno.TcpConn[] = [];
  const conn = async () => {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
    conns.push(c);
    return c;
  };
  /** Sends text on a new connection (then closes its write side if `end`); returns the answer. */
  const send = async (
    text: string | Uint8Array,
    o: { readMs?: number; until?: RegExp; end?: boolean } = {},
  ) => {
    const c = await conn();
    const bytes = typeof text === "string" ? enc.encode(text) : text;
    const writing = (async () => {
      for (let off = 0; off < bytes.length;) off += await c.write(bytes.subarray(off));
      if (o.end) await c.closeWrite();
    })().catch(() => {});
    let out = "";
    const deadline = Date.now() + (o.readMs ?? 2000);
    const buf = new Uint8Array(65536);
    while (Date.now() < deadline && !(o.until && o.until.test(out))) {
      const n = await Promise.race([
        c.read(buf),
        new Promise<"t">((r) => setTimeout(() => r("t"), deadline - Date.now())),
      ]);
      if (n === null || n === "t") break;
      out += dec.decode(buf.subarray(0, n));
    }
    await writing;
    return out;
  };
  try {
    await fn({ send, conn, upstreamRequests, records });
  } finally {
    for (const c of conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    listener.close();
    await Promise.allSettled(served);
    await up.shutdown();
  }
}

const statuses = (text: string) =>
  [...text.matchAll(/^HTTP\/1\.1 (\d{3})/gm)].map((m) => Number(m[1]));

Deno.test({ name: "serveHttpConnection() forwards, denies and stays in step" }, async (t) => {
  // Nothing here waits for a timeout: long ones, so a loaded machine (one stalled read of the
  // 8 MiB body, or of the answer to it) is no 502.
  await lab(async ({ send, upstreamRequests, records }) => {
    await t.step("pipelined requests are answered in order, each judged", async () => {
      const r = await send(
        "GET /public HTTP/1.1\r\nHost: s\r\n\r\nGET /private HTTP/1.1\r\nHost: s\r\n\r\n" +
          "GET /public?x=1 HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n",
      );
      assert.deepEqual(statuses(r), [200, 403, 200], r);
      assert.match(r, /Access denied/);
      assert.deepEqual(upstreamRequests.splice(0), ["GET /public", "GET /public?x=1"]);
      assert.deepEqual(records.map((x) => [x.url, x.code, x.allowed]), [
        ["/public", 200, true],
        ["/private", 403, false],
        ["/public?x=1", 200, true],
      ]);
    });
    await t.step("a chunked body is re-framed and forwarded", async () => {
      const r = await send(
        "POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
          "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
        { until: /body=\d+/ },
      );
      assert.match(r, /POST \/upload body=11/, r);
    });
    await t.step("a large body streams through", async () => {
      const size = 8 << 20;
      const head = enc.encode(
        `POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: ${size}\r\nConnection: close\r\n\r\n`,
      );
      const all = new Uint8Array(head.length + size);
      all.set(head);
      const r = await send(all, { readMs: 10000, until: /body=\d+/ });
      assert.match(r, new RegExp(`body=${size}`), r);
    });
    await t.step("Expect: 100-continue", async () => {
      const r = await send(
        "POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nExpect: 100-continue\r\n" +
          "Connection: close\r\n\r\nabc",
        { until: /body=3/ },
      );
      assert.match(r, /body=3/, r);
      const d = await send(
        "POST /other HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
        { until: /Access denied/ },
      );
      assert.deepEqual(statuses(d), [403], "denied before the body, no 100");
    });
    await t.step("a denied path trick never reaches the server", async () => {
      upstreamRequests.splice(0);
      for (const p of ["/public/../private", "/public/%2e%2e/private", "/public%2F..%2Fprivate"]) {
        const r = await send(`GET ${p} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n`);
        assert.deepEqual(statuses(r), [403], p);
      }
      assert.deepEqual(upstreamRequests, []);
    });
    await t.step("an allowed path is forwarded as judged (normalised), not as sent", async () => {
      upstreamRequests.splice(0);
      const r = await send(
        // Pipelined: the second head is whole in the bytes already read (the raw-forwarding case).
        "GET /public/b HTTP/1.1\r\nHost: s\r\n\r\nGET //public/%7Ea?q=%7E HTTP/1.1\r\nHost: s\r\n" +
          "Connection: close\r\n\r\n",
      );
      assert.deepEqual(statuses(r), [200, 200], r);
      assert.deepEqual(upstreamRequests, ["GET /public/b", "GET /public/~a?q=%7E"]);
    });
  }, { headerTimeoutMs: 10_000, idleTimeoutMs: 10_000 });
});

Deno.test("serveHttpConnection() answers bad input and closes, forwarding nothing", async (t) => {
  await lab(async ({ send, upstreamRequests, conn }) => {
    // The shared bad heads and targets (the write side closed after them: a truncated head ends
    // there), an oversized head and a body that fails mid-stream.
    const cases: [string, string, number][] = [
      ...BAD_HEADS,
      ...BAD_TARGETS,
      [
        "oversized headers",
        `GET /public HTTP/1.1\r\nHost: s\r\nX: ${"a".repeat(20000)}\r\n\r\n`,
        431,
      ],
      [
        "bad chunk",
        "POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
      ],
    ];
    for (const [name, text, status] of cases) {
      await t.step(name, async () => {
        const r = await send(text, { end: true });
        assert.equal(statuses(r)[0], status, r);
      });
    }
    await t.step("slowloris: 408 after the header timeout", async () => {
      const started = Date.now();
      const r = await send("GET /public HTTP/1.1\r\nHo", { readMs: 2000 });
      assert.deepEqual(statuses(r), [408], r);
      assert.ok(Date.now() - started < 1500);
    });
    await t.step("a client that sends nothing is closed without a reply", async () => {
      const c = await conn();
      const n = await c.read(new Uint8Array(10));
      assert.equal(n, null);
    });
    // Only the bad chunk's head got through (its body failed mid-stream and the
    // connection was cut); nothing else was forwarded.
    assert.ok(upstreamRequests.every((r) => r === "POST /upload"), upstreamRequests.join());
  });
});

Deno.test("serveHttpConnection() times out a trickled second head at the keep-alive limit", async () => {
  // The first head may take 1.5 s, the next only 300 ms: the shorter limit after the longer one
  // must hold (one timer per connection is re-armed, not one per read), and bytes trickling in
  // faster than the idle limit do not extend it.
  await lab(async ({ conn }) => {
    const c = await conn();
    await c.write(enc.encode("GET /public HTTP/1.1\r\nHost: x\r\n\r\n"));
    const buf = new Uint8Array(65536);
    let got = "";
    while (!/body=0\n$/.test(got)) {
      const n = await c.read(buf);
      assert.ok(n !== null, `closed before the response: ${got}`);
      got += dec.decode(buf.subarray(0, n));
    }
    const started = Date.now();
    let stop = false;
    const trickle = (async () => {
      for (const ch of "GET /public HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa") {
        if (stop) return;
        await c.write(enc.encode(ch)).catch(() => stop = true);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    got = "";
    for (;;) {
      const n = await c.read(buf);
      if (n === null) break;
      got += dec.decode(buf.subarray(0, n));
    }
    const took = Date.now() - started;
    stop = true;
    await trickle;
    assert.deepEqual(statuses(got), [408], got);
    assert.ok(took >= 250 && took < 1000, `408 after ${took} ms, expected about 300 ms`);
  }, { headerTimeoutMs: 1500, idleTimeoutMs: 300 });
});
