// A GET whose response body is streamed straight from the socket to a writer, for
// `cilia observe -o json`: one read of up to 1 MiB per system call, the chunked framing removed
// in place, no stream objects per chunk. The agent answers HTTP/1.1 on its unix socket (or
// TCP); anything but a 200 with a chunked or sized body is an error for the caller to report
// (it can then fall back to fetch, which gives the agent's JSON error). Only what `observe`
// needs: no redirects, no keep-alive, no compression.

export class RawHttpError extends Error {}

const CRLF2 = new TextEncoder().encode("\r\n\r\n");

function indexOfSeq(b: Uint8Array, seq: Uint8Array, from: number, end: number): number {
  for (
    let i = b.indexOf(seq[0]!, from);
    i >= 0 && i + seq.length <= end;
    i = b.indexOf(seq[0]!, i + 1)
  ) {
    let ok = true;
    for (let j = 1; j < seq.length; j++) if (b[i + j] !== seq[j]) ok = false;
    if (ok) return i;
  }
  return -1;
}

/**
 * GETs `path` from the agent at `addr` and hands each piece of the body to `onBody` (valid only
 * during the call) until the body ends or `signal` aborts. Throws RawHttpError for a status other
 * than 200 or a response it cannot read.
 */
export async function rawGet(
  addr: { path: string } | { hostname: string; port: number },
  path: string,
  onBody: (bytes: Uint8Array) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const conn = "path" in addr
    ? await Deno.connect({ transport: "unix", path: addr.path })
    : await Deno.connect({ hostname: addr.hostname, port: addr.port });
  const abort = () => {
    try {
      conn.close();
    } catch { /* closed */ }
  };
  signal?.addEventListener("abort", abort, { once: true });
  try {
    const host = "path" in addr ? "localhost" : addr.hostname;
    const req = new TextEncoder().encode(
      `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nAccept: application/x-ndjson\r\nConnection: close\r\n\r\n`,
    );
    for (let at = 0; at < req.length;) at += await conn.write(req.subarray(at));
    let buf = new Uint8Array(1 << 20);
    let len = 0, start = 0;
    const fill = async (): Promise<boolean> => {
      if (start > 0 && start === len) start = len = 0;
      if (len === buf.length) {
        if (start > 0) {
          buf.copyWithin(0, start, len);
          len -= start;
          start = 0;
        } else {
          const next = new Uint8Array(buf.length * 2);
          next.set(buf);
          buf = next;
        }
      }
      const n = await conn.read(buf.subarray(len));
      if (n === null) return false;
      len += n;
      return true;
    };
    let headEnd = -1;
    while ((headEnd = indexOfSeq(buf, CRLF2, 0, len)) < 0) {
      if (len > 65_536) throw new RawHttpError("The agent's answer has no end of headers");
      if (!(await fill())) {
        throw new RawHttpError("The agent closed the connection before answering");
      }
    }
    const head = new TextDecoder().decode(buf.subarray(0, headEnd)).split("\r\n");
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head[0] ?? "")?.[1]);
    if (status !== 200) throw new RawHttpError(`The agent answered ${head[0] ?? "nothing"}`);
    const chunked = head.some((h) => /^transfer-encoding:\s*chunked/i.test(h));
    start = headEnd + 4;
    if (!chunked) {
      // a length says where the body ends; without one it ends with the connection
      const lengthHeader = head.find((h) => /^content-length:/i.test(h));
      let left = lengthHeader ? Number(lengthHeader.split(":")[1]) : Infinity;
      if (Number.isNaN(left)) throw new RawHttpError(`Bad header "${lengthHeader}"`);
      while (left > 0) {
        if (len === start && !(await fill())) break;
        const n = Math.min(left, len - start);
        await onBody(buf.subarray(start, start + n));
        start += n;
        left -= n;
      }
      return;
    }
    // chunked: size line, data, CRLF; the data goes out as it arrives
    let remaining = 0; // data bytes left in the current chunk
    for (;;) {
      if (remaining > 0) {
        if (len === start && !(await fill())) throw new RawHttpError("The body ended early");
        const n = Math.min(remaining, len - start);
        await onBody(buf.subarray(start, start + n));
        start += n;
        remaining -= n;
        continue;
      }
      let eol: number;
      while ((eol = buf.subarray(start, len).indexOf(0x0a)) < 0) {
        if (!(await fill())) return;
      }
      const line = new TextDecoder().decode(buf.subarray(start, start + eol)).trim();
      start += eol + 1;
      if (line === "") continue; // the CRLF after a chunk's data
      const size = parseInt(line.split(";")[0]!, 16);
      if (!Number.isFinite(size)) throw new RawHttpError(`Bad chunk size "${line}"`);
      if (size === 0) return;
      remaining = size;
    }
  } catch (err) {
    if (signal?.aborted) return;
    throw err;
  } finally {
    signal?.removeEventListener("abort", abort);
    abort();
  }
}
