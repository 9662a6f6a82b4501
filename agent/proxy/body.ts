// Streams one HTTP/1.1 message body from a BufReader to a writer by its framing, a chunk at a
// time with the writer's backpressure, so a large body never sits in memory. Chunked bodies are
// decoded strictly (hex sizes, CRLF after each chunk, trailers read and dropped) and re-encoded
// canonically, so chunk extensions and odd framing never reach the server. This module is browser
// compatible.

import { type BufReader, encodeLatin1, type Framing, HttpError } from "./http1.ts";

export type Write = (b: Uint8Array) => Promise<void>;

const MAX_CHUNK_LINE = 4096;

async function copyExactly(r: BufReader, n: number, write: Write, what: string): Promise<void> {
  let left = n;
  while (left > 0) {
    if (r.buffered === 0 && !(await r.fill())) {
      throw new HttpError(400, `Connection closed inside ${what}`);
    }
    const part = r.take(Math.min(left, r.buffered));
    left -= part.length;
    await write(part);
  }
}

async function copyChunked(r: BufReader, write: Write, what: string): Promise<void> {
  for (;;) {
    const line = await r.line(MAX_CHUNK_LINE, `${what} chunk size`);
    if (line === null) throw new HttpError(400, `Connection closed inside ${what}`);
    const m = /^([0-9A-Fa-f]{1,12})(?:[ \t]*;.*)?$/.exec(line);
    if (!m) throw new HttpError(400, `Invalid chunk size line in ${what}`);
    const size = parseInt(m[1]!, 16);
    if (size === 0) {
      for (;;) { // trailers: read and drop
        const t = await r.line(MAX_CHUNK_LINE, `${what} trailers`);
        if (t === null) throw new HttpError(400, `Connection closed inside ${what}`);
        if (t === "") break;
      }
      await write(encodeLatin1("0\r\n\r\n"));
      return;
    }
    await write(encodeLatin1(`${size.toString(16)}\r\n`));
    await copyExactly(r, size, write, what);
    const end = await r.line(2, `${what} chunk end`);
    if (end !== "") throw new HttpError(400, `Missing CRLF after a chunk in ${what}`);
    await write(encodeLatin1("\r\n"));
  }
}

/** Copies a body; "close" framing copies until the reader ends. */
export async function copyBody(
  r: BufReader,
  framing: Framing,
  write: Write,
  what = "body",
): Promise<void> {
  if (framing.kind === "length") return copyExactly(r, framing.length, write, what);
  if (framing.kind === "chunked") return copyChunked(r, write, what);
  if (framing.kind === "close") {
    for (;;) {
      if (r.buffered > 0) await write(r.take(r.buffered));
      if (!(await r.fill())) return;
    }
  }
}
