/**
 * A minimal HTTP/1.1 client over a unix socket for cilia-cni: one request per connection
 * (`Connection: close`), a response with `Content-Length`, chunked or to end-of-stream. It exists
 * because the plugin starts once per pod: `fetch` with `Deno.createHttpClient` costs ~5 ms of
 * first-use setup there, a plain socket well under 1 ms (`deno task bench cni`). It knows nothing
 * of the agent's API; callers map its errors.
 */

export interface HttpAnswer {
  status: number;
  /** Header names in lower case. */
  headers: Map<string, string>;
  body: Uint8Array;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function concat(parts: Uint8Array[]): Uint8Array {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return all;
}

/** True when `bytes` hold the head and a `Content-Length` body in full (no need to wait for EOF). */
function complete(bytes: Uint8Array): boolean {
  const end = headEnd(bytes);
  if (end < 0) return false;
  const length = /\r\ncontent-length:\s*(\d+)\r\n/i.exec(dec.decode(bytes.subarray(0, end)))?.[1];
  return length !== undefined && bytes.length - end >= Number(length);
}

function headEnd(bytes: Uint8Array): number {
  for (let i = 3; i < bytes.length; i++) {
    if (bytes[i] === 10 && bytes[i - 1] === 13 && bytes[i - 2] === 10 && bytes[i - 3] === 13) {
      return i + 1;
    }
  }
  return -1;
}

/** Decodes a chunked body; throws a SyntaxError when it is cut or malformed. */
export function dechunk(bytes: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  let at = 0;
  for (;;) {
    let eol = at;
    while (eol + 1 < bytes.length && !(bytes[eol] === 13 && bytes[eol + 1] === 10)) eol++;
    if (eol + 1 >= bytes.length) throw new SyntaxError("Malformed chunked body: cut short");
    const size = parseInt(dec.decode(bytes.subarray(at, eol)).split(";")[0]!.trim(), 16);
    if (!Number.isInteger(size) || size < 0) {
      throw new SyntaxError("Malformed chunked body: bad chunk size");
    }
    if (size === 0) return concat(parts);
    const start = eol + 2;
    if (start + size > bytes.length) throw new SyntaxError("Malformed chunked body: cut short");
    parts.push(bytes.subarray(start, start + size));
    at = start + size + 2;
  }
}

/** Parses a complete response (the connection has closed). */
export function parseAnswer(bytes: Uint8Array): HttpAnswer {
  const end = headEnd(bytes);
  if (end < 0) throw new SyntaxError("Malformed HTTP answer: no end of headers");
  const [statusLine, ...lines] = dec.decode(bytes.subarray(0, end - 4)).split("\r\n");
  const status = /^HTTP\/1\.[01] (\d{3})\b/.exec(statusLine ?? "")?.[1];
  if (!status) throw new SyntaxError(`Malformed HTTP status line "${statusLine?.slice(0, 80)}"`);
  const headers = new Map<string, string>();
  for (const line of lines) {
    const colon = line.indexOf(":");
    if (colon > 0) {
      headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
    }
  }
  let body = bytes.subarray(end);
  if (/\bchunked\b/i.test(headers.get("transfer-encoding") ?? "")) body = dechunk(body);
  else if (headers.has("content-length")) {
    const length = Number(headers.get("content-length"));
    if (!(length <= body.length)) throw new SyntaxError("Malformed HTTP answer: body cut short");
    body = body.subarray(0, length);
  }
  return { status: Number(status), headers, body };
}

/**
 * Sends one request on the unix socket at `path` and reads the whole answer. Rejects with the
 * socket's own error (Deno.errors.NotFound, ConnectionRefused, …), a SyntaxError for a malformed
 * answer, or a DOMException "TimeoutError" after `timeoutMs`.
 */
export async function request(
  path: string,
  req: { method: string; target: string; body?: string; timeoutMs: number },
): Promise<HttpAnswer> {
  const conn = await Deno.connect({ transport: "unix", path });
  let timedOut = false;
  // AbortSignal.timeout, not setTimeout: the plugin's first setTimeout costs it ~5 ms.
  const signal = AbortSignal.timeout(req.timeoutMs);
  const onTimeout = () => {
    timedOut = true;
    conn.close(); // the pending read rejects
  };
  signal.addEventListener("abort", onTimeout, { once: true });
  try {
    const body = req.body === undefined ? new Uint8Array() : enc.encode(req.body);
    const head = `${req.method} ${req.target} HTTP/1.1\r\nHost: localhost\r\n` +
      `Accept: application/json\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
    await writeAll(conn, concat([enc.encode(head), body]));
    let answer: Uint8Array = new Uint8Array();
    const buf = new Uint8Array(16384);
    while (!complete(answer)) {
      const n = await conn.read(buf).catch((err) => {
        if (timedOut) return null;
        throw err;
      });
      if (n === null) break;
      answer = concat([answer, buf.subarray(0, n)]);
    }
    if (timedOut) throw new DOMException(`No answer within ${req.timeoutMs} ms`, "TimeoutError");
    return parseAnswer(answer);
  } finally {
    signal.removeEventListener("abort", onTimeout);
    if (!timedOut) conn.close();
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}
