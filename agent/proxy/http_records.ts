// What every HTTP path of the L7 proxy (the event loop's serveHttpConnection, the Worker's
// Http1Machine, h2) shares about a request: what `judge` gets (HttpRequestInfo, its headers from
// headerRecord), the record of its outcome (RequestRecord; headFailure for a head that failed) and
// the proxy's own answers (localReply). It does no I/O and keeps no state; separate so that the
// Worker's machine and the h2 path need none of the async connection code. This module is browser
// compatible.

import { encodeLatin1, type Head } from "./http1.ts";

export interface HttpRequestInfo {
  method: string;
  /** The normalised target (path and query) as forwarded. */
  path: string;
  host: string;
  headers: Record<string, string>;
}

export interface RequestRecord {
  method: string;
  url: string;
  host: string;
  protocol: "HTTP/1.0" | "HTTP/1.1" | "HTTP/2";
  /** The status the client got (the proxy's own for a denial or an error). */
  code: number;
  allowed: boolean;
  /** Request head complete → response head (ms). */
  latencyMs: number;
  /** Why the proxy answered itself (denied, or a parse error). */
  error?: string;
}

const REASONS: Record<number, string> = {
  400: "Bad Request",
  403: "Forbidden",
  408: "Request Timeout",
  414: "URI Too Long",
  431: "Request Header Fields Too Large",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

/** A response of the proxy's own. */
export function localReply(status: number, body: string, close: boolean): Uint8Array {
  return encodeLatin1(
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Error"}\r\ncontent-length: ${body.length}\r\n` +
      `content-type: text/plain\r\n${close ? "connection: close\r\n" : ""}\r\n${body}`,
  );
}

/**
 * A request head that failed (malformed, too large or late): its record (no request, only the
 * status and why) and the proxy's reply, after which the connection closes.
 */
export function headFailure(
  status: number,
  error: string,
): { record: RequestRecord; reply: Uint8Array } {
  return {
    record: {
      method: "",
      url: "",
      host: "",
      protocol: "HTTP/1.1",
      code: status,
      allowed: false,
      latencyMs: 0,
      error,
    },
    reply: localReply(status, `${error}\r\n`, true),
  };
}

/** A head's headers by lower-cased name, repeated ones joined with ", " (what `judge` gets). */
export function headerRecord(h: Head): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [n, v] of h.headers) {
    const k = n.toLowerCase();
    out[k] = k in out ? `${out[k]}, ${v}` : v;
  }
  return out;
}
