// The HTTP/2 connection preface an h2c prior-knowledge client opens with, and how to tell it
// from HTTP/1 in a connection's first bytes (the L7 proxy's event loop and its HTTP Worker both
// ask). This module is browser compatible.

/** The first 24 bytes an h2c prior-knowledge client sends. */
export const H2_PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** Whether bytes are (a prefix of) the HTTP/2 preface; `complete` when all of it is there. */
export function prefaceState(b: Uint8Array): "no" | "partial" | "complete" {
  const n = Math.min(b.length, H2_PREFACE.length);
  for (let i = 0; i < n; i++) if (b[i] !== H2_PREFACE[i]) return "no";
  return n === H2_PREFACE.length ? "complete" : "partial";
}
