// One client connection that opened with the HTTP/2 preface (h2c with prior knowledge, as gRPC
// clients speak it): the connection, already read from the listener, is handed to a node:http2
// server of its own as a Duplex; every stream is judged like an HTTP/1 request (method, the
// normalised `:path`, `:authority`, headers), and an allowed one is forwarded as a stream of one
// upstream HTTP/2 session made through `connect` (the proxy-NAT port, like the HTTP/1 leg). A
// denied gRPC call (content-type application/grpc) ends with a trailers-only answer carrying
// `grpc-status: 7` (PERMISSION_DENIED); other denied requests get `403` / `Access denied`.
// Malformed frames are node:http2's to refuse (GOAWAY, then the connection closes). It knows
// nothing of the kernel; it never forwards a stream it did not judge.

import http2 from "node:http2";
import type net from "node:net";
import { Duplex } from "node:stream";
import type { HttpRequestInfo, RequestRecord } from "./http_records.ts";
import { normalisePath, PathError } from "./path.ts";

export { H2_PREFACE, prefaceState } from "./_h2_preface.ts";

export interface H2Options {
  /** The upstream leg: a connected socket from the proxy-NAT port. */
  connect(): Promise<net.Socket>;
  judge(req: HttpRequestInfo): boolean;
  onRequest(rec: RequestRecord & { grpc: boolean }): void;
  idleTimeoutMs?: number;
}

/** A Deno connection as a Duplex, replaying the bytes already read from it. */
function duplexOf(conn: Deno.Conn, first: Uint8Array): Duplex {
  const buf = new Uint8Array(65536);
  let reading = false;
  const pump = async () => {
    reading = true;
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) {
        d.push(null);
        return;
      }
      if (!d.push(buf.slice(0, n))) break;
    }
    reading = false;
  };
  const d = new Duplex({
    read() {
      if (!reading) pump();
    },
    write(chunk: Uint8Array, _enc, cb) {
      (async () => {
        for (let off = 0; off < chunk.length;) off += await conn.write(chunk.subarray(off));
      })().then(() => cb(), (err) => cb(err));
    },
    final(cb) {
      try {
        conn.closeWrite();
      } catch { /* closed */ }
      cb();
    },
    destroy(err, cb) {
      try {
        conn.close();
      } catch { /* closed */ }
      cb(err);
    },
  });
  if (first.length) d.unshift(first);
  return d;
}

const plainHeaders = (
  h: http2.IncomingHttpHeaders | http2.IncomingHttpHeaders & { [k: string]: unknown },
) => {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) {
    if (typeof v === "string") out[k] = v;
    else if (typeof v === "number") out[k] = String(v);
    else if (Array.isArray(v)) out[k] = v.join(", ");
  }
  return out;
};

/** Serves one h2c client connection until it closes; never throws. */
export function serveH2Connection(conn: Deno.Conn, first: Uint8Array, o: H2Options): Promise<void> {
  const server = http2.createServer();
  let upstream: Promise<http2.ClientHttp2Session> | undefined;
  const session = () =>
    upstream ??= o.connect().then((sock) => {
      const s = http2.connect("http://upstream", { createConnection: () => sock });
      s.on("error", () => {});
      s.once("close", () => upstream = undefined);
      return s;
    });
  server.on("stream", (stream, headers) => serveStream(stream, headers, session, o));
  const socket = duplexOf(conn, first);
  return new Promise<void>((resolve) => {
    server.on("session", (s) => {
      s.setTimeout(o.idleTimeoutMs ?? 60_000, () => s.close());
      s.on("error", () => {});
      s.once("close", () => {
        upstream?.then((u) => u.close(), () => {});
        socket.destroy();
        resolve();
      });
    });
    socket.once("close", resolve);
    server.emit("connection", socket);
  });
}

function serveStream(
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  session: () => Promise<http2.ClientHttp2Session>,
  o: H2Options,
): void {
  const started = performance.now();
  const method = String(headers[":method"] ?? "");
  const target = String(headers[":path"] ?? "");
  const host = String(headers[":authority"] ?? headers.host ?? "");
  const grpc = String(headers["content-type"] ?? "").startsWith("application/grpc");
  stream.on("error", () => {});
  const rec = (code: number, allowed: boolean, url: string, error?: string) =>
    o.onRequest({
      method,
      url,
      host,
      protocol: "HTTP/2",
      code,
      allowed,
      latencyMs: performance.now() - started,
      grpc,
      ...(error !== undefined ? { error } : {}),
    });
  let path: string;
  try {
    path = normalisePath(target);
  } catch (err) {
    const msg = err instanceof PathError ? err.message : String(err);
    rec(400, false, target, msg);
    stream.respond({ ":status": 400, "content-type": "text/plain" });
    stream.end(`${msg}\r\n`);
    return;
  }
  const plain = plainHeaders(headers);
  const judged: Record<string, string> = {};
  for (const [k, v] of Object.entries(plain)) if (!k.startsWith(":")) judged[k] = v;
  if (!o.judge({ method, path, host, headers: judged })) {
    rec(403, false, path, "Access denied");
    afterRequest(stream, () => {
      if (grpc) {
        stream.respond({
          ":status": 200,
          "content-type": "application/grpc",
          "grpc-status": "7",
          "grpc-message": "Access denied",
        }, { endStream: true });
      } else {
        stream.respond({ ":status": 403, "content-type": "text/plain" });
        stream.end("Access denied\r\n");
      }
    });
    return;
  }
  forward(
    stream,
    { ...plain, ":path": path },
    session,
    (code, error) => rec(code, true, path, error),
  );
}

/**
 * Runs answer once the request has ended (its body read and dropped), or after 1 s for a client
 * that keeps sending: node:http2 (Deno's) can reset a stream that ends while the client's DATA is
 * still arriving, and the client then sees no answer at all (curl: exit 92, no headers).
 */
function afterRequest(stream: http2.ServerHttp2Stream, answer: () => void): void {
  let done = false;
  const once = () => {
    if (done || stream.destroyed) return;
    done = true;
    clearTimeout(timer);
    answer();
  };
  const timer = setTimeout(once, 1000);
  stream.resume();
  if (stream.readableEnded) once();
  else stream.once("end", once);
  stream.once("close", () => clearTimeout(timer));
}

function forward(
  stream: http2.ServerHttp2Stream,
  headers: Record<string, string>,
  session: () => Promise<http2.ClientHttp2Session>,
  done: (code: number, error?: string) => void,
): void {
  session().then((s) => {
    const up = s.request(headers);
    up.on("error", () => {});
    stream.pipe(up);
    let trailers: Record<string, string> | undefined;
    up.once("response", (rh) => {
      const code = Number(rh[":status"] ?? 0);
      stream.respond(plainHeaders(rh), { waitForTrailers: true });
      stream.on("wantTrailers", () => trailers ? stream.sendTrailers(trailers) : stream.close());
      up.on("data", (d) => stream.write(d));
      up.once("end", () => stream.end());
      done(code);
    });
    up.once("trailers", (t) => trailers = plainHeaders(t));
    up.once("close", () => {
      if (!stream.headersSent) {
        done(502, "Upstream stream closed");
        stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      }
    });
    stream.once("close", () => up.close());
  }, (err) => {
    done(503, `Upstream connect failed: ${(err as Error).message}`);
    if (!stream.headersSent) {
      stream.respond({ ":status": 503, "content-type": "text/plain" });
      stream.end("Upstream connect failed\r\n");
    }
  });
}
