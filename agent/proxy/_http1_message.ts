// What an HTTP/1.1 message head means to the L7 proxy (RFC 9112): the parsed head, the error that
// carries the status the proxy answers with, header lookups, keep-alive, body framing (requests
// strictly: smuggling-shaped heads are errors; responses for framing only) and serialising a head
// again. It reads no bytes (http1.ts and http1_sync.ts do). This module is browser compatible.

export class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export interface Head {
  /** Request: method; response: "". */
  method: string;
  /** Request: the target as sent; response: "". */
  target: string;
  /** 0 for a request. */
  status: number;
  reason: string;
  version: "1.0" | "1.1";
  /** In order, names as sent. */
  headers: [string, string][];
  /** The bytes the head took on the wire. */
  size: number;
}

export type Framing =
  | { kind: "none" }
  | { kind: "length"; length: number }
  | { kind: "chunked" }
  | {
    kind: "close";
  };

export const badGateway = (e: unknown) =>
  e instanceof HttpError ? new HttpError(502, e.message) : e;

export const encodeLatin1 = (s: string): Uint8Array => {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
};

export function all(h: Head, name: string): string[] {
  const out: string[] = [];
  for (const [n, v] of h.headers) {
    // The length first: most names differ in it, and lower-casing each one allocates.
    if (n.length === name.length && n.toLowerCase() === name) out.push(v);
  }
  return out;
}

export function first(h: Head, name: string): string | undefined {
  return all(h, name)[0];
}

/** Whether the connection may carry another message after this one. */
export function keepAlive(h: Head): boolean {
  const tokens = all(h, "connection").flatMap((v) => v.toLowerCase().split(/\s*,\s*/));
  if (tokens.includes("close")) return false;
  return h.version === "1.1" || tokens.includes("keep-alive");
}

/** Body framing of a request (RFC 9112 §6.3); smuggling-shaped heads are errors. */
export function requestFraming(h: Head): Framing {
  const te = all(h, "transfer-encoding");
  const cl = all(h, "content-length");
  if (te.length > 0 && cl.length > 0) {
    throw new HttpError(400, "Both Transfer-Encoding and Content-Length");
  }
  if (te.length > 0) {
    if (h.version === "1.0") throw new HttpError(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (te.length !== 1 || te[0]!.toLowerCase() !== "chunked") {
      throw new HttpError(501, `Transfer-Encoding "${te.join(", ")}" is not supported`);
    }
    return { kind: "chunked" };
  }
  if (cl.length > 1) throw new HttpError(400, "More than one Content-Length");
  if (cl.length === 1) {
    if (!/^\d{1,15}$/.test(cl[0]!)) throw new HttpError(400, "Invalid Content-Length");
    const length = Number(cl[0]);
    return length === 0 ? { kind: "none" } : { kind: "length", length };
  }
  return { kind: "none" };
}

/** Body framing of a response to a request with this method. */
export function responseFraming(h: Head, method: string): Framing {
  if (method === "HEAD" || h.status < 200 || h.status === 204 || h.status === 304) {
    return { kind: "none" };
  }
  const te = all(h, "transfer-encoding");
  if (te.length > 0) {
    const last = te.join(",").split(",").pop()!.trim().toLowerCase();
    return last === "chunked" ? { kind: "chunked" } : { kind: "close" };
  }
  const cl = all(h, "content-length");
  if (cl.length > 0) {
    if (cl.some((v) => v !== cl[0]) || !/^\d{1,15}$/.test(cl[0]!)) {
      throw new HttpError(502, "Invalid Content-Length from the server");
    }
    return { kind: "length", length: Number(cl[0]) };
  }
  return { kind: "close" };
}

/** Serialises a head (the request line with `target`, or the status line). */
export function serializeHead(h: Head, target?: string): Uint8Array {
  const start = h.status === 0
    ? `${h.method} ${target ?? h.target} HTTP/${h.version}`
    : `HTTP/${h.version} ${h.status} ${h.reason}`;
  const lines = [start, ...h.headers.map(([n, v]) => `${n}: ${v}`), "", ""];
  return encodeLatin1(lines.join("\r\n"));
}
